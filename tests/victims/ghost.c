/*
 * ghost: a crest test victim holding unlinked ("ghost") files and directories, shared with a
 * child.
 *
 *   parent (started by the harness; logs "pid=P n=N" to LOG_FILE, answers verify requests)
 *   `-- child (dies with its parent, PR_SET_PDEATHSIG; exits 3 if something it checks changed)
 *
 * Everything is made in the victim's working directory (WORK), then unlinked:
 * fd 100: WORK/scratch, mode 0640, owner 1234:5678, read-write at offset 12345: a pattern in
 *         page 0, another at 1 MiB, "the end" at 64 MiB (the rest holes: 64 MiB long, three
 *         pages of data); mapped MAP_SHARED (pages 0-1, `shared`) and MAP_PRIVATE (the page at
 *         1 MiB, changed privately). Fd (one description) and mappings inherited by the child,
 *         which echoes the word the parent writes at shared[0] into shared[1]; the parent
 *         writes page 1 through the fd and reads it through the mapping.
 * fd 101: WORK/linked-a, a hard link of WORK/linked-b, unlinked under its first name only
 *         (st_nlink 1): a restore reopens it through linked-b. The parent's only.
 * fd 102: WORK/gonedir, a removed directory. The parent's only.
 * fd 103: a file made with O_TMPFILE in WORK (never had a name; its description keeps the
 *         O_TMPFILE flag), holding "tmpfile data", at offset 5. The parent's only.
 * fd 104: WORK/nulldev, a character device node for /dev/null's device (1:3), mode 0620,
 *         open read-write, then removed. The parent's only.
 * the child's working directory: WORK/childcwd, removed.
 * a MAP_PRIVATE mapping of WORK/mapped-only (fd closed, unlinked): "file content" in pages 0
 *         and 1, page 0 changed privately.
 *
 * Every check also asserts the files are still unlinked (st_nlink 0).
 * CTL/info: "child PID\n".
 *
 * usage: ghost CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#define SCRATCH_FD 100
#define LINKED_FD 101
#define DIR_FD 102
#define TMPFILE_FD 103
#define DEVNODE_FD 104
#define BIG (64L << 20)
#define MIB (1L << 20)

static long page;
static volatile uint64_t *shared;
static char *private_map, *mapped_only;
static pid_t child;
static char work[2048];

static void move_fd(int fd, int to, const char *what)
{
    if (fd < 0)
        die("%s: %s", what, strerror(errno));
    if (dup3(fd, to, 0) != to)
        die("dup3 %s: %s", what, strerror(errno));
    close(fd);
}

static void pattern(char *buf, int n)
{
    for (long i = 0; i < page; i++)
        buf[i] = (char)('a' + (i * 7 + n) % 26);
}

static void check_link(const char *link, const char *name, const char *suffix)
{
    char got[4096], want[4096];
    ssize_t len = readlink(link, got, sizeof got - 1);
    if (len < 0) {
        fail("readlink %s: %s", link, strerror(errno));
        return;
    }
    got[len] = 0;
    snprintf(want, sizeof want, "%s/%s%s", work, name, suffix);
    if (strcmp(got, want) != 0)
        fail("%s is '%s', want '%s'", link, got, want);
}

static void check_fd_link(int fd, const char *name, const char *suffix)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    check_link(link, name, suffix);
}

/* The /proc/self/maps line of the mapping at `addr` ends with WORK/name (deleted). */
static void check_map(const void *addr, const char *name)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) {
        fail("open maps: %s", strerror(errno));
        return;
    }
    char line[4096], want[4096];
    snprintf(want, sizeof want, "%s/%s (deleted)\n", work, name);
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long start;
        if (sscanf(line, "%lx-", &start) != 1 || start != (unsigned long)addr)
            continue;
        found = 1;
        size_t n = strlen(line), w = strlen(want);
        if (n < w || strcmp(line + n - w, want) != 0)
            fail("the mapping at %p is '%s', want '... %s'", addr, line, want);
    }
    fclose(f);
    if (!found)
        fail("no mapping at %p", addr);
}

static void check_unlinked(int fd, const char *what, int dir)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        fail("fstat %s: %s", what, strerror(errno));
        return;
    }
    if (st.st_nlink != 0)
        fail("%s has %lu links, want 0 (unlinked)", what, (unsigned long)st.st_nlink);
    if (dir != !!S_ISDIR(st.st_mode))
        fail("%s has mode %o", what, st.st_mode);
}

/* What the parent and the child both check (no read through the fd, which would change the
 * atime the test compares). */
static void check_common(void)
{
    struct stat st;
    check_fd_link(SCRATCH_FD, "scratch", " (deleted)");
    check_unlinked(SCRATCH_FD, "scratch", 0);
    if (fstat(SCRATCH_FD, &st) == 0) {
        if (st.st_size != BIG + 7)
            fail("scratch has size %lld", (long long)st.st_size);
        if ((st.st_mode & 07777) != 0640 || st.st_uid != 1234 || st.st_gid != 5678)
            fail("scratch has mode %o owner %u:%u", st.st_mode & 07777, st.st_uid, st.st_gid);
    }
    check_map((const void *)shared, "scratch");
    check_map(private_map, "scratch");
    check_map(mapped_only, "mapped-only");
    char want[65536]; /* a page: 4K, 16K or 64K */
    pattern(want, 0);
    if (memcmp((const char *)shared + 64, want + 64, (size_t)page - 64) != 0)
        fail("page 0 of scratch changed (through the shared mapping)");
    if (memcmp(private_map, "private change", 15) != 0)
        fail("the private mapping of scratch lost its change");
    pattern(want, 1);
    if (memcmp(private_map + 15, want + 15, (size_t)page - 15) != 0)
        fail("the private mapping of scratch does not show the file under its change");
    if (memcmp(mapped_only, "changed", 8) != 0 || memcmp(mapped_only + page, "file content", 13))
        fail("the mapping of mapped-only changed");
    if (lseek(SCRATCH_FD, 0, SEEK_CUR) != 12345)
        fail("scratch is at offset %lld", (long long)lseek(SCRATCH_FD, 0, SEEK_CUR));
}

static void check_parent(void)
{
    char buf[65536], want[65536]; /* a page: 4K, 16K or 64K */
    check_common();
    /* The content, holes included. */
    if (pread(SCRATCH_FD, buf, (size_t)page, MIB) != page) {
        fail("read scratch at 1 MiB: %s", strerror(errno));
    } else {
        pattern(want, 1);
        if (memcmp(buf, want, (size_t)page) != 0)
            fail("the page of scratch at 1 MiB changed");
    }
    memset(want, 0, sizeof want);
    if (pread(SCRATCH_FD, buf, (size_t)page, 2 * MIB) != page || memcmp(buf, want, (size_t)page))
        fail("the hole of scratch at 2 MiB does not read as zeros");
    if (pread(SCRATCH_FD, buf, 100, BIG) != 7 || memcmp(buf, "the end", 7) != 0)
        fail("the tail of scratch is not 'the end'");
    /* A hole is still a hole (crest keeps holes); asked through a description of its own,
     * since SEEK_DATA moves the offset. */
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", SCRATCH_FD);
    int probe = open(self, O_RDONLY | O_CLOEXEC);
    off_t data = probe < 0 ? -1 : lseek(probe, 2 * page, SEEK_DATA);
    if (data < MIB)
        fail("scratch has data at %lld, inside its hole", (long long)data);
    if (probe >= 0)
        close(probe);

    /* Writes through the fd show in the shared mapping, also the child's. */
    check_fd_and_child_echo(SCRATCH_FD, shared, page, "scratch");

    /* The hard link: one inode with linked-b, not unlinked. */
    struct stat a, b;
    if (fstat(LINKED_FD, &a) != 0 || stat("linked-b", &b) != 0)
        fail("stat linked: %s", strerror(errno));
    else if (a.st_ino != b.st_ino || a.st_dev != b.st_dev || a.st_nlink != 1)
        fail("fd %d is inode %lu (%lu links), linked-b inode %lu", LINKED_FD,
             (unsigned long)a.st_ino, (unsigned long)a.st_nlink, (unsigned long)b.st_ino);
    if (pread(LINKED_FD, buf, 20, 0) != 12 || memcmp(buf, "linked data\n", 12) != 0)
        fail("the hard-linked file's content changed");
    if (lseek(LINKED_FD, 0, SEEK_CUR) != 7)
        fail("linked is at offset %lld", (long long)lseek(LINKED_FD, 0, SEEK_CUR));

    /* The removed directory. */
    check_fd_link(DIR_FD, "gonedir", " (deleted)");
    check_unlinked(DIR_FD, "gonedir", 1);
    if (openat(DIR_FD, "x", O_RDWR | O_CREAT | O_CLOEXEC, 0600) >= 0 || errno != ENOENT)
        fail("a file could be made in the removed directory (errno %d)", errno);

    /* The O_TMPFILE file. */
    check_unlinked(TMPFILE_FD, "the O_TMPFILE file", 0);
    if (pread(TMPFILE_FD, buf, 20, 0) != 12 || memcmp(buf, "tmpfile data", 12) != 0)
        fail("the O_TMPFILE file's content changed");
    if (lseek(TMPFILE_FD, 0, SEEK_CUR) != 5)
        fail("the O_TMPFILE file is at offset %lld", (long long)lseek(TMPFILE_FD, 0, SEEK_CUR));

    /* The removed device node: still /dev/null's device, mode and name. */
    struct stat dev;
    if (fstat(DEVNODE_FD, &dev) != 0 || !S_ISCHR(dev.st_mode) || dev.st_rdev != makedev(1, 3) ||
        (dev.st_mode & 07777) != 0620 || dev.st_nlink != 0)
        fail("fd %d is no longer the removed node of device 1:3, mode 0620", DEVNODE_FD);
    check_fd_link(DEVNODE_FD, "nulldev", " (deleted)");
    if (write(DEVNODE_FD, "x", 1) != 1 || read(DEVNODE_FD, buf, 1) != 0)
        fail("fd %d does not behave as /dev/null: %s", DEVNODE_FD, strerror(errno));

    int status;
    if (waitpid(child, &status, WNOHANG) != 0)
        fail("the child %d has ended", (int)child);
}

static void check_child(void)
{
    check_common();
    check_link("/proc/self/cwd", "childcwd", " (deleted)");
    struct stat st;
    if (stat(".", &st) != 0 || st.st_nlink != 0 || !S_ISDIR(st.st_mode))
        fail("the child's cwd is not a removed directory");
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_init(argv[1]);
    page = sysconf(_SC_PAGESIZE);
    if (!getcwd(work, sizeof work))
        die("getcwd: %s", strerror(errno));
    char buf[65536];

    move_fd(open("scratch", O_RDWR | O_CREAT | O_TRUNC, 0600), SCRATCH_FD, "scratch");
    pattern(buf, 0);
    if (pwrite(SCRATCH_FD, buf, (size_t)page, 0) != page)
        die("pwrite: %s", strerror(errno));
    pattern(buf, 1);
    if (pwrite(SCRATCH_FD, buf, (size_t)page, MIB) != page)
        die("pwrite: %s", strerror(errno));
    if (pwrite(SCRATCH_FD, "the end", 7, BIG) != 7)
        die("pwrite: %s", strerror(errno));
    if (fchown(SCRATCH_FD, 1234, 5678) != 0 || fchmod(SCRATCH_FD, 0640) != 0)
        die("fchown/fchmod: %s", strerror(errno));
    shared = mmap(NULL, (size_t)(2 * page), PROT_READ | PROT_WRITE, MAP_SHARED, SCRATCH_FD, 0);
    private_map = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE, SCRATCH_FD, MIB);
    if (shared == MAP_FAILED || private_map == MAP_FAILED)
        die("mmap scratch: %s", strerror(errno));
    memcpy(private_map, "private change", 15);
    lseek(SCRATCH_FD, 12345, SEEK_SET);
    if (unlink("scratch") != 0)
        die("unlink scratch: %s", strerror(errno));
    /* Known times, well in the past (atime before mtime: no relatime update on reads). */
    struct timespec times[2] = {{1000000000, 111}, {1100000000, 222}};
    if (futimens(SCRATCH_FD, times) != 0)
        die("futimens: %s", strerror(errno));

    int fd = open("linked-b", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, "linked data\n", 12) != 12)
        die("linked-b: %s", strerror(errno));
    close(fd);
    if (link("linked-b", "linked-a") != 0)
        die("link: %s", strerror(errno));
    move_fd(open("linked-a", O_RDWR), LINKED_FD, "linked-a");
    lseek(LINKED_FD, 7, SEEK_SET);
    if (unlink("linked-a") != 0)
        die("unlink linked-a: %s", strerror(errno));

    if (mkdir("gonedir", 0750) != 0)
        die("mkdir gonedir: %s", strerror(errno));
    move_fd(open("gonedir", O_RDONLY | O_DIRECTORY), DIR_FD, "gonedir");
    if (rmdir("gonedir") != 0)
        die("rmdir gonedir: %s", strerror(errno));

    move_fd(open(".", O_RDWR | O_TMPFILE, 0600), TMPFILE_FD, "O_TMPFILE");
    if (write(TMPFILE_FD, "tmpfile data", 12) != 12 || lseek(TMPFILE_FD, 5, SEEK_SET) != 5)
        die("write the O_TMPFILE file: %s", strerror(errno));

    if (mknod("nulldev", S_IFCHR | 0600, makedev(1, 3)) != 0 || chmod("nulldev", 0620) != 0)
        die("mknod nulldev: %s", strerror(errno));
    move_fd(open("nulldev", O_RDWR), DEVNODE_FD, "nulldev");
    if (unlink("nulldev") != 0)
        die("unlink nulldev: %s", strerror(errno));

    fd = open("mapped-only", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, 2 * page) != 0)
        die("mapped-only: %s", strerror(errno));
    if (pwrite(fd, "file content", 13, 0) != 13 || pwrite(fd, "file content", 13, page) != 13)
        die("pwrite mapped-only: %s", strerror(errno));
    mapped_only = mmap(NULL, (size_t)(2 * page), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (mapped_only == MAP_FAILED)
        die("mmap mapped-only: %s", strerror(errno));
    close(fd);
    if (unlink("mapped-only") != 0)
        die("unlink mapped-only: %s", strerror(errno));
    memcpy(mapped_only, "changed", 8);

    child = fork_dying_child();
    if (child == 0) {
        close(LINKED_FD);
        close(DIR_FD);
        close(TMPFILE_FD);
        close(DEVNODE_FD);
        if (mkdir("childcwd", 0700) != 0 || chdir("childcwd") != 0)
            die("childcwd: %s", strerror(errno));
        char gone[4096];
        snprintf(gone, sizeof gone, "%s/childcwd", work);
        if (rmdir(gone) != 0)
            die("rmdir childcwd: %s", strerror(errno));
        for (unsigned long n = 0;; n++) {
            shared[1] = shared[0];
            if (n % 100 == 0) {
                check_child();
                child_exit_on_failure();
            }
            sleep_ms(1);
        }
    }

    char info[64];
    snprintf(info, sizeof info, "child %d\n", (int)child);
    ctl_write_file(argv[1], "info", info);

    ctl_loop((struct ctl_loop){
        .log_fd = log_open(argv[2]), .period_ms = 20, .verify = check_parent, .child = child});
}
