// hello: prints a greeting and powers off with PSCI SYSTEM_OFF.
main:
    mov     x19, x30
    adr     x0, msg_hello
    bl      rt_puts
    bl      rt_vcpu_count
    bl      rt_put_dec
    adr     x0, msg_vcpus
    bl      rt_puts
    mov     x30, x19
    ret

secondary_main:
    ret

msg_hello: .asciz "Hello from microvm-harness! vCPUs: "
msg_vcpus: .asciz "\n"
.p2align 2
