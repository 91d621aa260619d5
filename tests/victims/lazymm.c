/*
 * lazymm: a victim that changes its memory map right after a lazy restore, while its pages are
 * still loading (crest restore --lazy-pages; tests/lazy.rs).
 *
 * At start it fills eight 2 MiB anonymous regions r0..r7 with pseudo-random words. When the
 * file CTL/mutate appears (the test creates it after the dump, so the restored process finds
 * it on its first tick), it:
 *   - forks a child that checks every region and writes into r0 (its own copy), then exits
 *     0 (3 on a mismatch); the parent checks the child's status and that its r0 is unchanged;
 *   - munmaps r1 and maps fresh anonymous memory in its place, which must read as zeros;
 *   - moves r2 elsewhere with mremap (MREMAP_FIXED over a reserved range);
 *   - discards r3 with MADV_DONTNEED (must read as zeros from then on);
 *   - munmaps the middle 1 MiB of r4;
 *   - discards 512 KiB inside r5;
 *   - overwrites the first half of r6;
 * and writes CTL/mutated ("ok" or what was wrong). Every verify request checks all regions as
 * they must be now (before the mutation: all eight patterns).
 *
 * usage: lazymm CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <sys/mman.h>
#include <sys/wait.h>

#define MiB (1024UL * 1024UL)
#define REGION (2 * MiB)
#define WORDS (REGION / 8)
#define NREGIONS 8

static uint64_t *r[NREGIONS];
static uint64_t *moved; /* r2 after the mremap */
static int mutated;
static const char *ctl_dir;

/* Checks words [from, to) of region pattern `salt` at p (p points at word 0 of the pattern). */
static void check_words(const uint64_t *p, size_t from, size_t to, uint64_t salt, const char *what)
{
    uint64_t s = xs_seed(0x1a2f, salt);
    for (size_t i = 0; i < to; i++) {
        uint64_t want = xs_next(&s);
        if (i >= from && p[i] != want) {
            fail("%s: word %zu at %p is %#llx, want %#llx", what, i, (void *)&p[i],
                 (unsigned long long)p[i], (unsigned long long)want);
            return;
        }
    }
}

static void check_zero(const uint64_t *p, size_t from, size_t to, const char *what)
{
    for (size_t i = from; i < to; i++)
        if (p[i] != 0) {
            fail("%s: word %zu at %p is %#llx, want 0", what, i, (void *)&p[i],
                 (unsigned long long)p[i]);
            return;
        }
}

static void check_all_patterns(void)
{
    char what[32];
    for (int i = 0; i < NREGIONS; i++) {
        snprintf(what, sizeof what, "r%d", i);
        check_words(r[i], 0, WORDS, (uint64_t)i, what);
    }
}

static void check_mutated(void)
{
    check_words(r[0], 0, WORDS, 0, "r0 (parent, after the child wrote its copy)");
    check_zero(r[1], 0, WORDS, "r1 (unmapped, mapped again)");
    check_words(moved, 0, WORDS, 2, "r2 (moved by mremap)");
    check_zero(r[3], 0, WORDS, "r3 (MADV_DONTNEED)");
    check_words(r[4], 0, WORDS / 4, 4, "r4 head");
    check_words(r[4], 3 * WORDS / 4, WORDS, 4, "r4 tail");
    check_words(r[5], 0, WORDS / 8, 5, "r5 head");
    check_zero(r[5], WORDS / 8, 3 * WORDS / 8, "r5 (512 KiB MADV_DONTNEED)");
    check_words(r[5], 3 * WORDS / 8, WORDS, 5, "r5 tail");
    for (size_t i = 0; i < WORDS / 2; i++)
        if (r[6][i] != mix(i + 1)) {
            fail("r6: overwritten word %zu is %#llx", i, (unsigned long long)r[6][i]);
            break;
        }
    check_words(r[6], WORDS / 2, WORDS, 6, "r6 tail");
    check_words(r[7], 0, WORDS, 7, "r7");
}

static void mutate(void)
{
    fail_msg[0] = 0;
    pid_t child = fork();
    if (child < 0)
        die("fork: %s", strerror(errno));
    if (child == 0) {
        check_all_patterns();
        for (size_t i = 0; i < WORDS; i += 512)
            r[0][i] = ~r[0][i];
        child_exit_on_failure();
        _exit(0);
    }
    int status = 0;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("the forked child found its memory wrong (status %#x)", status);

    if (munmap(r[1], REGION) != 0)
        die("munmap r1: %s", strerror(errno));
    if (mmap(r[1], REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
             0) != r[1])
        die("mmap over r1: %s", strerror(errno));

    void *dst = mmap(NULL, REGION, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (dst == MAP_FAILED)
        die("reserving room for r2: %s", strerror(errno));
    moved = mremap(r[2], REGION, REGION, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
    if (moved != dst)
        die("mremap r2: %s", strerror(errno));

    if (madvise(r[3], REGION, MADV_DONTNEED) != 0)
        die("madvise r3: %s", strerror(errno));
    if (munmap((char *)r[4] + REGION / 4, REGION / 2) != 0)
        die("munmap inside r4: %s", strerror(errno));
    if (madvise((char *)r[5] + REGION / 8, REGION / 4, MADV_DONTNEED) != 0)
        die("madvise r5: %s", strerror(errno));
    for (size_t i = 0; i < WORDS / 2; i++)
        r[6][i] = mix(i + 1);
    mutated = 1;
    check_mutated();
    ctl_write_file(ctl_dir, "mutated", fail_msg[0] ? fail_msg : "ok");
}

static void tick(void)
{
    char path[CTL_PATH_MAX];
    snprintf(path, sizeof path, "%s/mutate", ctl_dir);
    if (!mutated && access(path, F_OK) == 0)
        mutate();
}

static void verify(void)
{
    if (mutated)
        check_mutated();
    else
        check_all_patterns();
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_dir = argv[1];
    ctl_init(argv[1]);
    int log_fd = log_open(argv[2]);
    for (int i = 0; i < NREGIONS; i++) {
        /* A guard page between regions keeps them separate VMAs. */
        char *p = mmap(NULL, REGION + 4096, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            die("mmap: %s", strerror(errno));
        if (mprotect(p + REGION, 4096, PROT_NONE) != 0)
            die("mprotect: %s", strerror(errno));
        r[i] = (uint64_t *)p;
        random_fill(r[i], WORDS, 0x1a2f, (uint64_t)i);
    }
    ctl_loop((struct ctl_loop){.log_fd = log_fd, .period_ms = 20, .tick = tick, .verify = verify});
}
