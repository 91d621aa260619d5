/*
 * memcheck: the main crest test victim. Single-threaded, no signal handlers, about 80 MiB mapped:
 *
 *   32 MiB  pseudo-random words in an anonymous mmap
 *   16 MiB  pseudo-random words in one malloc'd block (glibc serves it with its own mmap)
 *   16 MiB  sparse anonymous mmap, mostly zero: a few bytes set every MiB, some pages written
 *           with zeros (present but all-zero), some only read (mapped to the zero page)
 *    4 MiB  .bss pattern, plus a 512 KiB history ring rewritten on every tick
 *    1 MiB  read-only anonymous mmap (mprotect'ed after filling) whose protection is checked
 *   64 KiB  .data pattern (written at start) and 32 KiB of .data never written (clean file pages)
 *   64 KiB  stack pattern (a local array of main)
 *   ~5 MiB  heap: thousands of malloc'd chunks with patterns, some freed
 *
 * Every ~20 ms (nanosleep) it increments a counter and appends "pid=<pid> n=<counter>" to an
 * O_APPEND log (every tenth line through a dup of the log fd, which shares its offset). On
 * request it verifies all of the above, that getpid() is the pid it started with, that both log
 * fds still have O_APPEND and sit at the end of the file, and that /proc/self/{cmdline,environ,
 * auxv} read as at start. See victim.h for the control protocol.
 *
 * usage: memcheck CTL_DIR LOG_FILE [SEED]
 */
#include "victim.h"

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define MiB (1024UL * 1024UL)
#define RND_MMAP_BYTES (32 * MiB)
#define RND_MALLOC_BYTES (16 * MiB)
#define SPARSE_BYTES (16 * MiB)
#define RO_BYTES (1 * MiB)
#define BSS_WORDS (512 * 1024)
#define HIST_WORDS (64 * 1024)
#define DATA_WORDS (8 * 1024)
#define STACK_WORDS (8 * 1024)
#define HEAP_CHUNKS 4096

/* A compile-time table so .data and .rodata hold index-dependent values straight from the
 * executable file; a restore that maps the wrong file offset shows up as a mismatch. */
#define TV(i, k) ((((uint64_t)(i) + 1) * 0x9E3779B97F4A7C15ULL) ^ (k))
#define T4(b, k) TV(b, k), TV((b) + 1, k), TV((b) + 2, k), TV((b) + 3, k)
#define T16(b, k) T4(b, k), T4((b) + 4, k), T4((b) + 8, k), T4((b) + 12, k)
#define T64(b, k) T16(b, k), T16((b) + 16, k), T16((b) + 32, k), T16((b) + 48, k)
#define T256(b, k) T64(b, k), T64((b) + 64, k), T64((b) + 128, k), T64((b) + 192, k)
#define T1024(b, k) T256(b, k), T256((b) + 256, k), T256((b) + 512, k), T256((b) + 768, k)
#define T4096(b, k) T1024(b, k), T1024((b) + 1024, k), T1024((b) + 2048, k), T1024((b) + 3072, k)
#define DATA_CLEAN_K 0x00C1EA9DA7AULL
#define RODATA_K 0x0000B0DA7AULL

static uint64_t data_clean[4096] = {T4096(0, DATA_CLEAN_K)}; /* never written */
static const uint64_t rodata_tab[4096] = {T4096(0, RODATA_K)};
static uint64_t data_pat[DATA_WORDS] = {[0 ... DATA_WORDS - 1] = 1}; /* rewritten at start */
static uint64_t bss_pat[BSS_WORDS];
static uint64_t hist[HIST_WORDS];

static uint64_t seed;
static pid_t start_pid;
static unsigned long long counter;
static int log_fd, log_fd_dup;

static uint64_t *rnd_mmap;
static uint64_t *rnd_malloc;
static unsigned char *sparse;
static uint64_t *ro_area;

static unsigned char *chunks[HEAP_CHUNKS];
static size_t chunk_len[HEAP_CHUNKS];

static unsigned char chunk_byte(size_t chunk, size_t j)
{
    return (unsigned char)(chunk * 131 + j * 7 + (seed & 0xff));
}

static size_t chunk_size(size_t i) { return 16 + (i * 389) % 2500; }

static void heap_setup(void)
{
    for (size_t i = 0; i < HEAP_CHUNKS; i++) {
        chunk_len[i] = chunk_size(i);
        chunks[i] = malloc(chunk_len[i]);
        if (!chunks[i])
            die("malloc failed");
        for (size_t j = 0; j < chunk_len[i]; j++)
            chunks[i][j] = chunk_byte(i, j);
    }
    /* Free every third chunk, then reuse some of the holes with differently sized chunks, so
     * the heap holds free-list metadata between live data. */
    for (size_t i = 0; i < HEAP_CHUNKS; i += 3) {
        free(chunks[i]);
        chunks[i] = NULL;
    }
    for (size_t i = 0; i < HEAP_CHUNKS; i += 6) {
        chunk_len[i] = chunk_size(i + 7);
        chunks[i] = malloc(chunk_len[i]);
        if (!chunks[i])
            die("malloc failed");
        for (size_t j = 0; j < chunk_len[i]; j++)
            chunks[i][j] = chunk_byte(i, j);
    }
}

static void heap_check(void)
{
    for (size_t i = 0; i < HEAP_CHUNKS; i++) {
        if (!chunks[i])
            continue;
        for (size_t j = 0; j < chunk_len[i]; j++)
            if (chunks[i][j] != chunk_byte(i, j)) {
                fail("heap chunk %zu byte %zu at %p is %#x, want %#x", i, j,
                     (void *)&chunks[i][j], chunks[i][j], chunk_byte(i, j));
                return;
            }
    }
}

static unsigned char sparse_byte(size_t mib, int which)
{
    return (unsigned char)(0x11 + mib * 13 + which * 101 + (seed & 0x3f)) | 1;
}

static void sparse_setup(void)
{
    sparse = mmap(NULL, SPARSE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (sparse == MAP_FAILED)
        die("mmap sparse: %s", strerror(errno));
    for (size_t mib = 0; mib < SPARSE_BYTES / MiB; mib++) {
        unsigned char *m = sparse + mib * MiB;
        m[777] = sparse_byte(mib, 0);
        m[MiB / 2 + 4095] = sparse_byte(mib, 1);
        m[MiB - 1] = sparse_byte(mib, 2);
        /* Pages written with zeros (present, all zero: the dump must skip them) and pages only
         * read (mapped to the shared zero page). */
        for (size_t off = 64 * 1024; off < MiB / 2; off += 64 * 1024)
            ((volatile unsigned char *)m)[off] = 0;
        for (size_t off = MiB / 2 + 64 * 1024; off < MiB - 4096; off += 64 * 1024)
            (void)((volatile unsigned char *)m)[off];
    }
}

static void sparse_check(void)
{
    for (size_t mib = 0; mib < SPARSE_BYTES / MiB; mib++) {
        const unsigned char *m = sparse + mib * MiB;
        size_t set[3] = {777, MiB / 2 + 4095, MiB - 1};
        for (size_t off = 0; off < MiB; off += 8) {
            uint64_t w;
            memcpy(&w, m + off, 8);
            uint64_t want = 0;
            for (int k = 0; k < 3; k++)
                if (set[k] >= off && set[k] < off + 8)
                    want |= (uint64_t)sparse_byte(mib, k) << (8 * (set[k] - off));
            if (w != want) {
                fail("sparse area MiB %zu offset %zu at %p is %#llx, want %#llx", mib, off,
                     (void *)(m + off), (unsigned long long)w, (unsigned long long)want);
                return;
            }
        }
    }
}

static void tables_check(void)
{
    for (size_t i = 0; i < 4096; i++) {
        if (data_clean[i] != TV(i, DATA_CLEAN_K)) {
            fail(".data (clean) word %zu at %p is %#llx", i, (void *)&data_clean[i],
                 (unsigned long long)data_clean[i]);
            return;
        }
        if (rodata_tab[i] != TV(i, RODATA_K)) {
            fail(".rodata word %zu at %p is %#llx", i, (void *)&rodata_tab[i],
                 (unsigned long long)rodata_tab[i]);
            return;
        }
    }
}

static void hist_check(void)
{
    /* hist[i % HIST_WORDS] == mix(i) for the last HIST_WORDS ticks; never-written slots are 0. */
    for (size_t slot = 0; slot < HIST_WORDS; slot++) {
        uint64_t want;
        if (counter < HIST_WORDS) {
            want = (slot >= 1 && slot <= counter) ? mix(slot) : 0;
        } else {
            /* The newest i <= counter with i % HIST_WORDS == slot. */
            uint64_t i = counter - ((counter - slot) % HIST_WORDS);
            want = mix(i);
        }
        if (hist[slot] != want) {
            fail("history slot %zu at %p is %#llx, want %#llx (counter %llu)", slot,
                 (void *)&hist[slot], (unsigned long long)hist[slot], (unsigned long long)want,
                 counter);
            return;
        }
    }
}

static void log_fd_check(int fd, const char *what)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) {
        fail("%s fd %d: F_GETFL: %s", what, fd, strerror(errno));
        return;
    }
    if (!(fl & O_APPEND))
        fail("%s fd %d lost O_APPEND (flags %#x)", what, fd, fl);
    if ((fl & O_ACCMODE) != O_WRONLY)
        fail("%s fd %d is not write-only (flags %#x)", what, fd, fl);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        fail("%s fd %d: fstat: %s", what, fd, strerror(errno));
        return;
    }
    off_t pos = lseek(fd, 0, SEEK_CUR);
    if (pos != st.st_size)
        fail("%s fd %d offset %lld is not the file size %lld", what, fd, (long long)pos,
             (long long)st.st_size);
}

static __attribute__((noinline)) void verify_all(const uint64_t *stack_pat)
{
    fail_msg[0] = 0;
    if (getpid() != start_pid)
        fail("getpid() is %d, started as %d", (int)getpid(), (int)start_pid);
    if ((pid_t)syscall(SYS_getpid) != start_pid)
        fail("SYS_getpid is %ld, started as %d", syscall(SYS_getpid), (int)start_pid);
    log_fd_check(log_fd, "log");
    log_fd_check(log_fd_dup, "log dup");
    random_check(rnd_mmap, RND_MMAP_BYTES / 8, seed, 1, "random mmap area");
    random_check(rnd_malloc, RND_MALLOC_BYTES / 8, seed, 2, "random malloc area");
    random_check(ro_area, RO_BYTES / 8, seed, 3, "read-only area");
    random_check(bss_pat, BSS_WORDS, seed, 4, ".bss pattern");
    random_check(data_pat, DATA_WORDS, seed, 5, ".data pattern");
    random_check(stack_pat, STACK_WORDS, seed, 6, "stack pattern");
    sparse_check();
    heap_check();
    tables_check();
    hist_check();
    check_vma_perms(ro_area, "r--p", "read-only area");
    check_vma_perms(rnd_mmap, "rw-p", "random mmap area");
    proc_snapshots_check();
}

static __attribute__((noinline)) void run(const uint64_t *stack_pat)
{
    char line[128];
    for (;;) {
        sleep_ms(20);
        counter++;
        hist[counter % HIST_WORDS] = mix(counter);
        int n = snprintf(line, sizeof line, "pid=%d n=%llu\n", (int)getpid(), counter);
        int fd = (counter % 10 == 0) ? log_fd_dup : log_fd;
        write_all(fd, line, (size_t)n, "log");
        if (ctl_verify_requested()) {
            verify_all(stack_pat);
            ctl_report(counter);
        }
        int code = ctl_exit_requested();
        if (code >= 0)
            exit(code);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE [SEED]", argv[0]);
    ctl_init(argv[1]);
    seed = argc > 3 ? strtoull(argv[3], NULL, 0) : 0x5eed;
    start_pid = getpid();
    /* Optional: a parent-death signal, for the tests of how restore treats it. */
    const char *pdeath = getenv("MEMCHECK_PDEATHSIG");
    if (pdeath && prctl(PR_SET_PDEATHSIG, atoi(pdeath), 0, 0, 0) != 0)
        die("PR_SET_PDEATHSIG: %s", strerror(errno));

    log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0)
        die("cannot open log %s: %s", argv[2], strerror(errno));
    log_fd_dup = dup(log_fd);
    if (log_fd_dup < 0)
        die("dup: %s", strerror(errno));

    rnd_mmap = mmap(NULL, RND_MMAP_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
                    0);
    if (rnd_mmap == MAP_FAILED)
        die("mmap: %s", strerror(errno));
    random_fill(rnd_mmap, RND_MMAP_BYTES / 8, seed, 1);
    rnd_malloc = malloc(RND_MALLOC_BYTES);
    if (!rnd_malloc)
        die("malloc: %s", strerror(errno));
    random_fill(rnd_malloc, RND_MALLOC_BYTES / 8, seed, 2);
    ro_area = mmap(NULL, RO_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ro_area == MAP_FAILED)
        die("mmap: %s", strerror(errno));
    random_fill(ro_area, RO_BYTES / 8, seed, 3);
    if (mprotect(ro_area, RO_BYTES, PROT_READ) != 0)
        die("mprotect: %s", strerror(errno));
    random_fill(bss_pat, BSS_WORDS, seed, 4);
    random_fill(data_pat, DATA_WORDS, seed, 5);
    uint64_t stack_pat[STACK_WORDS];
    random_fill(stack_pat, STACK_WORDS, seed, 6);
    sparse_setup();
    heap_setup();
    proc_snapshots_take();

    /* Check the freshly built state once, so a broken victim fails before any dump. */
    verify_all(stack_pat);
    if (fail_msg[0])
        die("self-check at start failed: %s", fail_msg);

    run(stack_pat);
    return 0;
}
