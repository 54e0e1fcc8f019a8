// mmds: a metadata-service client. Talks HTTP/1.1 to the MMDS device (MMDS_BASE 0x09010000,
// register table in vmm/devices/mmds/device.py) by DMA, polling STATUS after each DOORBELL (the
// device answers synchronously inside the doorbell store; no interrupt controller is used). The
// IRQ is acknowledged after every request. Runs on the primary vCPU only.
// Parameters: p0 ttl (token lifetime in seconds, sent as given), p1 resp_cap (response buffer
// capacity in bytes, at most 65536; larger values are clamped).
// Buffers, at a fixed RAM offset (RAM_BASE + 2 MiB, far from the image and the stacks):
//   0x80200000  request buffer, 4 KiB (REQ_MAX)
//   0x80201000  session token, 64 bytes
//   0x80202000  response buffer, 64 KiB (RESP_CAP = resp_cap)
// Every request starts "<METHOD> <path> HTTP/1.1\r\nHost: 169.254.169.254\r\n".
// Sequence and output:
//   1. PUT /latest/api/token with "X-metadata-token-ttl-seconds: <ttl>":
//        "mmds: token <HTTP status> len <body length>\n"
//      On 200 the body is kept as the token (if at most 64 bytes); otherwise the body follows
//      on its own line and the later requests carry no token header.
//   2. GET /latest/meta-data/ (IMDS text), GET /latest/meta-data/instance-id (text),
//      GET /latest/meta-data with "Accept: application/json", each with
//      "X-metadata-token: <token>"; then GET /latest/meta-data/instance-id with no token and
//      with a bogus token (43 'A's). Each prints
//        "mmds: GET <path> <text|json>[ no-token| bad-token] -> <HTTP status>\n<body>\n"
//      with the response body verbatim (the bytes after the first CRLF CRLF).
//   3. "mmds: done\n", power off.
// If STATUS is not 1 (done) after a doorbell, "mmds: device status <n>\n" is printed first and
// the body is taken as empty. If MAGIC is wrong: "mmds: no MMDS device\n", power off.
// Registers held across main: x19 MMDS_BASE, x20 buffer area, x21 request write cursor,
// x22 token length (0 = none), x23 response capacity.

main:
    stp     x29, x30, [sp, #-80]!
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x25, x26, [sp, #64]
    movz    x19, #0x0901, lsl #16  // MMDS_BASE
    ldr     w0, [x19]              // MAGIC
    movz    w9, #0x4D4D
    movk    w9, #0x5344, lsl #16   // "MMDS"
    cmp     w0, w9
    b.ne    mm_no_device
    movz    x20, #0x8020, lsl #16  // buffer area = RAM_BASE + 2 MiB
    mov     x0, #1
    bl      rt_param               // resp_cap
    movz    x9, #1, lsl #16        // 65536
    cmp     x0, x9
    csel    x23, x0, x9, ls
    mov     x22, #0

    // ---- 1. session token
    adr     x0, mm_s_put
    adr     x1, mm_s_token_path
    bl      mm_req_begin
    adr     x0, mm_s_ttl_hdr
    bl      mm_req_str
    mov     x0, #0
    bl      rt_param               // ttl
    bl      mm_req_dec
    adr     x0, mm_s_crlf
    bl      mm_req_str
    bl      mm_send                // x0 HTTP status, x1 body, x2 body length
    mov     x24, x0
    mov     x25, x1
    mov     x26, x2
    adr     x0, mm_s_token_line
    bl      rt_puts
    mov     x0, x24
    bl      rt_put_dec
    adr     x0, mm_s_len
    bl      rt_puts
    mov     x0, x26
    bl      rt_put_dec
    bl      rt_newline
    cmp     x24, #200
    b.ne    mm_token_failed
    cmp     x26, #64
    b.hi    mm_token_failed
    add     x9, x20, #0x1000       // token area
    mov     x10, #0
mm_token_copy:
    cmp     x10, x26
    b.hs    mm_token_copied
    ldrb    w11, [x25, x10]
    strb    w11, [x9, x10]
    add     x10, x10, #1
    b       mm_token_copy
mm_token_copied:
    mov     x22, x26
    b       mm_fetch
mm_token_failed:
    mov     x0, x25
    mov     x1, x26
    bl      mm_put_bytes
    bl      rt_newline

    // ---- 2. metadata (flags: bit 0 JSON, bit 1 no token, bit 2 bogus token)
mm_fetch:
    adr     x0, mm_s_path_md_slash
    mov     x1, #0
    bl      mm_get
    adr     x0, mm_s_path_iid
    mov     x1, #0
    bl      mm_get
    adr     x0, mm_s_path_md
    mov     x1, #1
    bl      mm_get
    adr     x0, mm_s_path_iid
    mov     x1, #2
    bl      mm_get
    adr     x0, mm_s_path_iid
    mov     x1, #4
    bl      mm_get
    adr     x0, mm_s_done
    bl      rt_puts
mm_return:
    ldp     x19, x20, [sp, #16]
    ldp     x21, x22, [sp, #32]
    ldp     x23, x24, [sp, #48]
    ldp     x25, x26, [sp, #64]
    ldp     x29, x30, [sp], #80
    ret                            // -> rt_poweroff

mm_no_device:
    adr     x0, mm_s_no_device
    bl      rt_puts
    b       mm_return

// mm_get(x0 = path, x1 = flags): one GET, printed as described at the top.
mm_get:
    stp     x29, x30, [sp, #-64]!
    stp     x24, x25, [sp, #16]
    stp     x26, x27, [sp, #32]
    str     x28, [sp, #48]
    mov     x24, x0
    mov     x25, x1
    mov     x1, x0
    adr     x0, mm_s_get
    bl      mm_req_begin
    tbz     x25, #0, mm_get_accept_done
    adr     x0, mm_s_accept_json
    bl      mm_req_str
mm_get_accept_done:
    tbnz    x25, #1, mm_get_send
    tbnz    x25, #2, mm_get_bogus
    cbz     x22, mm_get_send       // no token was issued
    adr     x0, mm_s_token_hdr
    bl      mm_req_str
    add     x0, x20, #0x1000
    mov     x1, x22
    bl      mm_req_bytes
    b       mm_get_token_end
mm_get_bogus:
    adr     x0, mm_s_token_hdr
    bl      mm_req_str
    adr     x0, mm_s_bogus_token
    bl      mm_req_str
mm_get_token_end:
    adr     x0, mm_s_crlf
    bl      mm_req_str
mm_get_send:
    bl      mm_send
    mov     x26, x0                // HTTP status
    mov     x27, x1                // body
    mov     x28, x2                // body length
    adr     x0, mm_s_get_line
    bl      rt_puts
    mov     x0, x24
    bl      rt_puts
    adr     x0, mm_s_text
    tbz     x25, #0, mm_get_fmt
    adr     x0, mm_s_json
mm_get_fmt:
    bl      rt_puts
    tbz     x25, #1, mm_get_not_none
    adr     x0, mm_s_no_token
    bl      rt_puts
mm_get_not_none:
    tbz     x25, #2, mm_get_not_bogus
    adr     x0, mm_s_bad_token
    bl      rt_puts
mm_get_not_bogus:
    adr     x0, mm_s_arrow
    bl      rt_puts
    mov     x0, x26
    bl      rt_put_dec
    bl      rt_newline
    mov     x0, x27
    mov     x1, x28
    bl      mm_put_bytes
    bl      rt_newline
    ldr     x28, [sp, #48]
    ldp     x26, x27, [sp, #32]
    ldp     x24, x25, [sp, #16]
    ldp     x29, x30, [sp], #64
    ret

// mm_req_begin(x0 = method with trailing space, x1 = path): restart the request buffer with
// the request line and the Host header.
mm_req_begin:
    stp     x29, x30, [sp, #-32]!
    str     x24, [sp, #16]
    mov     x24, x1
    mov     x21, x20
    bl      mm_req_str
    mov     x0, x24
    bl      mm_req_str
    adr     x0, mm_s_http_host
    bl      mm_req_str
    ldr     x24, [sp, #16]
    ldp     x29, x30, [sp], #32
    ret

// mm_req_str(x0 = NUL-terminated string): append to the request. Leaf; x0, x9.
mm_req_str:
    ldrb    w9, [x0], #1
    cbz     w9, mm_req_str_done
    strb    w9, [x21], #1
    b       mm_req_str
mm_req_str_done:
    ret

// mm_req_bytes(x0 = bytes, x1 = length): append. Leaf; x0, x1, x9.
mm_req_bytes:
    cbz     x1, mm_req_bytes_done
    ldrb    w9, [x0], #1
    strb    w9, [x21], #1
    sub     x1, x1, #1
    b       mm_req_bytes
mm_req_bytes_done:
    ret

// mm_req_dec(x0): append x0 in unsigned decimal. Leaf; x0, x10-x13.
mm_req_dec:
    sub     sp, sp, #32
    add     x10, sp, #32
    mov     x11, #10
mm_req_dec_loop:
    udiv    x12, x0, x11
    msub    x13, x12, x11, x0
    add     x13, x13, #'0'
    strb    w13, [x10, #-1]!
    mov     x0, x12
    cbnz    x0, mm_req_dec_loop
    add     x12, sp, #32
mm_req_dec_copy:
    ldrb    w13, [x10], #1
    strb    w13, [x21], #1
    cmp     x10, x12
    b.lo    mm_req_dec_copy
    add     sp, sp, #32
    ret

// mm_send: end the head (blank line), program the device, ring the doorbell, poll STATUS,
// acknowledge the IRQ. Returns x0 = HTTP_STATUS, x1 = body address, x2 = body length (0 unless
// STATUS is 1 and the response has a CRLF CRLF).
mm_send:
    stp     x29, x30, [sp, #-32]!
    stp     x24, x25, [sp, #16]
    adr     x0, mm_s_crlf
    bl      mm_req_str
    str     x20, [x19, #0x10]      // REQ_ADDR (64-bit access)
    sub     x9, x21, x20
    str     w9, [x19, #0x18]       // REQ_LEN
    add     x9, x20, #0x2000
    str     x9, [x19, #0x20]       // RESP_ADDR (64-bit access)
    str     w23, [x19, #0x28]      // RESP_CAP
    str     wzr, [x19, #0x30]      // DOORBELL
    ldr     w24, [x19, #0x34]      // STATUS
    ldr     w25, [x19, #0x38]      // HTTP_STATUS
    mov     w9, #1
    str     w9, [x19, #0x40]       // IRQ_ACK
    cmp     w24, #1
    b.eq    mm_send_ok
    adr     x0, mm_s_dev_status
    bl      rt_puts
    mov     x0, x24
    bl      rt_put_dec
    bl      rt_newline
    b       mm_send_nobody
mm_send_ok:
    ldr     w10, [x19, #0x2C]      // RESP_LEN
    add     x1, x20, #0x2000
    mov     x11, #0                // i: candidate start of CRLF CRLF
mm_send_scan:
    add     x12, x11, #4
    cmp     x12, x10
    b.hi    mm_send_nobody
    add     x14, x1, x11
    ldrb    w13, [x14]
    cmp     w13, #13
    b.ne    mm_send_next
    ldrb    w13, [x14, #1]
    cmp     w13, #10
    b.ne    mm_send_next
    ldrb    w13, [x14, #2]
    cmp     w13, #13
    b.ne    mm_send_next
    ldrb    w13, [x14, #3]
    cmp     w13, #10
    b.eq    mm_send_found
mm_send_next:
    add     x11, x11, #1
    b       mm_send_scan
mm_send_found:
    add     x1, x1, x12            // body follows the blank line
    sub     x2, x10, x12
    b       mm_send_ret
mm_send_nobody:
    add     x1, x20, #0x2000
    mov     x2, #0
mm_send_ret:
    mov     x0, x25
    ldp     x24, x25, [sp, #16]
    ldp     x29, x30, [sp], #32
    ret

// mm_put_bytes(x0 = bytes, x1 = length): write them to the console (NULs included).
mm_put_bytes:
    stp     x29, x30, [sp, #-32]!
    stp     x24, x25, [sp, #16]
    mov     x24, x0
    add     x25, x0, x1
mm_put_bytes_loop:
    cmp     x24, x25
    b.hs    mm_put_bytes_done
    ldrb    w0, [x24], #1
    bl      rt_putc
    b       mm_put_bytes_loop
mm_put_bytes_done:
    ldp     x24, x25, [sp, #16]
    ldp     x29, x30, [sp], #32
    ret

secondary_main:
    ret

mm_s_put:            .asciz "PUT "
mm_s_get:            .asciz "GET "
mm_s_token_path:     .asciz "/latest/api/token"
mm_s_http_host:      .asciz " HTTP/1.1\r\nHost: 169.254.169.254\r\n"
mm_s_ttl_hdr:        .asciz "X-metadata-token-ttl-seconds: "
mm_s_token_hdr:      .asciz "X-metadata-token: "
mm_s_accept_json:    .asciz "Accept: application/json\r\n"
mm_s_crlf:           .asciz "\r\n"
mm_s_bogus_token:    .asciz "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
mm_s_path_md_slash:  .asciz "/latest/meta-data/"
mm_s_path_md:        .asciz "/latest/meta-data"
mm_s_path_iid:       .asciz "/latest/meta-data/instance-id"
mm_s_token_line:     .asciz "mmds: token "
mm_s_len:            .asciz " len "
mm_s_get_line:       .asciz "mmds: GET "
mm_s_text:           .asciz " text"
mm_s_json:           .asciz " json"
mm_s_no_token:       .asciz " no-token"
mm_s_bad_token:      .asciz " bad-token"
mm_s_arrow:          .asciz " -> "
mm_s_dev_status:     .asciz "mmds: device status "
mm_s_no_device:      .asciz "mmds: no MMDS device\n"
mm_s_done:           .asciz "mmds: done\n"
.p2align 2
