/*
 * scm: a crest test victim whose UNIX socket queues hold messages carrying files (SCM_RIGHTS)
 * and credentials (SCM_CREDENTIALS), each socket at a fixed fd:
 *
 *   100/101  stream socketpair; 100 holds "head" (plain), then "files" carrying three files
 *            (a pipe's read end, a file at offset 4, a datagram socket), then "tail"; the
 *            senders closed the three (only the queue holds them)
 *   102      the pipe's write end; "buffered" waits in the pipe
 *   103      the other end of the datagram socket in flight, which holds "in-sock" from it
 *   104/105  seqpacket socketpair; 104 holds the record "self" carrying 104 itself, "dup"
 *            carrying the file of 100's message again (one description: one offset), and "ev"
 *            carrying the eventfd at 107
 *   107      an eventfd holding 5, held and in flight (one description)
 *   108      datagram socket bound to CTL/self, connected to itself, holding "me" carrying
 *            itself: once the process is gone the queue alone keeps it (and its name) alive,
 *            until the kernel collects such cycles
 *   106      datagram socket bound to CTL/cred with SO_PASSCRED; the test sends it "from-test"
 *            (with its own credentials) before the dump
 *
 * A verify request holding "check" (or nothing) checks the queue sizes without consuming
 * anything; "final" receives every message and checks the files and credentials: the pipe
 * holds "buffered" and carries new data from 102, the file reads "456789" from offset 4 and
 * shares its offset with the copy from 104's queue, the socket reads "in-sock" and then what
 * 103 sends, 104's record carries 104, and 106's message carries the test's pid, uid and gid
 * (TEST_PID, from the command line). It can be done once.
 *
 * Modes (fourth argument), each adding a datagram pair at 120/121 and, but for tree-creds,
 * something a dump must refuse:
 *   tree-creds  120 has SO_PASSCRED and holds "mine" from 121, so with the victim's own
 *               credentials (not refused: "final" checks them)
 *   deep        120 holds a socket whose queue holds a socket ..., five sockets deep
 *   memfd       120 holds a memfd (closed by the victim)
 *   tcp         120 holds a TCP socket listening on 127.0.0.1 (closed by the victim)
 * Mode "tree" instead forks a child (it dies with the parent; CTL/info says "child PID") that
 * holds the file and the pipe's read end in flight at its fds 110 and 111: "final" checks with
 * kcmp that the files received are the child's descriptions.
 *
 * usage: scm CTL_DIR LOG_FILE TEST_PID [mode]
 */
#include "victim.h"

#include <netinet/in.h>
#include <stddef.h>
#include <linux/kcmp.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>

static char dir[CTL_PATH_MAX];
static int test_pid;
static int final_done;
static pid_t child;
static const char *mode_arg = "";

static void at(int fd, int want)
{
    if (fd < 0)
        die("socket: %s", strerror(errno));
    if (fd == want)
        return;
    if (dup2(fd, want) != want)
        die("dup2 %d: %s", want, strerror(errno));
    close(fd);
}

static void pair(int type, int a, int b)
{
    int sv[2];
    if (socketpair(AF_UNIX, type, 0, sv) != 0)
        die("socketpair: %s", strerror(errno));
    at(sv[0], a);
    at(sv[1], b);
}

/* Sends `len` bytes of `data` through `sock` with the `n` fds of `fds`. */
static void send_fds(int sock, const char *data, size_t len, const int *fds, int n)
{
    struct iovec iov = {(void *)data, len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * 4)];
        struct cmsghdr align;
    } u;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    if (n > 0) {
        m.msg_control = u.buf;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)n);
    }
    if (sendmsg(sock, &m, 0) != (ssize_t)len)
        die("sendmsg on %d: %s", sock, strerror(errno));
}

static void send_str(int fd, const char *s)
{
    send_fds(fd, s, strlen(s), NULL, 0);
}

static void setup(const char *mode)
{
    int one = 1;
    pair(SOCK_STREAM, 100, 101);
    int p[2];
    if (pipe(p) != 0)
        die("pipe: %s", strerror(errno));
    write_all(p[1], "buffered", 8, "pipe");
    at(p[1], 102);

    char path[CTL_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/data", dir);
    int file = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (file < 0)
        die("open %s: %s", path, strerror(errno));
    write_all(file, "0123456789", 10, path);
    if (lseek(file, 4, SEEK_SET) != 4)
        die("lseek: %s", strerror(errno));

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0)
        die("socketpair: %s", strerror(errno));
    at(sv[1], 103);
    send_str(103, "in-sock");

    send_str(101, "head");
    int carried[3] = {p[0], file, sv[0]};
    send_fds(101, "files", 5, carried, 3);
    send_str(101, "tail");

    pair(SOCK_SEQPACKET, 104, 105);
    int self = 104;
    send_fds(105, "self", 4, &self, 1);
    send_fds(105, "dup", 3, &file, 1);
    at(eventfd(5, EFD_CLOEXEC), 107);
    int ev = 107;
    send_fds(105, "ev", 2, &ev, 1);
    if (strcmp(mode, "tree") == 0) {
        if (dup2(file, 110) != 110 || dup2(p[0], 111) != 111)
            die("dup2: %s", strerror(errno));
        pid_t parent = getpid();
        child = fork_dying_child();
        if (child == 0) {
            while (getppid() == parent)
                sleep_ms(20);
            _exit(0);
        }
        close(110);
        close(111);
        char info[64];
        snprintf(info, sizeof info, "child %d\n", (int)child);
        ctl_write_file(dir, "info", info);
    }
    close(p[0]);
    close(file);
    close(sv[0]);

    at(socket(AF_UNIX, SOCK_DGRAM, 0), 106);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s/cred", dir);
    if (bind(106, (struct sockaddr *)&a, sizeof a) != 0)
        die("bind %s: %s", a.sun_path, strerror(errno));
    if (setsockopt(106, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0)
        die("SO_PASSCRED: %s", strerror(errno));

    at(socket(AF_UNIX, SOCK_DGRAM, 0), 108);
    snprintf(a.sun_path, sizeof a.sun_path, "%s/self", dir);
    if (bind(108, (struct sockaddr *)&a, sizeof a) != 0 ||
        connect(108, (struct sockaddr *)&a, sizeof a) != 0)
        die("bind/connect %s: %s", a.sun_path, strerror(errno));
    int me = 108;
    send_fds(108, "me", 2, &me, 1);

    if (strcmp(mode, "tree-creds") == 0) {
        pair(SOCK_DGRAM, 120, 121);
        if (setsockopt(120, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0)
            die("SO_PASSCRED: %s", strerror(errno));
        send_str(121, "mine");
    } else if (strcmp(mode, "deep") == 0) {
        pair(SOCK_DGRAM, 120, 121);
        int outer = 121;
        for (int i = 0; i < 5; i++) {
            int sk[2];
            if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sk) != 0)
                die("socketpair: %s", strerror(errno));
            send_fds(outer, "level", 5, &sk[0], 1);
            if (outer != 121)
                close(outer);
            close(sk[0]);
            outer = sk[1];
        }
        close(outer);
    } else if (strcmp(mode, "memfd") == 0) {
        pair(SOCK_DGRAM, 120, 121);
        int m = memfd_create("in-flight", MFD_CLOEXEC);
        if (m < 0)
            die("memfd_create: %s", strerror(errno));
        send_fds(121, "memfd", 5, &m, 1);
        close(m);
    } else if (strcmp(mode, "tcp") == 0) {
        pair(SOCK_DGRAM, 120, 121);
        int t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in in = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (t < 0 || bind(t, (struct sockaddr *)&in, sizeof in) != 0 || listen(t, 1) != 0)
            die("TCP listener: %s", strerror(errno));
        send_fds(121, "tcp", 3, &t, 1);
        close(t);
    }
}

static int inq(int fd)
{
    int n = -1;
    if (ioctl(fd, FIONREAD, &n) != 0)
        fail("FIONREAD on %d: %s", fd, strerror(errno));
    return n;
}

/*
 * Receives one message from `sock` into `buf` (NUL-terminated), its fds into `fds` (at most
 * `max`, count in *nfds) and its credentials into `cred` (pid -1 when none came).
 */
static ssize_t receive(int sock, char *buf, size_t size, int *fds, int max, int *nfds,
                       struct ucred *cred)
{
    struct iovec iov = {buf, size - 1};
    union {
        char buf[CMSG_SPACE(sizeof(int) * 8) + CMSG_SPACE(sizeof(struct ucred))];
        struct cmsghdr align;
    } u;
    struct msghdr m = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    ssize_t n = recvmsg(sock, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    *nfds = 0;
    if (cred)
        cred->pid = -1;
    if (n < 0)
        return n;
    buf[n] = 0;
    if (m.msg_flags & MSG_CTRUNC)
        fail("fd %d: control data truncated", sock);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < k; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                if (*nfds < max)
                    fds[(*nfds)++] = fd;
                else
                    close(fd);
            }
        } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS && cred) {
            memcpy(cred, CMSG_DATA(c), sizeof *cred);
        }
    }
    return n;
}

static void expect_read(int fd, const char *want, const char *what)
{
    char buf[64] = {0};
    ssize_t n = read(fd, buf, sizeof buf - 1);
    if (n != (ssize_t)strlen(want) || memcmp(buf, want, strlen(want)) != 0)
        fail("%s: read %zd bytes \"%s\", want \"%s\" (%s)", what, n, n > 0 ? buf : "", want,
             n < 0 ? strerror(errno) : "");
}

static void same_inode(int a, int b, const char *what)
{
    struct stat sa, sb;
    if (fstat(a, &sa) != 0 || fstat(b, &sb) != 0 || sa.st_ino != sb.st_ino ||
        sa.st_dev != sb.st_dev)
        fail("%s: fds %d and %d are not the same file", what, a, b);
}

static void verify(int final)
{
    fail_msg[0] = 0;
    /* The queues as they were sent, nothing consumed. */
    if (inq(100) != 13)
        fail("fd 100 holds %d bytes, want 13", inq(100));
    if (inq(103) != 0)
        fail("fd 103 holds %d bytes, want none", inq(103));
    if (!final || fail_msg[0])
        return;
    if (final_done) {
        fail("final check asked twice");
        return;
    }
    final_done = 1;

    char data[64] = {0};
    char buf[64];
    int fds[8], nfds, got = 0, all[8];
    size_t len = 0;
    /* The bytes sent before the files come without them. */
    ssize_t n = receive(100, buf, 5, fds, 8, &nfds, NULL);
    if (n != 4 || strcmp(buf, "head") != 0 || nfds != 0) {
        fail("fd 100: first read %zd bytes \"%s\" with %d files, want \"head\" alone", n,
             n > 0 ? buf : "", nfds);
        return;
    }
    memcpy(data, buf, 4);
    len = 4;
    while (len < 13) {
        ssize_t n = receive(100, buf, sizeof buf, fds, 8, &nfds, NULL);
        if (n <= 0) {
            fail("fd 100: receiving after %zu bytes: %s", len, n < 0 ? strerror(errno) : "eof");
            return;
        }
        if (nfds > 0 && (got > 0 || len + (size_t)n != 9))
            fail("fd 100: %d files came after %zu+%zd bytes, want 3 with the 9th byte", nfds,
                 len, n);
        for (int i = 0; i < nfds && got < 8; i++)
            all[got++] = fds[i];
        memcpy(data + len, buf, (size_t)n);
        len += (size_t)n;
    }
    if (strcmp(data, "headfilestail") != 0)
        fail("fd 100: read \"%s\", want \"headfilestail\"", data);
    if (got != 3) {
        fail("fd 100: %d files came, want 3", got);
        return;
    }
    int rpipe = all[0], rfile = all[1], rsock = all[2];
    if (child > 0) {
        if (syscall(SYS_kcmp, getpid(), child, KCMP_FILE, rfile, 110) != 0)
            fail("the file in flight is not the child's fd 110 (kcmp: %s)", strerror(errno));
        if (syscall(SYS_kcmp, getpid(), child, KCMP_FILE, rpipe, 111) != 0)
            fail("the pipe in flight is not the child's fd 111 (kcmp: %s)", strerror(errno));
    }
    /* The pipe: its buffered bytes, then what the write end sends now. */
    expect_read(rpipe, "buffered", "the pipe in flight");
    write_all(102, "more", 4, "pipe");
    expect_read(rpipe, "more", "the pipe in flight, written again");
    /* The file: offset 4, shared with the copy in 104's queue. */
    off_t at_off = lseek(rfile, 0, SEEK_CUR);
    if (at_off != 4)
        fail("the file in flight is at offset %lld, want 4", (long long)at_off);
    /* The socket: its own queue, then a new datagram. */
    n = receive(rsock, buf, sizeof buf, fds, 8, &nfds, NULL);
    if (n != 7 || strcmp(buf, "in-sock") != 0)
        fail("the socket in flight: received %zd bytes \"%s\", want \"in-sock\"", n,
             n > 0 ? buf : "");
    send_str(103, "ping");
    n = receive(rsock, buf, sizeof buf, fds, 8, &nfds, NULL);
    if (n != 4 || strcmp(buf, "ping") != 0)
        fail("the socket in flight does not receive from fd 103 (%zd)", n);

    /* 104: a record carrying 104 itself, then one carrying the file again. */
    n = receive(104, buf, sizeof buf, fds, 8, &nfds, NULL);
    if (n != 4 || strcmp(buf, "self") != 0 || nfds != 1) {
        fail("fd 104: first record %zd bytes \"%s\" with %d files, want \"self\" with 1", n,
             n > 0 ? buf : "", nfds);
        return;
    }
    same_inode(fds[0], 104, "the socket sent in its own queue");
    close(fds[0]);
    n = receive(104, buf, sizeof buf, fds, 8, &nfds, NULL);
    if (n != 3 || strcmp(buf, "dup") != 0 || nfds != 1) {
        fail("fd 104: second record %zd bytes \"%s\" with %d files, want \"dup\" with 1", n,
             n > 0 ? buf : "", nfds);
        return;
    }
    int rfile2 = fds[0];
    same_inode(rfile2, rfile, "the file sent twice");
    expect_read(rfile2, "456789", "the file in flight from its second message");
    if (lseek(rfile, 0, SEEK_CUR) != 10)
        fail("the two copies of the file in flight do not share their offset (%lld)",
             (long long)lseek(rfile, 0, SEEK_CUR));
    close(rfile2);
    n = receive(104, buf, sizeof buf, fds, 8, &nfds, NULL);
    if (n != 2 || strcmp(buf, "ev") != 0 || nfds != 1) {
        fail("fd 104: third record %zd bytes \"%s\" with %d files, want \"ev\" with 1", n,
             n > 0 ? buf : "", nfds);
        return;
    }
    if (syscall(SYS_kcmp, getpid(), getpid(), KCMP_FILE, fds[0], 107) != 0)
        fail("the eventfd in flight is not fd 107's description (kcmp: %s)", strerror(errno));
    uint64_t count = 0;
    if (read(fds[0], &count, sizeof count) != sizeof count || count != 5)
        fail("the eventfd in flight holds %llu, want 5", (unsigned long long)count);
    close(fds[0]);
    close(rfile);
    close(rpipe);
    close(rsock);

    if (strcmp(mode_arg, "tree-creds") == 0) {
        struct ucred mine;
        n = receive(120, buf, sizeof buf, fds, 8, &nfds, &mine);
        if (n != 4 || strcmp(buf, "mine") != 0)
            fail("fd 120: received %zd bytes \"%s\", want \"mine\"", n, n > 0 ? buf : "");
        else if (mine.pid != getpid() || mine.uid != 0 || mine.gid != 0)
            fail("fd 120: credentials pid %d uid %u gid %u, want pid %d uid 0 gid 0", mine.pid,
                 mine.uid, mine.gid, (int)getpid());
    }

    /* 108: itself, from itself. */
    n = receive(108, buf, sizeof buf, fds, 8, &nfds, NULL);
    if (n != 2 || strcmp(buf, "me") != 0 || nfds != 1) {
        fail("fd 108: received %zd bytes \"%s\" with %d files, want \"me\" with 1", n,
             n > 0 ? buf : "", nfds);
        return;
    }
    same_inode(fds[0], 108, "the bound socket sent in its own queue");
    close(fds[0]);

    /* 106: the test's datagram with its credentials. */
    struct ucred cred;
    n = receive(106, buf, sizeof buf, fds, 8, &nfds, &cred);
    if (n != 9 || strcmp(buf, "from-test") != 0)
        fail("fd 106: received %zd bytes \"%s\", want \"from-test\"", n, n > 0 ? buf : "");
    else if (cred.pid != test_pid || cred.uid != 0 || cred.gid != 0)
        fail("fd 106: credentials pid %d uid %u gid %u, want pid %d uid 0 gid 0", cred.pid,
             cred.uid, cred.gid, test_pid);
}

int main(int argc, char **argv)
{
    if (argc < 4)
        die("usage: %s CTL_DIR LOG_FILE TEST_PID [mode]", argv[0]);
    ctl_init(argv[1]);
    snprintf(dir, sizeof dir, "%s", argv[1]);
    test_pid = atoi(argv[3]);
    int log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0)
        die("cannot open log %s: %s", argv[2], strerror(errno));
    mode_arg = argc > 4 ? argv[4] : "";
    setup(mode_arg);

    char line[128];
    unsigned long long counter = 0;
    for (;;) {
        sleep_ms(20);
        counter++;
        int n = snprintf(line, sizeof line, "pid=%d n=%llu\n", (int)getpid(), counter);
        write_all(log_fd, line, (size_t)n, "log");
        size_t blen = 0;
        char *body = read_file(ctl_request, &blen);
        if (ctl_verify_requested()) {
            int final = body && blen >= 5 && memcmp(body, "final", 5) == 0;
            verify(final);
            ctl_report(counter);
        }
        free(body);
        int code = ctl_exit_requested();
        if (code >= 0)
            exit(code);
    }
}
