/*
 * memfd: a crest test victim holding memfds of every kind crest dumps, shared with a child.
 *
 *   parent (started by the harness; logs "pid=P n=N" to LOG_FILE, answers verify requests)
 *   `-- child (dies with its parent, PR_SET_PDEATHSIG; exits 3 if something it checks changed)
 *
 * fd 100: memfd "crest-sealed", made with MFD_ALLOW_SEALING: a pattern in pages 0 and 2,
 *         page 1 never written (a hole), size 3 pages + 100 bytes, sealed with
 *         F_SEAL_SHRINK|F_SEAL_GROW, file offset 123. The parent's only.
 * fd 101: memfd "crest-shared" (no MFD_ALLOW_SEALING: its seals are F_SEAL_SEAL), 2 pages,
 *         also mapped MAP_SHARED at `shared`; fd and mapping inherited by the child. The child
 *         echoes the word the parent writes at shared[0] into shared[1] and counts its ticks in
 *         shared[2]; the parent writes page 1 through the fd and reads it through the mapping.
 * a MAP_PRIVATE mapping of memfd "crest-private" (its fd closed): the memfd holds "file
 *         content" in pages 0 and 1; the process changed page 0 of its mapping privately.
 *
 * CTL/info: "child PID\n".
 *
 * usage: memfd CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define SEALED_FD 100
#define SHARED_FD 101
#define EXEC_FD 102

static long page;
static volatile uint64_t *shared;
static char *private_map;
static pid_t child;

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

static void check_link(int fd, const char *want)
{
    char path[64], got[256];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(path, got, sizeof got - 1);
    if (len < 0) {
        fail("readlink %s: %s", path, strerror(errno));
        return;
    }
    got[len] = 0;
    if (strcmp(got, want) != 0)
        fail("fd %d is '%s', want '%s'", fd, got, want);
}

/* The /proc/self/maps line of the mapping at `addr` names `want` and inode `ino` (0: any). */
static void check_map(const void *addr, const char *want, ino_t ino)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) {
        fail("open maps: %s", strerror(errno));
        return;
    }
    char line[512];
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long start, end, inode;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s %*s %*s %lu", &start, &end, perms, &inode) != 4)
            continue;
        if (start != (unsigned long)addr)
            continue;
        found = 1;
        if (!strstr(line, want))
            fail("the mapping at %p is '%s', want '%s'", addr, line, want);
        if (ino && inode != ino)
            fail("the mapping at %p maps inode %lu, the fd inode %lu", addr, inode,
                 (unsigned long)ino);
    }
    fclose(f);
    if (!found)
        fail("no mapping at %p", addr);
}

static void check_common(void)
{
    struct stat st;
    check_link(SHARED_FD, "/memfd:crest-shared (deleted)");
    if (fstat(SHARED_FD, &st) != 0 || st.st_size != 2 * page)
        fail("crest-shared has size %lld", (long long)st.st_size);
    if (fcntl(SHARED_FD, F_GET_SEALS) != F_SEAL_SEAL)
        fail("crest-shared has seals %#x", fcntl(SHARED_FD, F_GET_SEALS));
    check_map((const void *)shared, "/memfd:crest-shared (deleted)", st.st_ino);
}

static void check_parent(void)
{
    struct stat st;
    char buf[65536], want[65536]; /* a page: 4K, 16K or 64K */
    check_link(SEALED_FD, "/memfd:crest-sealed (deleted)");
    if (fstat(SEALED_FD, &st) != 0 || st.st_size != 3 * page + 100)
        fail("crest-sealed has size %lld", (long long)st.st_size);
    int seals = fcntl(SEALED_FD, F_GET_SEALS);
    if (seals != (F_SEAL_SHRINK | F_SEAL_GROW))
        fail("crest-sealed has seals %#x", seals);
    if (lseek(SEALED_FD, 0, SEEK_CUR) != 123)
        fail("crest-sealed is at offset %lld", (long long)lseek(SEALED_FD, 0, SEEK_CUR));
    if (ftruncate(SEALED_FD, page) == 0)
        fail("crest-sealed could be shrunk");
    for (int p = 0; p < 3; p++) {
        if (pread(SEALED_FD, buf, (size_t)page, p * page) != page) {
            fail("read page %d of crest-sealed: %s", p, strerror(errno));
            continue;
        }
        if (p == 1)
            memset(want, 0, (size_t)page);
        else
            pattern(want, p);
        if (memcmp(buf, want, (size_t)page) != 0)
            fail("page %d of crest-sealed changed", p);
    }
    if (pread(SEALED_FD, buf, 200, 3 * page) != 100)
        fail("the tail of crest-sealed is not 100 bytes");
    check_common();

    /* The fd and the mapping are one object, shared with the child. */
    check_fd_and_child_echo(SHARED_FD, shared, page, "crest-shared");

    if (memcmp(private_map, "private change", 15) != 0)
        fail("the private mapping lost its change");
    if (memcmp(private_map + page, "file content", 13) != 0)
        fail("the private mapping's unchanged page does not show the memfd");
    check_map(private_map, "/memfd:crest-private (deleted)", 0);
    int status;
    if (waitpid(child, &status, WNOHANG) != 0)
        fail("the child %d has ended", (int)child);

    /* A memfd holding a script can be executed (a read-write reopen of it would make exec
     * fail with ETXTBSY). */
    pid_t runner = fork();
    if (runner == 0) {
        static char *const argv_[] = {"true", NULL};
        static char *const envp_[] = {NULL};
        syscall(SYS_execveat, EXEC_FD, "", argv_, envp_, AT_EMPTY_PATH);
        _exit(100 + errno);
    }
    if (runner < 0 || waitpid(runner, &status, 0) != runner || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0)
        fail("executing the crest-exec memfd failed (status %#x)", status);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_init(argv[1]);
    page = sysconf(_SC_PAGESIZE);
    char buf[65536];

    move_fd(memfd_create("crest-sealed", MFD_ALLOW_SEALING), SEALED_FD, "memfd sealed");
    if (ftruncate(SEALED_FD, 3 * page + 100) != 0)
        die("ftruncate: %s", strerror(errno));
    for (int p = 0; p < 3; p += 2) {
        pattern(buf, p);
        if (pwrite(SEALED_FD, buf, (size_t)page, p * page) != page)
            die("pwrite: %s", strerror(errno));
    }
    if (fcntl(SEALED_FD, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0)
        die("F_ADD_SEALS: %s", strerror(errno));
    lseek(SEALED_FD, 123, SEEK_SET);

    move_fd(memfd_create("crest-shared", 0), SHARED_FD, "memfd shared");
    if (ftruncate(SHARED_FD, 2 * page) != 0)
        die("ftruncate: %s", strerror(errno));
    shared = mmap(NULL, (size_t)(2 * page), PROT_READ | PROT_WRITE, MAP_SHARED, SHARED_FD, 0);
    if (shared == MAP_FAILED)
        die("mmap shared: %s", strerror(errno));

    int pfd = memfd_create("crest-private", MFD_CLOEXEC);
    if (pfd < 0 || ftruncate(pfd, 2 * page) != 0)
        die("memfd private: %s", strerror(errno));
    if (pwrite(pfd, "file content", 13, 0) != 13 || pwrite(pfd, "file content", 13, page) != 13)
        die("pwrite private: %s", strerror(errno));
    private_map = mmap(NULL, (size_t)(2 * page), PROT_READ | PROT_WRITE, MAP_PRIVATE, pfd, 0);
    if (private_map == MAP_FAILED)
        die("mmap private: %s", strerror(errno));
    close(pfd);
    memcpy(private_map, "private change", 15);

    move_fd(memfd_create("crest-exec", 0), EXEC_FD, "memfd exec");
    if (write(EXEC_FD, "#!/bin/true\n", 12) != 12)
        die("write crest-exec: %s", strerror(errno));
    if (fcntl(EXEC_FD, F_SETFD, 0) != 0)
        die("F_SETFD: %s", strerror(errno));

    child = fork_dying_child();
    if (child == 0) {
        close(SEALED_FD);
        for (unsigned long n = 0;; n++) {
            shared[1] = shared[0];
            shared[2]++;
            if (n % 100 == 0) {
                check_common();
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
