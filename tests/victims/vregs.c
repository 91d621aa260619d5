/*
 * Vector-register victim: holds known values in every SSE/AVX/AVX-512 register (and the
 * AVX-512 mask registers) on x86_64, in every NEON register v0..v31 and in FPCR (a rounding
 * mode that is not the default) on aarch64, while it waits, and checks them on request. A restore that puts back
 * only part of the XSAVE state (rt_sigreturn falls back to x87/SSE when the signal frame does
 * not suit the kernel) leaves the registers in their initial state, and this victim says so.
 *
 * The registers are loaded and held by hold_registers (assembly below): it loads them from a
 * pattern, writes the log line for this round (so a test that saw the line knows the registers
 * are live), then waits in raw syscalls (which preserve every vector register) until
 * DIR/verify-request exists, and stores them. Nothing in between is compiled C code.
 *
 * A second thread holds a pattern of its own the same way (without logging), and the leader
 * reports its result with its own: a restore gives a thread other than the leader its registers
 * by ptrace at a breakpoint, not through rt_sigreturn, and this checks that path too.
 *
 * Usage: vregs CTL_DIR LOG_FILE. Writes DIR/info: "mode sse|avx|avx512|neon".
 */
#include "victim.h"

#include <pthread.h>

#if defined(__x86_64__)
#include <cpuid.h>

enum { MODE_SSE, MODE_AVX, MODE_AVX512 };
static const char *const mode_names[] = {"sse", "avx", "avx512"};

/* 32 zmm registers of 64 bytes, then k1..k7 as 8-byte words (k0 cannot be loaded). */
#define ZMM_BYTES (32 * 64)
#define STATE_BYTES (ZMM_BYTES + 7 * 8)

int hold_mode;
void hold_registers(const uint64_t *in, uint64_t *out, const char *request, int log_fd,
                    const char *line, long line_len);

__asm__(".text\n"
        ".globl hold_registers\n"
        ".type hold_registers,@function\n"
        "hold_registers:\n"
        "  push %rbx\n  push %rbp\n  push %r12\n  push %r13\n  push %r14\n  push %r15\n"
        "  sub $24, %rsp\n"
        "  mov %rdi, %r12\n  mov %rsi, %r13\n  mov %rdx, %r14\n"
        "  mov %ecx, %r15d\n  mov %r8, %rbx\n  mov %r9, %rbp\n"
        "  cmpl $2, hold_mode(%rip)\n  je 3f\n"
        "  cmpl $1, hold_mode(%rip)\n  je 2f\n"
        /* SSE: xmm0..xmm15 */
        "  movdqu 0(%r12), %xmm0\n  movdqu 16(%r12), %xmm1\n  movdqu 32(%r12), %xmm2\n"
        "  movdqu 48(%r12), %xmm3\n  movdqu 64(%r12), %xmm4\n  movdqu 80(%r12), %xmm5\n"
        "  movdqu 96(%r12), %xmm6\n  movdqu 112(%r12), %xmm7\n  movdqu 128(%r12), %xmm8\n"
        "  movdqu 144(%r12), %xmm9\n  movdqu 160(%r12), %xmm10\n  movdqu 176(%r12), %xmm11\n"
        "  movdqu 192(%r12), %xmm12\n  movdqu 208(%r12), %xmm13\n  movdqu 224(%r12), %xmm14\n"
        "  movdqu 240(%r12), %xmm15\n"
        "  jmp 4f\n"
        /* AVX: ymm0..ymm15 */
        "2:\n"
        "  vmovdqu 0(%r12), %ymm0\n  vmovdqu 32(%r12), %ymm1\n  vmovdqu 64(%r12), %ymm2\n"
        "  vmovdqu 96(%r12), %ymm3\n  vmovdqu 128(%r12), %ymm4\n  vmovdqu 160(%r12), %ymm5\n"
        "  vmovdqu 192(%r12), %ymm6\n  vmovdqu 224(%r12), %ymm7\n  vmovdqu 256(%r12), %ymm8\n"
        "  vmovdqu 288(%r12), %ymm9\n  vmovdqu 320(%r12), %ymm10\n  vmovdqu 352(%r12), %ymm11\n"
        "  vmovdqu 384(%r12), %ymm12\n  vmovdqu 416(%r12), %ymm13\n  vmovdqu 448(%r12), %ymm14\n"
        "  vmovdqu 480(%r12), %ymm15\n"
        "  jmp 4f\n"
        /* AVX-512: zmm0..zmm31, k1..k7 */
        "3:\n"
        "  vmovdqu64 0(%r12), %zmm0\n  vmovdqu64 64(%r12), %zmm1\n  vmovdqu64 128(%r12), %zmm2\n"
        "  vmovdqu64 192(%r12), %zmm3\n  vmovdqu64 256(%r12), %zmm4\n  vmovdqu64 320(%r12), %zmm5\n"
        "  vmovdqu64 384(%r12), %zmm6\n  vmovdqu64 448(%r12), %zmm7\n  vmovdqu64 512(%r12), %zmm8\n"
        "  vmovdqu64 576(%r12), %zmm9\n  vmovdqu64 640(%r12), %zmm10\n  vmovdqu64 704(%r12), %zmm11\n"
        "  vmovdqu64 768(%r12), %zmm12\n  vmovdqu64 832(%r12), %zmm13\n  vmovdqu64 896(%r12), %zmm14\n"
        "  vmovdqu64 960(%r12), %zmm15\n  vmovdqu64 1024(%r12), %zmm16\n  vmovdqu64 1088(%r12), %zmm17\n"
        "  vmovdqu64 1152(%r12), %zmm18\n  vmovdqu64 1216(%r12), %zmm19\n  vmovdqu64 1280(%r12), %zmm20\n"
        "  vmovdqu64 1344(%r12), %zmm21\n  vmovdqu64 1408(%r12), %zmm22\n  vmovdqu64 1472(%r12), %zmm23\n"
        "  vmovdqu64 1536(%r12), %zmm24\n  vmovdqu64 1600(%r12), %zmm25\n  vmovdqu64 1664(%r12), %zmm26\n"
        "  vmovdqu64 1728(%r12), %zmm27\n  vmovdqu64 1792(%r12), %zmm28\n  vmovdqu64 1856(%r12), %zmm29\n"
        "  vmovdqu64 1920(%r12), %zmm30\n  vmovdqu64 1984(%r12), %zmm31\n"
        "  kmovw 2048(%r12), %k1\n  kmovw 2056(%r12), %k2\n  kmovw 2064(%r12), %k3\n"
        "  kmovw 2072(%r12), %k4\n  kmovw 2080(%r12), %k5\n  kmovw 2088(%r12), %k6\n"
        "  kmovw 2096(%r12), %k7\n"
        /* The registers are live: say so in the log, then wait for a verify request. */
        "4:\n"
        "  mov $1, %eax\n  mov %r15d, %edi\n  mov %rbx, %rsi\n  mov %rbp, %rdx\n  syscall\n"
        "5:\n"
        "  mov $21, %eax\n  mov %r14, %rdi\n  xor %esi, %esi\n  syscall\n" /* access(F_OK) */
        "  test %rax, %rax\n  jz 6f\n"
        "  movq $0, 0(%rsp)\n  movq $20000000, 8(%rsp)\n"
        "  mov $35, %eax\n  mov %rsp, %rdi\n  xor %esi, %esi\n  syscall\n" /* nanosleep */
        "  jmp 5b\n"
        "6:\n"
        "  cmpl $2, hold_mode(%rip)\n  je 8f\n"
        "  cmpl $1, hold_mode(%rip)\n  je 7f\n"
        "  movdqu %xmm0, 0(%r13)\n  movdqu %xmm1, 16(%r13)\n  movdqu %xmm2, 32(%r13)\n"
        "  movdqu %xmm3, 48(%r13)\n  movdqu %xmm4, 64(%r13)\n  movdqu %xmm5, 80(%r13)\n"
        "  movdqu %xmm6, 96(%r13)\n  movdqu %xmm7, 112(%r13)\n  movdqu %xmm8, 128(%r13)\n"
        "  movdqu %xmm9, 144(%r13)\n  movdqu %xmm10, 160(%r13)\n  movdqu %xmm11, 176(%r13)\n"
        "  movdqu %xmm12, 192(%r13)\n  movdqu %xmm13, 208(%r13)\n  movdqu %xmm14, 224(%r13)\n"
        "  movdqu %xmm15, 240(%r13)\n"
        "  jmp 9f\n"
        "7:\n"
        "  vmovdqu %ymm0, 0(%r13)\n  vmovdqu %ymm1, 32(%r13)\n  vmovdqu %ymm2, 64(%r13)\n"
        "  vmovdqu %ymm3, 96(%r13)\n  vmovdqu %ymm4, 128(%r13)\n  vmovdqu %ymm5, 160(%r13)\n"
        "  vmovdqu %ymm6, 192(%r13)\n  vmovdqu %ymm7, 224(%r13)\n  vmovdqu %ymm8, 256(%r13)\n"
        "  vmovdqu %ymm9, 288(%r13)\n  vmovdqu %ymm10, 320(%r13)\n  vmovdqu %ymm11, 352(%r13)\n"
        "  vmovdqu %ymm12, 384(%r13)\n  vmovdqu %ymm13, 416(%r13)\n  vmovdqu %ymm14, 448(%r13)\n"
        "  vmovdqu %ymm15, 480(%r13)\n"
        "  vzeroupper\n"
        "  jmp 9f\n"
        "8:\n"
        "  vmovdqu64 %zmm0, 0(%r13)\n  vmovdqu64 %zmm1, 64(%r13)\n  vmovdqu64 %zmm2, 128(%r13)\n"
        "  vmovdqu64 %zmm3, 192(%r13)\n  vmovdqu64 %zmm4, 256(%r13)\n  vmovdqu64 %zmm5, 320(%r13)\n"
        "  vmovdqu64 %zmm6, 384(%r13)\n  vmovdqu64 %zmm7, 448(%r13)\n  vmovdqu64 %zmm8, 512(%r13)\n"
        "  vmovdqu64 %zmm9, 576(%r13)\n  vmovdqu64 %zmm10, 640(%r13)\n  vmovdqu64 %zmm11, 704(%r13)\n"
        "  vmovdqu64 %zmm12, 768(%r13)\n  vmovdqu64 %zmm13, 832(%r13)\n  vmovdqu64 %zmm14, 896(%r13)\n"
        "  vmovdqu64 %zmm15, 960(%r13)\n  vmovdqu64 %zmm16, 1024(%r13)\n  vmovdqu64 %zmm17, 1088(%r13)\n"
        "  vmovdqu64 %zmm18, 1152(%r13)\n  vmovdqu64 %zmm19, 1216(%r13)\n  vmovdqu64 %zmm20, 1280(%r13)\n"
        "  vmovdqu64 %zmm21, 1344(%r13)\n  vmovdqu64 %zmm22, 1408(%r13)\n  vmovdqu64 %zmm23, 1472(%r13)\n"
        "  vmovdqu64 %zmm24, 1536(%r13)\n  vmovdqu64 %zmm25, 1600(%r13)\n  vmovdqu64 %zmm26, 1664(%r13)\n"
        "  vmovdqu64 %zmm27, 1728(%r13)\n  vmovdqu64 %zmm28, 1792(%r13)\n  vmovdqu64 %zmm29, 1856(%r13)\n"
        "  vmovdqu64 %zmm30, 1920(%r13)\n  vmovdqu64 %zmm31, 1984(%r13)\n"
        "  kmovw %k1, 2048(%r13)\n  kmovw %k2, 2056(%r13)\n  kmovw %k3, 2064(%r13)\n"
        "  kmovw %k4, 2072(%r13)\n  kmovw %k5, 2080(%r13)\n  kmovw %k6, 2088(%r13)\n"
        "  kmovw %k7, 2096(%r13)\n"
        "  vzeroupper\n"
        "9:\n"
        "  add $24, %rsp\n"
        "  pop %r15\n  pop %r14\n  pop %r13\n  pop %r12\n  pop %rbp\n  pop %rbx\n"
        "  ret\n"
        ".size hold_registers, .-hold_registers\n");

static int detect_mode(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)) || !(c & (1u << 28)))
        return MODE_SSE; /* no OSXSAVE or no AVX */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0x6) != 0x6)
        return MODE_SSE;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 16)) && (lo & 0xe0) == 0xe0)
        return MODE_AVX512;
    return MODE_AVX;
}

/* Bytes of register state the mode holds, and the name of the register at a byte offset. */
static size_t mode_bytes(int mode)
{
    return mode == MODE_AVX512 ? STATE_BYTES : mode == MODE_AVX ? 16 * 32 : 16 * 16;
}

static void describe(int mode, size_t off, char *buf, size_t len)
{
    if (mode == MODE_AVX512 && off >= ZMM_BYTES)
        snprintf(buf, len, "k%zu", (off - ZMM_BYTES) / 8 + 1);
    else {
        size_t width = mode == MODE_AVX512 ? 64 : mode == MODE_AVX ? 32 : 16;
        snprintf(buf, len, "%s%zu bytes %zu..%zu", mode == MODE_AVX512 ? "zmm" : mode == MODE_AVX ? "ymm" : "xmm",
                 off / width, off % width / 8 * 8, off % width / 8 * 8 + 7);
    }
}

/* The word values the registers can hold: kmovw loads 16 bits of each mask word. */
static void mask_state(uint64_t *state, size_t words)
{
    if (hold_mode == MODE_AVX512)
        for (size_t i = ZMM_BYTES / 8; i < words; i++)
            state[i] &= 0xffff;
}

#elif defined(__aarch64__)

enum { MODE_NEON };
static const char *const mode_names[] = {"neon"};

/* v0..v31 of 16 bytes, then FPCR as an 8-byte word. */
#define V_BYTES (32 * 16)
#define STATE_BYTES (V_BYTES + 8)
/* FPCR bits the victim sets: RMode (23:22) and DN (25); the others stay as the C code wants. */
#define FPCR_HELD ((3ull << 22) | (1ull << 25))

int hold_mode;
void hold_registers(const uint64_t *in, uint64_t *out, const char *request, int log_fd,
                    const char *line, long line_len);

/*
 * x19..x24 keep the arguments across the syscalls; d8..d15 (callee-saved in the low 64 bits)
 * and the caller's FPCR are put back before returning. The kernel keeps v0..v31 and FPCR
 * across a syscall. Frame: x29/x30, x19..x24, d8..d15, a timespec at 128, the old FPCR at 144.
 */
__asm__(".text\n"
        ".globl hold_registers\n"
        ".type hold_registers,%function\n"
        "hold_registers:\n"
        "  sub sp, sp, #160\n"
        "  stp x29, x30, [sp, #0]\n  stp x19, x20, [sp, #16]\n"
        "  stp x21, x22, [sp, #32]\n  stp x23, x24, [sp, #48]\n"
        "  stp d8, d9, [sp, #64]\n  stp d10, d11, [sp, #80]\n"
        "  stp d12, d13, [sp, #96]\n  stp d14, d15, [sp, #112]\n"
        "  mov x19, x0\n  mov x20, x1\n  mov x21, x2\n  mov w22, w3\n  mov x23, x4\n  mov x24, x5\n"
        "  mrs x9, fpcr\n  str x9, [sp, #144]\n"
        "  ldr x9, [x19, #512]\n  msr fpcr, x9\n"
        "  mov x9, x19\n"
        "  ld1 {v0.2d, v1.2d, v2.2d, v3.2d}, [x9], #64\n"
        "  ld1 {v4.2d, v5.2d, v6.2d, v7.2d}, [x9], #64\n"
        "  ld1 {v8.2d, v9.2d, v10.2d, v11.2d}, [x9], #64\n"
        "  ld1 {v12.2d, v13.2d, v14.2d, v15.2d}, [x9], #64\n"
        "  ld1 {v16.2d, v17.2d, v18.2d, v19.2d}, [x9], #64\n"
        "  ld1 {v20.2d, v21.2d, v22.2d, v23.2d}, [x9], #64\n"
        "  ld1 {v24.2d, v25.2d, v26.2d, v27.2d}, [x9], #64\n"
        "  ld1 {v28.2d, v29.2d, v30.2d, v31.2d}, [x9], #64\n"
        /* The registers are live: say so in the log, then wait for a verify request. */
        "  mov x0, x22\n  mov x1, x23\n  mov x2, x24\n  mov x8, #64\n  svc #0\n" /* write */
        "1:\n"
        "  mov x0, #-100\n  mov x1, x21\n  mov x2, #0\n  mov x3, #0\n  mov x8, #48\n  svc #0\n"
        "  cbz x0, 2f\n" /* faccessat(AT_FDCWD, request, F_OK, 0) */
        "  str xzr, [sp, #128]\n  movz x9, #0x2d00\n  movk x9, #0x131, lsl #16\n  str x9, [sp, #136]\n"
        "  add x0, sp, #128\n  mov x1, #0\n  mov x8, #101\n  svc #0\n" /* nanosleep 20 ms */
        "  b 1b\n"
        "2:\n"
        "  mov x9, x20\n"
        "  st1 {v0.2d, v1.2d, v2.2d, v3.2d}, [x9], #64\n"
        "  st1 {v4.2d, v5.2d, v6.2d, v7.2d}, [x9], #64\n"
        "  st1 {v8.2d, v9.2d, v10.2d, v11.2d}, [x9], #64\n"
        "  st1 {v12.2d, v13.2d, v14.2d, v15.2d}, [x9], #64\n"
        "  st1 {v16.2d, v17.2d, v18.2d, v19.2d}, [x9], #64\n"
        "  st1 {v20.2d, v21.2d, v22.2d, v23.2d}, [x9], #64\n"
        "  st1 {v24.2d, v25.2d, v26.2d, v27.2d}, [x9], #64\n"
        "  st1 {v28.2d, v29.2d, v30.2d, v31.2d}, [x9], #64\n"
        "  mrs x9, fpcr\n  str x9, [x20, #512]\n"
        "  ldr x9, [sp, #144]\n  msr fpcr, x9\n"
        "  ldp d8, d9, [sp, #64]\n  ldp d10, d11, [sp, #80]\n"
        "  ldp d12, d13, [sp, #96]\n  ldp d14, d15, [sp, #112]\n"
        "  ldp x19, x20, [sp, #16]\n  ldp x21, x22, [sp, #32]\n  ldp x23, x24, [sp, #48]\n"
        "  ldp x29, x30, [sp, #0]\n"
        "  add sp, sp, #160\n"
        "  ret\n"
        ".size hold_registers, .-hold_registers\n");

static int detect_mode(void)
{
    return MODE_NEON;
}

static size_t mode_bytes(int mode)
{
    (void)mode;
    return STATE_BYTES;
}

static void describe(int mode, size_t off, char *buf, size_t len)
{
    (void)mode;
    if (off >= V_BYTES)
        snprintf(buf, len, "fpcr");
    else
        snprintf(buf, len, "v%zu bytes %zu..%zu", off / 16, off % 16 / 8 * 8, off % 16 / 8 * 8 + 7);
}

/* The FPCR word holds only the bits the victim sets. */
static void mask_state(uint64_t *state, size_t words)
{
    (void)words;
    state[V_BYTES / 8] &= FPCR_HELD;
}

#else
#error "vregs: no register set for this architecture"
#endif

/* The second thread's rounds checked so far, the last of them the leader has taken (and
 * removed the request of), and the thread's first mismatch. */
static unsigned long long worker_checked, worker_taken;
static char worker_fail[256];

static void *hold_in_thread(void *arg)
{
    (void)arg;
    static uint64_t want[STATE_BYTES / 8], got[STATE_BYTES / 8];
    size_t words = mode_bytes(hold_mode) / 8;
    for (unsigned long long round = 1;; round++) {
        random_fill(want, words, (uint64_t)getpid() ^ 0x5bd1e995u, round);
        mask_state(want, words);
        memset(got, 0, sizeof got);
        /* No log line (fd -1): the leader's lines are the test's clock. */
        hold_registers(want, got, ctl_request, -1, "", 0);
        mask_state(got, words);
        for (size_t i = 0; i < words && !worker_fail[0]; i++)
            if (got[i] != want[i]) {
                char what[64];
                describe(hold_mode, i * 8, what, sizeof what);
                snprintf(worker_fail, sizeof worker_fail, "second thread: %s is %#llx, want %#llx",
                         what, (unsigned long long)got[i], (unsigned long long)want[i]);
            }
        __atomic_store_n(&worker_checked, round, __ATOMIC_RELEASE);
        /* Holding again while this round's request is still there would end at once: wait for
         * the leader to take the round. (Not for the request file to go: the next request may
         * already stand in its place by the time this thread looks.) */
        while (__atomic_load_n(&worker_taken, __ATOMIC_ACQUIRE) < round)
            usleep(1000);
    }
    return NULL;
}

/* Waits (up to 10 s) for the second thread to check a round after `seen`; fails otherwise. */
static unsigned long long wait_for_worker(unsigned long long seen)
{
    for (int i = 0; i < 10000; i++) {
        unsigned long long now = __atomic_load_n(&worker_checked, __ATOMIC_ACQUIRE);
        if (now != seen) {
            if (worker_fail[0])
                fail("%s", worker_fail);
            return now;
        }
        usleep(1000);
    }
    fail("the second thread did not check its registers within 10 s");
    return seen;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_init(argv[1]);
    int log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0)
        die("cannot open log %s: %s", argv[2], strerror(errno));
    hold_mode = detect_mode();

    char info[64], info_path[CTL_PATH_MAX], info_tmp[CTL_PATH_MAX];
    int n = snprintf(info, sizeof info, "mode %s\n", mode_names[hold_mode]);
    snprintf(info_path, sizeof info_path, "%s/info", argv[1]);
    snprintf(info_tmp, sizeof info_tmp, "%s/info.tmp", argv[1]);
    int ifd = open(info_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (ifd < 0)
        die("create %s: %s", info_tmp, strerror(errno));
    write_all(ifd, info, (size_t)n, info_tmp);
    close(ifd);
    if (rename(info_tmp, info_path) != 0)
        die("rename %s: %s", info_tmp, strerror(errno));

    pthread_t worker;
    if (pthread_create(&worker, NULL, hold_in_thread, NULL) != 0)
        die("pthread_create failed");

    static uint64_t want[STATE_BYTES / 8], got[STATE_BYTES / 8];
    size_t words = mode_bytes(hold_mode) / 8;
    char line[128];
    unsigned long long worker_seen = 0;
    for (unsigned long long counter = 1;; counter++) {
        random_fill(want, words, (uint64_t)getpid(), counter);
        mask_state(want, words);
        memset(got, 0, sizeof got);
        n = snprintf(line, sizeof line, "pid=%d n=%llu\n", (int)getpid(), counter);
        hold_registers(want, got, ctl_request, log_fd, line, n);
        worker_seen = wait_for_worker(worker_seen);
        unlink(ctl_request);
        __atomic_store_n(&worker_taken, worker_seen, __ATOMIC_RELEASE);
        mask_state(got, words);
        for (size_t i = 0; i < words; i++)
            if (got[i] != want[i]) {
                char what[64];
                describe(hold_mode, i * 8, what, sizeof what);
                fail("%s is %#llx, want %#llx", what, (unsigned long long)got[i],
                     (unsigned long long)want[i]);
                break;
            }
        ctl_report(counter);
        int code = ctl_exit_requested();
        if (code >= 0)
            exit(code);
    }
}
