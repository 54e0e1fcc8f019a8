/* cbench - a CoreMark-style mix, written for this project: linked-list work, a matrix
 * multiply, a text-scanning state machine and a CRC-16 over all results, repeated
 * `iterations` times. Prints "cbench: <iterations> iterations, crc <4 hex digits>\n" on the
 * PL011 and returns (start.S powers off). Parameter p0: iterations (default 2000 when booted
 * without a parameter block, e.g. by QEMU). Freestanding: no libc. */
#include <stdint.h>

#define UART0_DR ((volatile uint32_t *)0x09000000UL) /* PL011 data register (vmm/layout.py) */
#define UART0_FR ((volatile uint32_t *)0x09000018UL) /* PL011 flag register; bit 5 TXFF */
/* PARAMS_MAGIC comes from the build (-D, guests.PARAMS_MAGIC) */
#ifndef DEFAULT_ITERATIONS
#define DEFAULT_ITERATIONS 2000 /* a build may set it (-D): QEMU passes no parameter block */
#endif
#define LIST_NODES 128
#define MATRIX_N 12

static void putc_(char c) {
    while (*UART0_FR & (1u << 5)) {
    }
    *UART0_DR = (uint32_t)(unsigned char)c;
}

static void puts_(const char *s) {
    while (*s) putc_(*s++);
}

static void put_dec(uint64_t v) {
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts_(&buf[i]);
}

static void put_hex4(uint16_t v) {
    for (int shift = 12; shift >= 0; shift -= 4) putc_("0123456789abcdef"[(v >> shift) & 0xf]);
}

/* CRC-16/CCITT-FALSE, bitwise (CoreMark uses a CRC-16 to fold its results). */
static uint16_t crc16(uint16_t crc, uint32_t value) {
    for (int byte = 0; byte < 4; byte++) {
        crc ^= (uint16_t)(((value >> (8 * byte)) & 0xff) << 8);
        for (int bit = 0; bit < 8; bit++) crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

static uint32_t lcg(uint32_t *state) {
    *state = *state * 1664525u + 1013904223u; /* Numerical Recipes' LCG */
    return *state >> 8;
}

/* --- linked list: build, reverse, find, insertion-sort by value -------------------------- */
struct node {
    struct node *next;
    int32_t value;
    uint32_t index;
};

static struct node nodes[LIST_NODES];

static uint32_t list_work(uint32_t seed) {
    struct node *head = 0;
    for (uint32_t i = 0; i < LIST_NODES; i++) {
        nodes[i].value = (int32_t)(lcg(&seed) & 0xffff) - 0x8000;
        nodes[i].index = i;
        nodes[i].next = head;
        head = &nodes[i];
    }
    struct node *rev = 0;
    while (head) {
        struct node *next = head->next;
        head->next = rev;
        rev = head;
        head = next;
    }
    uint32_t found = 0;
    for (uint32_t probe = 0; probe < 16; probe++) {
        int32_t want = nodes[(probe * 37) % LIST_NODES].value;
        for (struct node *n = rev; n; n = n->next)
            if (n->value == want) {
                found += n->index;
                break;
            }
    }
    struct node *sorted = 0;
    while (rev) {
        struct node *n = rev;
        rev = rev->next;
        struct node **at = &sorted;
        while (*at && (*at)->value < n->value) at = &(*at)->next;
        n->next = *at;
        *at = n;
    }
    uint32_t acc = found;
    for (struct node *n = sorted; n; n = n->next) acc = acc * 31u + (uint32_t)n->value;
    return acc;
}

/* --- matrix: C = A * B + constant, then a column-sum signature ----------------------------- */
static int32_t ma[MATRIX_N][MATRIX_N], mb[MATRIX_N][MATRIX_N], mc[MATRIX_N][MATRIX_N];

static uint32_t matrix_work(uint32_t seed) {
    for (int i = 0; i < MATRIX_N; i++)
        for (int j = 0; j < MATRIX_N; j++) {
            ma[i][j] = (int32_t)(lcg(&seed) & 0xff) - 128;
            mb[i][j] = (int32_t)(lcg(&seed) & 0xff) - 128;
        }
    for (int i = 0; i < MATRIX_N; i++)
        for (int j = 0; j < MATRIX_N; j++) {
            int32_t sum = 0;
            for (int k = 0; k < MATRIX_N; k++) sum += ma[i][k] * mb[k][j];
            mc[i][j] = sum + 7;
        }
    uint32_t sig = 0;
    for (int j = 0; j < MATRIX_N; j++) {
        int32_t col = 0;
        for (int i = 0; i < MATRIX_N; i++) col += mc[i][j];
        sig = sig * 131u ^ (uint32_t)col;
    }
    return sig;
}

/* --- state machine: classify tokens of a generated text (numbers, hex, words, junk) ------- */
enum state { START, INT, HEX0, HEX, WORD, JUNK };

static char text[256];

static uint32_t state_work(uint32_t seed) {
    static const char alphabet[] = "0123456789abcdefx ,.-+Zz";
    for (int i = 0; i < (int)sizeof(text) - 1; i++) text[i] = alphabet[lcg(&seed) % (sizeof(alphabet) - 1)];
    text[sizeof(text) - 1] = 0;
    uint32_t counts[6] = {0};
    enum state s = START;
    for (const char *p = text;; p++) {
        char c = *p;
        int space = c == ' ' || c == ',' || c == 0;
        if (space) {
            counts[s]++;
            s = START;
            if (!c) break;
            continue;
        }
        int digit = c >= '0' && c <= '9', hexl = c >= 'a' && c <= 'f';
        switch (s) {
        case START: s = c == '0' ? HEX0 : digit ? INT : (c >= 'a' && c <= 'z') || c == 'Z' ? WORD : JUNK; break;
        case INT: s = digit ? INT : JUNK; break;
        case HEX0: s = c == 'x' ? HEX : digit ? INT : JUNK; break;
        case HEX: s = digit || hexl ? HEX : JUNK; break;
        case WORD: s = (c >= 'a' && c <= 'z') || c == 'Z' ? WORD : JUNK; break;
        case JUNK: break;
        }
    }
    uint32_t sig = 0;
    for (int i = 0; i < 6; i++) sig = sig * 257u + counts[i];
    return sig;
}

void cmain(const uint64_t *params) {
    uint64_t iterations = DEFAULT_ITERATIONS;
    if (params && params[0] == PARAMS_MAGIC && params[4] >= 1) iterations = params[5];
    uint16_t crc = 0xffff;
    for (uint64_t it = 0; it < iterations; it++) {
        uint32_t seed = (uint32_t)it * 2654435761u + 1u;
        crc = crc16(crc, list_work(seed));
        crc = crc16(crc, matrix_work(seed ^ 0x5a5a5a5au));
        crc = crc16(crc, state_work(seed + 99u));
    }
    puts_("cbench: ");
    put_dec(iterations);
    puts_(" iterations, crc ");
    put_hex4(crc);
    putc_('\n');
}
