/*
 * refused: a crest test victim made of two processes that each hold several things crest
 * refuses: an io_uring instance, a mapping of a deleted file, and an fd of a deleted file (the
 * deleted files are refused when the test's --ghost-limit is below their data). A dump must name
 * every one of them, of both processes, in one refusal, and leave both running.
 *
 *   parent (started by the harness; logs "pid=P n=N" to LOG_FILE, answers verify requests)
 *   `-- child (logs "pid=C n=N" to CTL/child-log; dies with its parent, PR_SET_PDEATHSIG)
 *
 * Each process makes its own objects after the fork, at fds above 100 so the test knows them:
 * fd 101 an io_uring instance (idle), fd 102 a file that was unlinked (holding "deleted-file-data"),
 * and a shared mapping of another file that was unlinked ("mapped-TAG", then closed, so only
 * the mapping keeps it), and a private mapping (MAP_PRIVATE through /proc/self/map_files) of a
 * shared anonymous area's object, which shows what the shared area held (the shared area is
 * unmapped afterwards, so nothing in the tree shares the object any more). Every tick each process checks its objects; the child exits with status 3 if one
 * changed, the parent reports it on verify.
 *
 * CTL/info: "child PID\nmapped ADDR\nprivshm ADDR\n" (the child's pid and the parent's mapping
 * addresses; the child writes its own CTL/child-info "mapped ADDR\nprivshm ADDR\n").
 *
 * usage: refused CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <signal.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#define EVENTFD_FD 101
#define DELETED_FD 102
static const char deleted_data[] = "deleted-file-data";
static char *map, *shm, *privshm;
static long page;

static void move_fd(int fd, int to, const char *what)
{
    if (fd < 0)
        die("%s: %s", what, strerror(errno));
    if (dup3(fd, to, O_CLOEXEC) != to)
        die("dup3 %s: %s", what, strerror(errno));
    close(fd);
}

/* Makes this process's objects; `tag` tells the files of the two processes apart. */
static void make_objects(const char *tag)
{
    /* struct io_uring_params: 120 bytes, zeroed. */
    unsigned char params[120] = {0};
    move_fd((int)syscall(__NR_io_uring_setup, 4, params), EVENTFD_FD, "io_uring_setup");

    char path[64];
    snprintf(path, sizeof path, "deleted-%s", tag);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        die("create %s: %s", path, strerror(errno));
    write_all(fd, deleted_data, sizeof deleted_data, path);
    if (unlink(path) != 0)
        die("unlink %s: %s", path, strerror(errno));
    move_fd(fd, DELETED_FD, "deleted file");

    snprintf(path, sizeof path, "mapped-%s", tag);
    int mfd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (mfd < 0 || ftruncate(mfd, page) != 0)
        die("create %s: %s", path, strerror(errno));
    map = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (map == MAP_FAILED)
        die("mmap %s: %s", path, strerror(errno));
    close(mfd);
    if (unlink(path) != 0)
        die("unlink %s: %s", path, strerror(errno));
    snprintf(map, page, "mapping of %s", tag);

    shm = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shm == MAP_FAILED)
        die("mmap shared anonymous: %s", strerror(errno));
    snprintf(path, sizeof path, "/proc/self/map_files/%lx-%lx", (unsigned long)shm,
             (unsigned long)shm + (unsigned long)page);
    int sfd = open(path, O_RDONLY | O_CLOEXEC);
    if (sfd < 0)
        die("open %s: %s", path, strerror(errno));
    privshm = mmap(NULL, page, PROT_READ, MAP_PRIVATE, sfd, 0);
    if (privshm == MAP_FAILED)
        die("mmap %s privately: %s", path, strerror(errno));
    close(sfd);
    snprintf(shm, page, "shared area of %s", tag);
    /* Only the private view keeps the object now: its content cannot be dumped. */
    if (munmap(shm, page) != 0)
        die("munmap shared anonymous: %s", strerror(errno));
}

static void check_objects(const char *tag)
{
    char link[64], want_link[] = "anon_inode:[io_uring]";
    ssize_t n = readlink("/proc/self/fd/101", link, sizeof link);
    if (n != (ssize_t)strlen(want_link) || memcmp(link, want_link, (size_t)n) != 0)
        fail("fd 101 is no longer the io_uring instance");
    char buf[sizeof deleted_data];
    if (pread(DELETED_FD, buf, sizeof buf, 0) != sizeof buf || memcmp(buf, deleted_data, sizeof buf))
        fail("the deleted file's content changed");
    char want[64];
    snprintf(want, sizeof want, "mapping of %s", tag);
    if (strcmp(map, want) != 0)
        fail("the deleted file's mapping holds '%.40s', want '%s'", map, want);
    snprintf(want, sizeof want, "shared area of %s", tag);
    if (strcmp(privshm, want) != 0)
        fail("the private mapping of the shared area holds '%.40s', want '%s'", privshm, want);
}

static pid_t child;

static void check_parent(void)
{
    check_objects("parent");
    int status;
    if (waitpid(child, &status, WNOHANG) != 0)
        fail("the child %d has ended", (int)child);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_init(argv[1]);
    page = sysconf(_SC_PAGESIZE);
    child = fork_dying_child();
    if (child == 0) {
        char path[CTL_PATH_MAX];
        snprintf(path, sizeof path, "%s/child-log", argv[1]);
        int log_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (log_fd < 0)
            die("cannot open %s: %s", path, strerror(errno));
        make_objects("child");
        char info[96];
        snprintf(info, sizeof info, "mapped %p\nprivshm %p\n", (void *)map, (void *)privshm);
        ctl_write_file(argv[1], "child-info", info);
        for (unsigned long long n = 1;; n++) {
            log_tick(log_fd, n);
            check_objects("child");
            child_exit_on_failure();
            sleep_ms(20);
        }
    }

    int log_fd = log_open(argv[2]);
    make_objects("parent");
    char info[128];
    snprintf(info, sizeof info, "child %d\nmapped %p\nprivshm %p\n", (int)child, (void *)map,
             (void *)privshm);
    ctl_write_file(argv[1], "info", info);
    ctl_loop((struct ctl_loop){
        .log_fd = log_fd, .period_ms = 20, .verify = check_parent, .child = child});
}
