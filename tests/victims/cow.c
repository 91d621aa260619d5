/*
 * cow: a crest test victim whose private memory is shared copy-on-write across forks.
 *
 *   root    maps a private anonymous region of NPAGES pages, fills every page, then forks K
 *   `-- K   writes pages [0, CHANGED), drops page DROPPED (MADV_DONTNEED: zero again in K only),
 *       |   then forks G
 *       `-- G   touches nothing
 *
 * A second region maps a file (CTL/data, FPAGES pages of 'F') privately: the root writes pages
 * [0, FWRITTEN) before the fork, K writes pages [0, FCHANGED) again; the rest stays the file's
 * page-cache pages (only their bytes are checked).
 *
 * So, as the kernel keeps it: G shares every page with K (physical page frame numbers equal),
 * K and G share pages [DROPPED + 1, NPAGES) with the root, and pages [0, CHANGED) of K and G
 * are their own. A restore that copies each process's memory on its own keeps every byte but
 * loses the sharing (three copies of the region instead of about one).
 *
 * On a verify request the root compares the page frame numbers of the three processes
 * (/proc/PID/pagemap, as root), then has each process check its own bytes (K and G on a request
 * through a shared mapping: reading another process's memory with process_vm_readv pins the
 * pages, and pinning a shared anonymous page unshares it). Children die with the root.
 *
 * usage: cow CTL_DIR LOG_FILE   (writes "K <pid>\nG <pid>\n" to CTL/info)
 */
#include "victim.h"

#include <sys/mman.h>

#define NPAGES 64
#define CHANGED 16
#define DROPPED 16
#define PAGE 4096
#define FPAGES 16
#define FWRITTEN 8
#define FCHANGED 4

static unsigned char *file_region;

/* What process `who` must hold in page `page` of the file region, one byte repeated. */
static unsigned char file_expected(int who, int page)
{
    if (who > 0 && page < FCHANGED)
        return (unsigned char)(0x20 + page);
    if (page < FWRITTEN)
        return (unsigned char)(0x10 + page);
    return 'F';
}

static unsigned char *region;
static pid_t k_pid, g_pid;
static int info_pipe[2];

/* Check requests to K (1) and G (2), in a MAP_SHARED page made before any fork. */
struct requests {
    volatile int seq;
    volatile int done[3];
    char why[3][200];
};
static struct requests *req;

static unsigned char root_byte(int page) { return (unsigned char)(0x40 + page); }
static unsigned char child_byte(int page) { return (unsigned char)(0xc0 + page); }

/* What process `who` (0 root, 1 K, 2 G) must hold in page `page`, one byte repeated. */
static unsigned char expected(int who, int page)
{
    if (who == 0)
        return root_byte(page);
    if (page < CHANGED)
        return child_byte(page);
    if (page == DROPPED)
        return 0;
    return root_byte(page);
}

static void check_own(int who);

/* K's and G's loop: check its own bytes whenever the root asks. */
static __attribute__((noreturn)) void answer_forever(int who)
{
    for (;;) {
        int seq = req->seq;
        if (req->done[who] != seq) {
            fail_msg[0] = 0;
            check_own(who);
            snprintf(req->why[who], sizeof req->why[who], "%s", fail_msg);
            __sync_synchronize();
            req->done[who] = seq;
        }
        sleep_ms(2);
    }
}

static void body_g(void) { answer_forever(2); }

static void body_k(void)
{
    for (int p = 0; p < CHANGED; p++)
        memset(region + (size_t)p * PAGE, child_byte(p), PAGE);
    for (int p = 0; p < FCHANGED; p++)
        memset(file_region + (size_t)p * PAGE, file_expected(1, p), PAGE);
    if (madvise(region + (size_t)DROPPED * PAGE, PAGE, MADV_DONTNEED) != 0)
        die("madvise: %s", strerror(errno));
    pid_t g = fork_dying_child();
    if (g == 0)
        body_g();
    if (write(info_pipe[1], &g, sizeof g) != sizeof g)
        die("write: %s", strerror(errno));
    answer_forever(1);
}

/* The page frame number of `addr` in `pid`, 0 when not present. */
static uint64_t pfn(pid_t pid, const void *addr)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/pagemap", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail("open %s: %s", path, strerror(errno));
        return 0;
    }
    uint64_t entry = 0;
    off_t at = (off_t)((uintptr_t)addr / PAGE * sizeof entry);
    if (pread(fd, &entry, sizeof entry, at) != sizeof entry)
        fail("read %s: %s", path, strerror(errno));
    close(fd);
    if (!(entry >> 63 & 1))
        return 0;
    return entry & ((1ULL << 55) - 1);
}

static void check_own(int who)
{
    for (int p = 0; p < FPAGES; p++)
        for (int i = 0; i < PAGE; i++)
            if (file_region[p * PAGE + i] != file_expected(who, p)) {
                fail("pid %d: byte %d of page %d of the file mapping is %#x, not %#x",
                     (int)getpid(), i, p, file_region[p * PAGE + i], file_expected(who, p));
                return;
            }
    for (int p = 0; p < NPAGES; p++)
        for (int i = 0; i < PAGE; i++)
            if (region[p * PAGE + i] != expected(who, p)) {
                fail("pid %d: byte %d of page %d is %#x, not %#x", (int)getpid(), i, p,
                     region[p * PAGE + i], expected(who, p));
                return;
            }
}

/* Has K and G check their own bytes; their first failure becomes ours. */
static void check_children_bytes(void)
{
    int seq = ++req->seq;
    for (int waited = 0; req->done[1] != seq || req->done[2] != seq; waited++) {
        if (waited > 2500) {
            fail("K or G did not answer a check request within 5 s");
            return;
        }
        sleep_ms(2);
    }
    __sync_synchronize();
    for (int who = 1; who < 3; who++)
        if (req->why[who][0])
            fail("%s: %s", who == 1 ? "K" : "G", req->why[who]);
}

static void verify(void)
{
    pid_t pids[3] = {getpid(), k_pid, g_pid};
    for (int p = 0; p < NPAGES && !fail_msg[0]; p++) {
        const void *a = region + (size_t)p * PAGE;
        uint64_t r = pfn(pids[0], a), k = pfn(pids[1], a), g = pfn(pids[2], a);
        if (r == 0)
            fail("page %d of the root is not present", p);
        else if (p == DROPPED) {
            if (k == r || g == r)
                fail("page %d (dropped in K) still shares the root's frame", p);
        } else if (k == 0 || g == 0)
            fail("page %d is not present in K (%#llx) or G (%#llx)", p,
                 (unsigned long long)k, (unsigned long long)g);
        else if (k != g)
            fail("page %d: K and G do not share it (frames %#llx, %#llx)", p,
                 (unsigned long long)k, (unsigned long long)g);
        else if (p < CHANGED && k == r)
            fail("page %d: K's own page shares the root's frame", p);
        else if (p > DROPPED && k != r)
            fail("page %d: K does not share the root's frame (%#llx, %#llx)", p,
                 (unsigned long long)k, (unsigned long long)r);
    }
    /* Pages [FWRITTEN, FPAGES) are the file's page-cache pages, present or not. */
    for (int p = 0; p < FWRITTEN && !fail_msg[0]; p++) {
        const void *a = file_region + (size_t)p * PAGE;
        uint64_t r = pfn(pids[0], a), k = pfn(pids[1], a), g = pfn(pids[2], a);
        if (r == 0 || k == 0 || g == 0)
            fail("page %d of the file mapping is not present everywhere", p);
        else if (k != g)
            fail("page %d of the file mapping: K and G do not share it", p);
        else if (p < FCHANGED && k == r)
            fail("page %d of the file mapping: K's own page shares the root's frame", p);
        else if (p >= FCHANGED && k != r)
            fail("page %d of the file mapping: K does not share the root's frame", p);
    }
    check_own(0);
    check_children_bytes();
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_init(argv[1]);
    int log_fd = log_open(argv[2]);
    region = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                  -1, 0);
    if (region == MAP_FAILED)
        die("mmap: %s", strerror(errno));
    for (int p = 0; p < NPAGES; p++)
        memset(region + (size_t)p * PAGE, root_byte(p), PAGE);
    char path[CTL_PATH_MAX];
    snprintf(path, sizeof path, "%s/data", argv[1]);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    static unsigned char fpage[PAGE];
    memset(fpage, 'F', sizeof fpage);
    for (int p = 0; fd >= 0 && p < FPAGES; p++)
        write_all(fd, (const char *)fpage, sizeof fpage, path);
    if (fd < 0)
        die("create %s: %s", path, strerror(errno));
    file_region = mmap(NULL, FPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (file_region == MAP_FAILED)
        die("mmap %s: %s", path, strerror(errno));
    close(fd);
    for (int p = 0; p < FWRITTEN; p++)
        memset(file_region + (size_t)p * PAGE, file_expected(0, p), PAGE);
    req = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (req == MAP_FAILED)
        die("mmap: %s", strerror(errno));
    if (pipe(info_pipe) != 0)
        die("pipe: %s", strerror(errno));
    k_pid = fork_dying_child();
    if (k_pid == 0)
        body_k();
    if (read(info_pipe[0], &g_pid, sizeof g_pid) != sizeof g_pid)
        die("read: %s", strerror(errno));
    close(info_pipe[0]);
    close(info_pipe[1]);
    char info[64];
    snprintf(info, sizeof info, "K %d\nG %d\n", (int)k_pid, (int)g_pid);
    ctl_write_file(argv[1], "info", info);
    ctl_loop((struct ctl_loop){.log_fd = log_fd, .period_ms = 20, .verify = verify, .child = k_pid});
}
