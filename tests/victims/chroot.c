/*
 * Chrooted processes (tests/chroot.rs). Usage: chroot CTL_DIR LOG_FILE. WORK is CTL_DIR's
 * parent (the victim's working directory).
 *
 * The main process keeps crest's root. Its children, each checking itself on request (a byte
 * on its request pipe; it answers a fixed-size "ok" or "FAIL ..." record on its result pipe):
 *   A  chroot(WORK/jail), cwd /sub; holds fds to /sub/data (inside its root) and to
 *      WORK/outside (opened before the chroot, outside its root), and a UNIX listener bound
 *      to /sub/a.sock (WORK/jail/sub/a.sock), which it connects to again by that name;
 *   B  A's child: inherited A's root and cwd (A asks it in turn, on its own pipes);
 *   C  chroot(WORK/jail/inner) without chdir: its cwd (WORK) is outside its root; holds an fd
 *      to /c-data;
 *   D  chroot(WORK/gone), cwd /, holds a file it made there and unlinked; the main process
 *      then removes WORK/gone: D's root and cwd are a removed directory.
 * Each checks that its root ("/") and cwd (".") are the directories it had (by device and
 * inode; D: a removed directory, its cwd the same), reads its files through the fds, opens
 * them again by paths from its root, makes a new file by such a path (the main process checks
 * where it landed), and cannot reach the absolute path of WORK/outside.
 * Writes CTL_DIR/info: "child A", then "B PID", "C PID", "D PID".
 */
#include "victim.h"

#include <libgen.h>
#include <sys/socket.h>
#include <sys/un.h>

#define RECORD 640

struct child {
    const char *name;
    pid_t pid;
    int req, res; /* main's ends */
};

/* What a child expects of itself. */
struct spec {
    const char *name;
    struct stat root, cwd;
    int removed;          /* its root was removed: "/" is a directory without links */
    int fd_in;            /* a file inside its root ... */
    const char *in_path;  /* ... at this path from its root (NULL: none to reopen) */
    const char *in_msg;   /* ... holding this */
    int fd_out;           /* a file outside its root (-1: none) */
    const char *unreachable; /* an absolute path (from crest's root) it must not reach */
    const char *make;     /* a new file it makes by this path (NULL: none) */
    int lsock;            /* a UNIX listener it bound to /sub/a.sock, a path from its root */
};

#define A_SOCK "/sub/a.sock"

static void check_listener(int lsock)
{
    struct sockaddr_un addr;
    socklen_t len = sizeof addr;
    memset(&addr, 0, sizeof addr);
    if (getsockname(lsock, (struct sockaddr *)&addr, &len) != 0 ||
        strcmp(addr.sun_path, A_SOCK) != 0) {
        fail("the listener's name is \"%s\", not %s", addr.sun_path, A_SOCK);
        return;
    }
    int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&addr, len) != 0) {
        fail("cannot connect to %s: %s", A_SOCK, strerror(errno));
    } else {
        int a = accept4(lsock, NULL, NULL, SOCK_CLOEXEC);
        if (a < 0)
            fail("the listener at %s accepts nothing: %s", A_SOCK, strerror(errno));
        else
            close(a);
    }
    if (c >= 0)
        close(c);
}

static char work[CTL_PATH_MAX - 64], outside[CTL_PATH_MAX];
static struct stat main_root;
static struct child kids[4];
static int nkids;

static int same(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

static void check_content(int fd, const char *want, const char *what)
{
    char buf[64] = {0};
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n != (ssize_t)strlen(want) || memcmp(buf, want, (size_t)n) != 0)
        fail("%s holds %zd bytes \"%s\", not \"%s\"", what, n, n > 0 ? buf : "", want);
}

static void check_self(const struct spec *s)
{
    struct stat st, here;
    if (stat("/", &st) != 0)
        fail("%s: stat /: %s", s->name, strerror(errno));
    else if (s->removed ? (!S_ISDIR(st.st_mode) || st.st_nlink != 0) : !same(&st, &s->root))
        fail("%s: its root is inode %lu (links %lu), not the one it had (%lu)", s->name,
             (unsigned long)st.st_ino, (unsigned long)st.st_nlink,
             (unsigned long)s->root.st_ino);
    if (stat(".", &here) != 0)
        fail("%s: stat .: %s", s->name, strerror(errno));
    else if (s->removed ? !same(&here, &st) : !same(&here, &s->cwd))
        fail("%s: its cwd is inode %lu, not the one it had", s->name,
             (unsigned long)here.st_ino);
    check_content(s->fd_in, s->in_msg, "the file inside the root (by fd)");
    if (s->in_path) {
        int fd = open(s->in_path, O_RDONLY | O_CLOEXEC);
        struct stat a, b;
        if (fd < 0) {
            fail("%s: open %s: %s", s->name, s->in_path, strerror(errno));
        } else {
            check_content(fd, s->in_msg, s->in_path);
            if (fstat(fd, &a) != 0 || fstat(s->fd_in, &b) != 0 || !same(&a, &b))
                fail("%s: %s is another file than its fd", s->name, s->in_path);
            close(fd);
        }
    }
    if (s->fd_out >= 0)
        check_content(s->fd_out, "outside-data", "the file outside the root (by fd)");
    if (s->lsock >= 0)
        check_listener(s->lsock);
    int fd = open(s->unreachable, O_RDONLY | O_CLOEXEC);
    if (fd >= 0 || errno != ENOENT) {
        fail("%s: %s outside its root is reachable (%s)", s->name, s->unreachable,
             fd >= 0 ? "opened" : strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    if (s->make) {
        fd = open(s->make, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
            fail("%s: cannot make %s: %s", s->name, s->make, strerror(errno));
        else
            close(fd);
    }
    if (s->removed) {
        fd = open("/new", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0 || errno != ENOENT)
            fail("%s: a file could be made in its removed root (%s)", s->name,
                 fd >= 0 ? "made" : strerror(errno));
        if (fd >= 0)
            close(fd);
    }
}

static void answer(int res)
{
    char rec[RECORD] = {0};
    if (fail_msg[0])
        snprintf(rec, sizeof rec, "FAIL %.600s", fail_msg);
    else
        snprintf(rec, sizeof rec, "ok");
    write_all(res, rec, sizeof rec, "result pipe");
    fail_msg[0] = 0;
}

static void ask(struct child *k);

/* A child's life: answers "ready", then checks itself (and has `sub`, its own child, check
 * itself) on every request. */
static __attribute__((noreturn)) void serve(const struct spec *s, struct child *sub, int req,
                                            int res)
{
    answer(res);
    for (;;) {
        char c;
        ssize_t n = read(req, &c, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            _exit(0);
        check_self(s);
        if (sub)
            ask(sub);
        answer(res);
    }
}

/* Forks a child that will serve on new pipes; returns 0 in the child (with *req and *res its
 * ends), the pid in the parent (its ends in `kids`). */
static pid_t spawn(const char *name, int *req, int *res)
{
    int a[2], b[2];
    if (pipe2(a, O_CLOEXEC) != 0 || pipe2(b, O_CLOEXEC) != 0)
        die("pipe: %s", strerror(errno));
    pid_t pid = fork_dying_child();
    if (pid == 0) {
        close(a[1]);
        close(b[0]);
        *req = a[0];
        *res = b[1];
        return 0;
    }
    close(a[0]);
    close(b[1]);
    kids[nkids++] = (struct child){name, pid, a[1], b[0]};
    return pid;
}

static void make_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die("create %s: %s", path, strerror(errno));
    write_all(fd, text, strlen(text), path);
    close(fd);
}

static void at(char *out, const char *name)
{
    snprintf(out, CTL_PATH_MAX, "%s/%s", work, name);
}

static void xmkdir(const char *path)
{
    if (mkdir(path, 0755) != 0)
        die("mkdir %s: %s", path, strerror(errno));
}

static void xstat(const char *path, struct stat *st)
{
    if (stat(path, st) != 0)
        die("stat %s: %s", path, strerror(errno));
}

static void xchroot(const char *path)
{
    if (chroot(path) != 0)
        die("chroot %s: %s", path, strerror(errno));
}

static void start_a_and_b(void)
{
    char jail[CTL_PATH_MAX];
    int req, res;
    at(jail, "jail");
    if (spawn("A", &req, &res) != 0)
        return;
    static struct spec a;
    a = (struct spec){.name = "A", .in_path = "/sub/data", .in_msg = "inside-data",
                      .unreachable = outside, .make = "/sub/made-by-a"};
    a.fd_out = open(outside, O_RDWR | O_CLOEXEC);
    if (a.fd_out < 0)
        die("open %s: %s", outside, strerror(errno));
    xstat(jail, &a.root);
    xchroot(jail);
    if (chdir("/sub") != 0)
        die("chdir /sub: %s", strerror(errno));
    xstat(".", &a.cwd);
    a.fd_in = open("data", O_RDWR | O_CLOEXEC);
    if (a.fd_in < 0)
        die("open data: %s", strerror(errno));
    a.lsock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX, .sun_path = A_SOCK};
    if (a.lsock < 0 || bind(a.lsock, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        listen(a.lsock, 4) != 0)
        die("listen on %s: %s", A_SOCK, strerror(errno));
    /* B: A's own child, with A's root and cwd; A asks it to check itself. */
    int breq, bres;
    if (spawn("B", &breq, &bres) == 0) {
        static struct spec b;
        b = a;
        b.name = "B";
        b.in_path = "data";
        b.fd_out = -1;
        b.make = "made-by-b";
        b.lsock = -1;
        close(req);
        close(res);
        serve(&b, NULL, breq, bres);
    }
    struct child *b = &kids[nkids - 1];
    int breq_main = b->req;
    b->req = -1;
    ask(b); /* its "ready" */
    b->req = breq_main;
    if (fail_msg[0])
        die("setup of B: %s", fail_msg);
    /* B's pid, for the test: at WORK/jail/b-pid (/b-pid from A's root). */
    char text[32];
    snprintf(text, sizeof text, "%d", (int)b->pid);
    make_file("/b-pid.tmp", text);
    if (rename("/b-pid.tmp", "/b-pid") != 0)
        die("rename /b-pid: %s", strerror(errno));
    serve(&a, b, req, res);
}

static void start_c(void)
{
    char inner[CTL_PATH_MAX];
    int req, res;
    at(inner, "jail/inner");
    if (spawn("C", &req, &res) != 0)
        return;
    static struct spec c;
    c = (struct spec){.name = "C", .in_path = "/c-data", .in_msg = "c-data", .fd_out = -1,
                      .unreachable = outside, .make = "/made-by-c", .lsock = -1};
    xstat(inner, &c.root);
    xstat(".", &c.cwd);
    xchroot(inner); /* no chdir: the cwd stays outside the root */
    c.fd_in = open("/c-data", O_RDONLY | O_CLOEXEC);
    if (c.fd_in < 0)
        die("open /c-data: %s", strerror(errno));
    serve(&c, NULL, req, res);
}

static void start_d(void)
{
    char gone[CTL_PATH_MAX];
    int req, res;
    at(gone, "gone");
    if (spawn("D", &req, &res) != 0)
        return;
    static struct spec d;
    d = (struct spec){.name = "D", .removed = 1, .in_msg = "ghost-data", .fd_out = -1,
                      .unreachable = outside, .lsock = -1};
    xchroot(gone);
    if (chdir("/") != 0)
        die("chdir /: %s", strerror(errno));
    d.fd_in = open("/scratch", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (d.fd_in < 0)
        die("open /scratch: %s", strerror(errno));
    write_all(d.fd_in, "ghost-data", 10, "/scratch");
    if (unlink("/scratch") != 0)
        die("unlink /scratch: %s", strerror(errno));
    serve(&d, NULL, req, res);
}

/* Asks child k to check itself; a failure is recorded with fail(). */
static void ask(struct child *k)
{
    char rec[RECORD];
    if (k->req >= 0) {
        char c = 'v';
        write_all(k->req, &c, 1, "request pipe");
    }
    size_t got = 0;
    while (got < sizeof rec) {
        ssize_t n = read(k->res, rec + got, sizeof rec - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fail("child %s (%d) did not answer: %s", k->name, (int)k->pid,
                 n == 0 ? "its pipe is closed" : strerror(errno));
            return;
        }
        got += (size_t)n;
    }
    rec[sizeof rec - 1] = 0;
    if (strcmp(rec, "ok") != 0)
        fail("child %s (%d): %s", k->name, (int)k->pid, rec);
}

static void expect_made(const char *name)
{
    char path[CTL_PATH_MAX];
    at(path, name);
    if (access(path, F_OK) != 0)
        fail("%s was not made where the child's root puts it: %s", path, strerror(errno));
    else
        unlink(path);
}

static void verify(void)
{
    struct stat st;
    if (stat("/", &st) != 0 || !same(&st, &main_root))
        fail("the main process's root changed");
    for (int i = 0; i < nkids; i++)
        ask(&kids[i]);
    expect_made("jail/sub/made-by-a");
    expect_made("jail/sub/made-by-b");
    expect_made("jail/inner/made-by-c");
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: chroot CTL_DIR LOG_FILE");
    ctl_init(argv[1]);
    int log_fd = log_open(argv[2]);
    char ctl_copy[CTL_PATH_MAX];
    snprintf(ctl_copy, sizeof ctl_copy, "%s", argv[1]);
    snprintf(work, sizeof work, "%s", dirname(ctl_copy));
    at(outside, "outside");
    xstat("/", &main_root);

    char path[CTL_PATH_MAX];
    make_file(outside, "outside-data");
    at(path, "jail");
    xmkdir(path);
    at(path, "jail/sub");
    xmkdir(path);
    at(path, "jail/sub/data");
    make_file(path, "inside-data");
    at(path, "jail/inner");
    xmkdir(path);
    at(path, "jail/inner/c-data");
    make_file(path, "c-data");
    at(path, "gone");
    xmkdir(path);

    start_a_and_b();
    start_c();
    start_d();
    /* Each one's "ready" record. */
    for (int i = 0; i < nkids; i++) {
        int req = kids[i].req;
        kids[i].req = -1;
        ask(&kids[i]);
        kids[i].req = req;
    }
    if (fail_msg[0])
        die("setup: %s", fail_msg);
    at(path, "gone");
    if (rmdir(path) != 0)
        die("rmdir %s: %s", path, strerror(errno));
    char b_pid[CTL_PATH_MAX];
    at(b_pid, "jail/b-pid");
    size_t len;
    char *b = read_file(b_pid, &len);
    if (!b)
        die("read %s: %s", b_pid, strerror(errno));
    char info[256];
    snprintf(info, sizeof info, "child %d\nB %s\nC %d\nD %d\n", (int)kids[0].pid, b,
             (int)kids[1].pid, (int)kids[2].pid);
    free(b);
    ctl_write_file(argv[1], "info", info);
    ctl_loop((struct ctl_loop){.log_fd = log_fd, .period_ms = 20, .verify = verify,
                               .child = kids[0].pid});
}
