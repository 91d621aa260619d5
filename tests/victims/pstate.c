/*
 * pstate: a crest test victim for per-process settings that are neither memory contents, files
 * nor signals. Single-threaded. At start it sets:
 *
 *   oom_score_adj   500 (raising needs no privilege)
 *   loginuid        4242, when it had none (taking a first login uid needs no privilege);
 *                   otherwise it keeps what it has
 *   prctl           PR_SET_THP_DISABLE 1, PR_SET_TIMERSLACK 123456 ns, PR_MCE_KILL early
 *   membarrier      every MEMBARRIER_CMD_REGISTER_* command the kernel has (GLOBAL_EXPEDITED,
 *                   PRIVATE_EXPEDITED, its SYNC_CORE and RSEQ variants)
 *   scheduling      nice 7, CPU affinity to the highest CPU it may use
 *   mappings        "advised": 8 pages, MADV_SEQUENTIAL, DONTFORK, DONTDUMP, HUGEPAGE,
 *                   MERGEABLE and WIPEONFORK (six advices: more than the restorer used to
 *                   carry); "random": MADV_RANDOM and NOHUGEPAGE; "onfault": mlock2
 *                   MLOCK_ONFAULT; "sealed": mseal(2) (when the kernel has it); each filled
 *                   with a pattern
 *   named memory    when the kernel names anonymous memory (CONFIG_ANON_VMA_NAME): 2 private
 *                   anonymous pages named "crest private" and 1 shared anonymous page named
 *                   "crest shared" with PR_SET_VMA_ANON_NAME (info: names 1), both filled
 *   shared files    CWD/shared.dat mapped MAP_SHARED read-write; CWD/shared-ro.dat mapped
 *                   MAP_SHARED read-write and then mprotect'ed read-only (smaps `mw`)
 *   O_PATH fd       CWD/opath-target opened O_PATH
 *   guarded         4 pages; the middle two made guard regions (MADV_GUARD_INSTALL, when the
 *                   kernel has it), the outer two filled with a pattern: the guards must
 *                   still fault (a write(2) from them to a pipe fails with EFAULT) and the
 *                   pattern hold
 *   droppable       2 pages MAP_DROPPABLE (when the kernel has it) filled with a pattern; each
 *                   page must read back as the pattern or as zeros (the kernel, or a restore,
 *                   may drop it), with VmFlags `dp`
 *
 * On a verify request it checks all of that from the inside (reading back each setting, the
 * smaps VmFlags of each mapping, the patterns, the O_PATH fd's flags and inode), then writes
 * the counter into the first 8 bytes of both shared files through their mappings (the
 * read-only one made writable for the write and read-only again), so the test can see the
 * files change. It writes CTL_DIR/info ("key value" lines) at start.
 *
 * usage: pstate CTL_DIR LOG_FILE [--mdwe|--sud]
 *   --mdwe also sets PR_SET_MDWE, which crest refuses;
 *   --sud turns on syscall user dispatch (PR_SET_SYSCALL_USER_DISPATCH) with a selector byte
 *   that lets every syscall through, which crest refuses too.
 */
#include "victim.h"

#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#define OOM_ADJ 500
#define LOGINUID 4242u
#define SLACK_NS 123456UL
#define NICE 7
#define ADVISED_PAGES 8

#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif
#define MB_GET_REGISTRATIONS (1 << 9)
#define MB_REGISTER_GLOBAL_EXPEDITED (1 << 2)
#define MB_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE (1 << 6)
#define MB_REGISTER_PRIVATE_EXPEDITED_RSEQ (1 << 8)
#define MB_REGISTER_PRIVATE_EXPEDITED (1 << 4)
#define MB_QUERY 0
#define NR_MSEAL 462
#ifndef PR_SET_SYSCALL_USER_DISPATCH
#define PR_SET_SYSCALL_USER_DISPATCH 59
#define PR_SYS_DISPATCH_ON 1
#define SYSCALL_DISPATCH_FILTER_ALLOW 0
#endif
#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41
#define PR_SET_VMA_ANON_NAME 0
#endif

static long page;
/* The syscall user dispatch selector: ALLOW, so dispatch never actually diverts a syscall. */
static volatile char sud_selector = SYSCALL_DISPATCH_FILTER_ALLOW;
static unsigned loginuid_want;
static long membarrier_want;
static int cpu_want;
static int have_seal, have_names;
static char *advised, *randomized, *onfault, *sealed, *named, *named_shared, *droppable, *guarded;
static int have_guard;
#define MADV_GUARD_INSTALL_ 102
#define MAP_DROPPABLE_FLAG 0x08
static uint64_t *shared_rw, *shared_ro;
static int opath_fd;
static struct stat opath_st;

static long membarrier(int cmd) { return syscall(__NR_membarrier, cmd, 0, 0); }

static long read_long(const char *path)
{
    size_t len;
    char *text = read_file(path, &len);
    if (!text)
        return -1;
    text = realloc(text, len + 1);
    text[len] = 0;
    long v = strtol(text, NULL, 10);
    free(text);
    return v;
}

static unsigned long read_ulong(const char *path)
{
    size_t len;
    char *text = read_file(path, &len);
    if (!text)
        return 0;
    text = realloc(text, len + 1);
    text[len] = 0;
    unsigned long v = strtoul(text, NULL, 10);
    free(text);
    return v;
}

static void write_text(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
        die("cannot write %s to %s: %s", text, path, strerror(errno));
    close(fd);
}

static char *map_anon(size_t pages, const char *what)
{
    char *p = mmap(NULL, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap %s: %s", what, strerror(errno));
    for (size_t i = 0; i < pages * page; i++)
        p[i] = (char)(i * 7 + (uintptr_t)what[0]);
    return p;
}

/* Each page of a droppable mapping: the pattern map_anon wrote, or all zeros. */
static void check_dropped_or_pattern(const char *p, size_t pages, const char *what)
{
    for (size_t pg = 0; pg < pages; pg++) {
        const char *q = p + pg * page;
        int zero = 1, pattern = 1;
        for (size_t i = 0; i < (size_t)page; i++) {
            size_t off = pg * page + i;
            zero &= q[i] == 0;
            pattern &= q[i] == (char)(off * 7 + (uintptr_t)what[0]);
        }
        if (!zero && !pattern)
            fail("%s: page %zu is neither its pattern nor dropped", what, pg);
    }
}

static void check_pattern(const char *p, size_t pages, const char *what)
{
    for (size_t i = 0; i < pages * page; i++)
        if (p[i] != (char)(i * 7 + (uintptr_t)what[0])) {
            fail("%s: byte %zu changed", what, i);
            return;
        }
}

static uint64_t *map_shared_file(const char *name, int prot_after)
{
    int fd = open(name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || ftruncate(fd, page) != 0)
        die("create %s: %s", name, strerror(errno));
    uint64_t *p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        die("mmap %s: %s", name, strerror(errno));
    close(fd);
    p[0] = 0;
    if (prot_after != (PROT_READ | PROT_WRITE) && mprotect(p, page, prot_after) != 0)
        die("mprotect %s: %s", name, strerror(errno));
    return p;
}

/* The VmFlags line of the smaps entry containing `addr` must hold every code of `want`. */
static void check_vmflags(const void *addr, const char *want, const char *what)
{
    size_t len;
    char *smaps = read_file("/proc/self/smaps", &len);
    if (!smaps) {
        fail("cannot read /proc/self/smaps: %s", strerror(errno));
        return;
    }
    smaps = realloc(smaps, len + 1);
    smaps[len] = 0;
    unsigned long a = (unsigned long)addr;
    int inside = 0, found = 0;
    for (char *line = smaps; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        unsigned long start, end;
        if (sscanf(line, "%lx-%lx ", &start, &end) == 2 && strchr(line, ' ') &&
            line[strcspn(line, " ")] == ' ' && strchr(line, '-') < strchr(line, ' '))
            inside = start <= a && a < end;
        else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
            found = 1;
            char codes[64];
            snprintf(codes, sizeof codes, "%s", want);
            for (char *c = strtok(codes, " "); c; c = strtok(NULL, " ")) {
                char needle[8];
                snprintf(needle, sizeof needle, " %s", c);
                if (!strstr(line + 8, needle))
                    fail("%s at %p lacks VmFlags `%s`: '%s'", what, addr, c, line);
            }
            break;
        }
        line = nl ? nl + 1 : NULL;
    }
    if (!found)
        fail("%s: no smaps entry contains %p", what, addr);
    free(smaps);
}

static void verify(unsigned long long counter)
{
    long oom = read_long("/proc/self/oom_score_adj");
    if (oom != OOM_ADJ)
        fail("oom_score_adj is %ld, want %d", oom, OOM_ADJ);
    unsigned long luid = read_ulong("/proc/self/loginuid");
    if (luid != loginuid_want)
        fail("loginuid is %lu, want %u", luid, loginuid_want);
    int thp = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
    if (thp != 1)
        fail("PR_GET_THP_DISABLE is %d, want 1", thp);
    int slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    if (slack != (int)SLACK_NS)
        fail("PR_GET_TIMERSLACK is %d, want %lu", slack, SLACK_NS);
    int mce = prctl(PR_MCE_KILL_GET, 0, 0, 0, 0);
    if (mce != PR_MCE_KILL_EARLY)
        fail("PR_MCE_KILL_GET is %d, want early", mce);
    long mb = membarrier(MB_GET_REGISTRATIONS);
    if (membarrier_want >= 0 && mb != membarrier_want)
        fail("membarrier registrations %#lx, want %#lx", mb, membarrier_want);
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, 0);
    if (nice != NICE || errno)
        fail("nice is %d, want %d", nice, NICE);
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0 || CPU_COUNT(&set) != 1 ||
        !CPU_ISSET(cpu_want, &set))
        fail("CPU affinity is not CPU %d alone (%d CPUs)", cpu_want, CPU_COUNT(&set));

    check_vmflags(advised, "sr dc dd hg mg wf", "advised mapping");
    check_vmflags(randomized, "rr nh", "random mapping");
    check_vmflags(onfault, "lo lf", "lock-on-fault mapping");
    if (have_seal)
        check_vmflags(sealed, "sl", "sealed mapping");
    check_pattern(advised, ADVISED_PAGES, "advised");
    check_pattern(randomized, 2, "random");
    check_pattern(onfault, 2, "onfault");
    if (have_seal)
        check_pattern(sealed, 1, "sealed");
    if (have_names) {
        check_pattern(named, 2, "named");
        check_pattern(named_shared, 1, "shared named");
    }
    if (have_guard) {
        check_pattern(guarded, 1, "guarded");
        if (guarded[3 * page] != (char)(3 * page * 7 + 'g'))
            fail("guarded: the last page lost its pattern");
        /* A pipe copies from the buffer (unlike /dev/null): EFAULT on a guard region. */
        int gp[2];
        if (pipe2(gp, O_CLOEXEC | O_NONBLOCK) != 0)
            fail("pipe2: %s", strerror(errno));
        else {
            for (int i = 1; i <= 2; i++) {
                errno = 0;
                if (write(gp[1], guarded + i * page, 1) != -1 || errno != EFAULT)
                    fail("guarded: page %d is readable, it is no guard region any more", i);
            }
            close(gp[0]);
            close(gp[1]);
        }
    }
    if (droppable) {
        check_vmflags(droppable, "dp", "droppable mapping");
        check_dropped_or_pattern(droppable, 2, "droppable");
    }
    check_vma_perms(shared_rw, "rw-s", "shared.dat mapping");
    check_vma_perms(shared_ro, "r--s", "shared-ro.dat mapping");
    check_vmflags(shared_ro, "mw", "shared-ro.dat mapping");

    int fl = fcntl(opath_fd, F_GETFL);
    struct stat st;
    if (fl < 0 || !(fl & O_PATH))
        fail("fd %d is not O_PATH (flags %#x): %s", opath_fd, fl, strerror(errno));
    else if (fstat(opath_fd, &st) != 0 || st.st_ino != opath_st.st_ino ||
             st.st_dev != opath_st.st_dev)
        fail("O_PATH fd %d names another file", opath_fd);

    if (fail_msg[0])
        return;
    shared_rw[0] = counter;
    if (mprotect(shared_ro, page, PROT_READ | PROT_WRITE) != 0) {
        fail("mprotect shared-ro.dat writable: %s", strerror(errno));
        return;
    }
    shared_ro[0] = counter;
    if (mprotect(shared_ro, page, PROT_READ) != 0)
        fail("mprotect shared-ro.dat back to read-only: %s", strerror(errno));
    if (msync(shared_rw, page, MS_SYNC) != 0 || msync(shared_ro, page, MS_SYNC) != 0)
        fail("msync: %s", strerror(errno));
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE [--mdwe]", argv[0]);
    ctl_init(argv[1]);
    page = sysconf(_SC_PAGESIZE);
    int log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0)
        die("cannot open log %s: %s", argv[2], strerror(errno));

    write_text("/proc/self/oom_score_adj", "500");
    loginuid_want = (unsigned)read_ulong("/proc/self/loginuid");
    if (loginuid_want == 4294967295u) {
        write_text("/proc/self/loginuid", "4242");
        loginuid_want = LOGINUID;
    }
    if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_TIMERSLACK, SLACK_NS, 0, 0, 0) != 0 ||
        prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0) != 0)
        die("prctl: %s", strerror(errno));
    membarrier_want = -1;
    long supported = membarrier(MB_QUERY);
    if (supported > 0 && membarrier(MB_GET_REGISTRATIONS) >= 0) {
        /* Every registration the kernel offers (all four: what zdtm's membarrier test does). */
        int regs[] = {MB_REGISTER_GLOBAL_EXPEDITED, MB_REGISTER_PRIVATE_EXPEDITED,
                      MB_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE, MB_REGISTER_PRIVATE_EXPEDITED_RSEQ};
        for (size_t i = 0; i < sizeof regs / sizeof regs[0]; i++)
            if ((supported & regs[i]) && membarrier(regs[i]) != 0)
                die("membarrier register %#x: %s", regs[i], strerror(errno));
        membarrier_want = membarrier(MB_GET_REGISTRATIONS);
    }
    if (setpriority(PRIO_PROCESS, 0, NICE) != 0)
        die("setpriority: %s", strerror(errno));
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0)
        die("sched_getaffinity: %s", strerror(errno));
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &set))
            cpu_want = c;
    CPU_ZERO(&set);
    CPU_SET(cpu_want, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
        die("sched_setaffinity: %s", strerror(errno));

    advised = map_anon(ADVISED_PAGES, "advised");
    int advices[] = {MADV_SEQUENTIAL, MADV_DONTFORK,  MADV_DONTDUMP,
                     MADV_HUGEPAGE,   MADV_MERGEABLE, MADV_WIPEONFORK};
    for (size_t i = 0; i < sizeof advices / sizeof advices[0]; i++)
        if (madvise(advised, ADVISED_PAGES * page, advices[i]) != 0)
            die("madvise %d: %s", advices[i], strerror(errno));
    randomized = map_anon(2, "random");
    if (madvise(randomized, 2 * page, MADV_RANDOM) != 0 ||
        madvise(randomized, 2 * page, MADV_NOHUGEPAGE) != 0)
        die("madvise random: %s", strerror(errno));
    onfault = map_anon(2, "onfault");
    if (syscall(__NR_mlock2, onfault, 2 * page, MLOCK_ONFAULT) != 0)
        die("mlock2: %s", strerror(errno));
    sealed = map_anon(1, "sealed");
    have_seal = syscall(NR_MSEAL, sealed, page, 0) == 0;
    named = map_anon(2, "named");
    have_names = prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, named, 2 * page, "crest private") == 0;
    if (have_names) {
        named_shared = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (named_shared == MAP_FAILED)
            die("mmap shared named: %s", strerror(errno));
        for (long i = 0; i < page; i++)
            named_shared[i] = (char)(i * 7 + 's');
        if (prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, named_shared, page, "crest shared") != 0)
            die("naming shared anonymous memory: %s", strerror(errno));
    }

    guarded = map_anon(4, "guarded");
    have_guard = madvise(guarded + page, 2 * page, MADV_GUARD_INSTALL_) == 0;

    droppable = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_DROPPABLE_FLAG | MAP_ANONYMOUS,
                     -1, 0);
    if (droppable == MAP_FAILED)
        droppable = NULL;
    else
        for (size_t i = 0; i < 2 * (size_t)page; i++)
            droppable[i] = (char)(i * 7 + (uintptr_t)'d');

    shared_rw = map_shared_file("shared.dat", PROT_READ | PROT_WRITE);
    shared_ro = map_shared_file("shared-ro.dat", PROT_READ);
    int tfd = open("opath-target", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (tfd < 0)
        die("create opath-target: %s", strerror(errno));
    close(tfd);
    opath_fd = open("opath-target", O_PATH);
    if (opath_fd < 0 || fstat(opath_fd, &opath_st) != 0)
        die("open O_PATH: %s", strerror(errno));

    if (argc > 3 && strcmp(argv[3], "--mdwe") == 0 && prctl(PR_SET_MDWE, 1, 0, 0, 0) != 0)
        die("PR_SET_MDWE: %s", strerror(errno));
    if (argc > 3 && strcmp(argv[3], "--sud") == 0 &&
        prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_ON, 0, 0, &sud_selector) != 0)
        die("PR_SET_SYSCALL_USER_DISPATCH: %s", strerror(errno));

    char info[512], info_path[CTL_PATH_MAX], info_tmp[CTL_PATH_MAX];
    int n = snprintf(info, sizeof info,
                     "loginuid %u\nmembarrier %ld\ncpu %d\nsealed %d\nopath_fd %d\nnames %d\n"
                     "droppable %lu\nguarded %lu\n",
                     loginuid_want, membarrier_want, cpu_want, have_seal, opath_fd, have_names,
                     (unsigned long)(uintptr_t)droppable,
                     have_guard ? (unsigned long)(uintptr_t)guarded : 0UL);
    snprintf(info_path, sizeof info_path, "%s/info", argv[1]);
    snprintf(info_tmp, sizeof info_tmp, "%s/info.tmp", argv[1]);
    int ifd = open(info_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (ifd < 0)
        die("create %s: %s", info_tmp, strerror(errno));
    write_all(ifd, info, (size_t)n, info_tmp);
    close(ifd);
    if (rename(info_tmp, info_path) != 0)
        die("rename %s: %s", info_tmp, strerror(errno));

    char line[128];
    unsigned long long counter = 0;
    for (;;) {
        sleep_ms(20);
        counter++;
        n = snprintf(line, sizeof line, "pid=%d n=%llu\n", (int)getpid(), counter);
        write_all(log_fd, line, (size_t)n, "log");
        if (ctl_verify_requested()) {
            verify(counter);
            ctl_report(counter);
        }
        int code = ctl_exit_requested();
        if (code >= 0)
            exit(code);
    }
}
