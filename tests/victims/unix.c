/*
 * unix: a crest test victim with AF_UNIX sockets of every kind crest restores (issue #10), each
 * at a fixed fd:
 *
 *   100/101  stream socketpair; each end holds bytes the other sent ("to-100", "to-101")
 *   102/103  seqpacket socketpair; 102 holds the records "r1", "rec-2" sent by 103; 102 is shut
 *            down for writing (so 103 reads end of file)
 *   104/105  datagram socketpair; 104 holds "dg1", "dg2"
 *   106      datagram socket bound to CTL/dgram, holding "hello-srv" from 107 and "anon" from
 *            108
 *   107      datagram socket bound to the abstract name @crest-unix-PID-cli, connected to 106
 *   108      unbound datagram socket that sent "anon" to 106
 *   109      stream socket listening on the abstract name @crest-unix-PID-lsn (backlog 4)
 *   110      a client of 109 whose connection waits to be accepted
 *   111      stream socket listening on CTL/listen, bound as CTL/listen.tmp and renamed, mode 0640
 *   112, 113 clients of 111 waiting to be accepted, 112 first; 113 shut down for writing
 *   114      stream socket bound to CTL/idle, neither listening nor connected, SO_PASSCRED,
 *            SO_PASSSEC, SO_RCVLOWAT 7 and SO_SNDTIMEO 3.5 s
 *   115      seqpacket socket listening on the relative name "rel", bound from CTL (the
 *            victim's working directory)
 *   116, 117 stream sockets listening on CTL/twice: 116 bound first, its file renamed away
 *            while 117 bound, then renamed back, so CTL/twice is 116's and 117's file is gone
 *   118      datagram socket bound to CTL/gone/dg, whose file and directory were removed
 *   119      datagram socket connected to 118, unbound, with "to-118" queued in 118
 *   124      datagram socket bound to CTL/occupied, whose socket file was removed and a
 *            regular file ("occupant") made at that path
 *   125      datagram socket connected to 124, unbound, with "to-124" queued in 124
 *
 * A verify request holding "check" (or nothing) checks, without consuming anything, each
 * socket's type, name, peer, queue sizes, SO_PASSCRED and listening state; "final" also reads
 * every queue and compares it, talks both ways on each pair, accepts the waiting connections
 * (in order) and checks shutdown states; it can be done once.
 *
 * Extra modes (third argument), each adding one socket a dump must refuse or handle:
 *   ext NAME      fd 120: a stream socket connected to the abstract name @NAME (a server outside
 *                 the tree); "final" writes "ext" on it
 *   scm           fd 120/121: a stream pair with an fd (0) in flight (SCM_RIGHTS) in 120
 *   pending-data  fd 120: a client of 111 that wrote "early" before being accepted
 *
 * usage: unix CTL_DIR LOG_FILE [mode [arg]]
 */
#include "victim.h"

#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>

static char dir[CTL_PATH_MAX];
static char dgram_path[CTL_PATH_MAX], listen_path[CTL_PATH_MAX], listen_tmp[CTL_PATH_MAX],
    idle_path[CTL_PATH_MAX], twice_path[CTL_PATH_MAX], twice_old[CTL_PATH_MAX],
    gone_dir[CTL_PATH_MAX], gone_path[CTL_PATH_MAX], occupied_path[CTL_PATH_MAX];
static char cli_name[64], lsn_name[64];
static const char *mode = "";
static int final_done;

static int at(int fd, int want)
{
    if (fd < 0)
        die("socket: %s", strerror(errno));
    if (dup2(fd, want) != want)
        die("dup2 %d: %s", want, strerror(errno));
    close(fd);
    return want;
}

static socklen_t path_addr(struct sockaddr_un *a, const char *path)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a->sun_path)
        die("path too long for a socket: %s", path);
    strcpy(a->sun_path, path);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
}

static socklen_t abstract_addr(struct sockaddr_un *a, const char *name)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    memcpy(a->sun_path + 1, name, strlen(name));
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
}

static void pair(int type, int a, int b)
{
    int sv[2];
    if (socketpair(AF_UNIX, type, 0, sv) != 0)
        die("socketpair: %s", strerror(errno));
    at(sv[0], a);
    at(sv[1], b);
}

static void send_str(int fd, const char *s)
{
    if (send(fd, s, strlen(s), MSG_NOSIGNAL) != (ssize_t)strlen(s))
        die("send on %d: %s", fd, strerror(errno));
}

static void setup(const char *extra, const char *arg)
{
    int one = 1;
    pair(SOCK_STREAM, 100, 101);
    send_str(101, "to-100");
    send_str(100, "to-101");

    pair(SOCK_SEQPACKET, 102, 103);
    send_str(103, "r1");
    send_str(103, "rec-2");
    if (shutdown(102, SHUT_WR) != 0)
        die("shutdown: %s", strerror(errno));

    pair(SOCK_DGRAM, 104, 105);
    send_str(105, "dg1");
    send_str(105, "dg2");

    struct sockaddr_un a;
    socklen_t len;
    at(socket(AF_UNIX, SOCK_DGRAM, 0), 106);
    len = path_addr(&a, dgram_path);
    if (bind(106, (struct sockaddr *)&a, len) != 0)
        die("bind %s: %s", dgram_path, strerror(errno));
    at(socket(AF_UNIX, SOCK_DGRAM, 0), 107);
    len = abstract_addr(&a, cli_name);
    if (bind(107, (struct sockaddr *)&a, len) != 0)
        die("bind @%s: %s", cli_name, strerror(errno));
    len = path_addr(&a, dgram_path);
    if (connect(107, (struct sockaddr *)&a, len) != 0)
        die("connect %s: %s", dgram_path, strerror(errno));
    send_str(107, "hello-srv");
    at(socket(AF_UNIX, SOCK_DGRAM, 0), 108);
    if (sendto(108, "anon", 4, 0, (struct sockaddr *)&a, len) != 4)
        die("sendto: %s", strerror(errno));

    at(socket(AF_UNIX, SOCK_STREAM, 0), 109);
    len = abstract_addr(&a, lsn_name);
    if (bind(109, (struct sockaddr *)&a, len) != 0 || listen(109, 4) != 0)
        die("listen @%s: %s", lsn_name, strerror(errno));
    at(socket(AF_UNIX, SOCK_STREAM, 0), 110);
    if (connect(110, (struct sockaddr *)&a, len) != 0)
        die("connect @%s: %s", lsn_name, strerror(errno));

    at(socket(AF_UNIX, SOCK_STREAM, 0), 111);
    len = path_addr(&a, listen_tmp);
    if (bind(111, (struct sockaddr *)&a, len) != 0 || listen(111, 4) != 0)
        die("listen %s: %s", listen_tmp, strerror(errno));
    if (chmod(listen_tmp, 0640) != 0 || rename(listen_tmp, listen_path) != 0)
        die("chmod/rename %s: %s", listen_tmp, strerror(errno));
    len = path_addr(&a, listen_path);
    at(socket(AF_UNIX, SOCK_STREAM, 0), 112);
    if (connect(112, (struct sockaddr *)&a, len) != 0)
        die("connect %s: %s", listen_path, strerror(errno));
    at(socket(AF_UNIX, SOCK_STREAM, 0), 113);
    if (connect(113, (struct sockaddr *)&a, len) != 0 || shutdown(113, SHUT_WR) != 0)
        die("connect %s: %s", listen_path, strerror(errno));

    at(socket(AF_UNIX, SOCK_STREAM, 0), 114);
    len = path_addr(&a, idle_path);
    if (bind(114, (struct sockaddr *)&a, len) != 0)
        die("bind %s: %s", idle_path, strerror(errno));
    if (setsockopt(114, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0)
        die("SO_PASSCRED: %s", strerror(errno));
    int lowat = 7;
    struct timeval tv = {3, 500000};
    if (setsockopt(114, SOL_SOCKET, SO_PASSSEC, &one, sizeof one) != 0 ||
        setsockopt(114, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof lowat) != 0 ||
        setsockopt(114, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
        die("SO_PASSSEC/SO_RCVLOWAT/SO_SNDTIMEO: %s", strerror(errno));

    if (chdir(dir) != 0)
        die("chdir %s: %s", dir, strerror(errno));
    at(socket(AF_UNIX, SOCK_SEQPACKET, 0), 115);
    len = path_addr(&a, "rel");
    if (bind(115, (struct sockaddr *)&a, len) != 0 || listen(115, 2) != 0)
        die("listen on rel: %s", strerror(errno));

    at(socket(AF_UNIX, SOCK_STREAM, 0), 116);
    len = path_addr(&a, twice_path);
    if (bind(116, (struct sockaddr *)&a, len) != 0 || listen(116, 2) != 0)
        die("listen %s: %s", twice_path, strerror(errno));
    if (rename(twice_path, twice_old) != 0)
        die("rename %s: %s", twice_path, strerror(errno));
    at(socket(AF_UNIX, SOCK_STREAM, 0), 117);
    if (bind(117, (struct sockaddr *)&a, len) != 0 || listen(117, 2) != 0)
        die("listen %s again: %s", twice_path, strerror(errno));
    if (rename(twice_old, twice_path) != 0)
        die("rename %s back: %s", twice_old, strerror(errno));

    if (mkdir(gone_dir, 0755) != 0)
        die("mkdir %s: %s", gone_dir, strerror(errno));
    at(socket(AF_UNIX, SOCK_DGRAM, 0), 118);
    len = path_addr(&a, gone_path);
    if (bind(118, (struct sockaddr *)&a, len) != 0)
        die("bind %s: %s", gone_path, strerror(errno));
    at(socket(AF_UNIX, SOCK_DGRAM, 0), 119);
    if (connect(119, (struct sockaddr *)&a, len) != 0)
        die("connect %s: %s", gone_path, strerror(errno));
    send_str(119, "to-118");
    if (unlink(gone_path) != 0 || rmdir(gone_dir) != 0)
        die("removing %s: %s", gone_dir, strerror(errno));

    at(socket(AF_UNIX, SOCK_DGRAM, 0), 124);
    len = path_addr(&a, occupied_path);
    if (bind(124, (struct sockaddr *)&a, len) != 0)
        die("bind %s: %s", occupied_path, strerror(errno));
    at(socket(AF_UNIX, SOCK_DGRAM, 0), 125);
    if (connect(125, (struct sockaddr *)&a, len) != 0)
        die("connect %s: %s", occupied_path, strerror(errno));
    send_str(125, "to-124");
    int occ;
    if (unlink(occupied_path) != 0 ||
        (occ = open(occupied_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0 ||
        write(occ, "occupant", 8) != 8 || close(occ) != 0)
        die("replacing %s by a regular file: %s", occupied_path, strerror(errno));

    if (strcmp(extra, "ext") == 0) {
        at(socket(AF_UNIX, SOCK_STREAM, 0), 120);
        len = abstract_addr(&a, arg);
        if (connect(120, (struct sockaddr *)&a, len) != 0)
            die("connect @%s: %s", arg, strerror(errno));
    } else if (strcmp(extra, "scm") == 0) {
        pair(SOCK_STREAM, 120, 121);
        char b = 'x';
        struct iovec iov = {&b, 1};
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } u;
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                           .msg_controllen = sizeof u.buf};
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        int passed = 0;
        memcpy(CMSG_DATA(c), &passed, sizeof passed);
        if (sendmsg(121, &m, 0) != 1)
            die("sendmsg: %s", strerror(errno));
    } else if (strcmp(extra, "pending-data") == 0) {
        at(socket(AF_UNIX, SOCK_STREAM, 0), 120);
        len = path_addr(&a, listen_path);
        if (connect(120, (struct sockaddr *)&a, len) != 0)
            die("connect %s: %s", listen_path, strerror(errno));
        send_str(120, "early");
    }
}

static void check_type(int fd, int type)
{
    int t = -1;
    socklen_t len = sizeof t;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &t, &len) != 0 || t != type)
        fail("fd %d: type %d, want %d (%s)", fd, t, type, strerror(errno));
}

static int int_opt(int fd, int opt)
{
    int v = -1;
    socklen_t len = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, opt, &v, &len) != 0)
        fail("fd %d: getsockopt %d: %s", fd, opt, strerror(errno));
    return v;
}

/* fd's own name (getsockname, peer 0) or its peer's: "" unnamed, "@x" abstract, or a path. */
static void name_of(int fd, int peer, char *out, size_t cap)
{
    struct sockaddr_un a;
    socklen_t len = sizeof a;
    int r = peer ? getpeername(fd, (struct sockaddr *)&a, &len)
                 : getsockname(fd, (struct sockaddr *)&a, &len);
    if (r != 0) {
        snprintf(out, cap, "<%s>", strerror(errno));
        return;
    }
    size_t n = len - offsetof(struct sockaddr_un, sun_path);
    if (len <= offsetof(struct sockaddr_un, sun_path))
        snprintf(out, cap, "%s", "");
    else if (a.sun_path[0] == 0)
        snprintf(out, cap, "@%.*s", (int)n - 1, a.sun_path + 1);
    else
        snprintf(out, cap, "%s", a.sun_path);
}

static void check_name(int fd, int peer, const char *want)
{
    char got[256];
    name_of(fd, peer, got, sizeof got);
    if (strcmp(got, want) != 0)
        fail("fd %d: %s is '%s', want '%s'", fd, peer ? "peer name" : "name", got, want);
}

static void check_inq(int fd, int want)
{
    int n = -1;
    if (ioctl(fd, FIONREAD, &n) != 0 || n != want)
        fail("fd %d: %d bytes to read, want %d", fd, n, want);
}

static void check_read(int fd, const char *want)
{
    char buf[64] = {0};
    ssize_t n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
    if (n != (ssize_t)strlen(want) || memcmp(buf, want, (size_t)n) != 0)
        fail("fd %d: read %zd bytes '%s', want '%s' (%s)", fd, n, n > 0 ? buf : "", want,
             n < 0 ? strerror(errno) : "");
}

static void check_eof(int fd)
{
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_DONTWAIT);
    if (n != 0)
        fail("fd %d: no end of file (%zd, %s)", fd, n, strerror(errno));
}

static void check_from(int fd, const char *want_data, const char *want_from)
{
    char buf[64] = {0};
    struct sockaddr_un a;
    socklen_t len = sizeof a;
    ssize_t n = recvfrom(fd, buf, sizeof buf - 1, MSG_DONTWAIT, (struct sockaddr *)&a, &len);
    if (n != (ssize_t)strlen(want_data) || memcmp(buf, want_data, (size_t)n) != 0) {
        fail("fd %d: datagram '%s', want '%s'", fd, n > 0 ? buf : "", want_data);
        return;
    }
    char from[256] = "";
    if (len > offsetof(struct sockaddr_un, sun_path)) {
        size_t k = len - offsetof(struct sockaddr_un, sun_path);
        if (a.sun_path[0] == 0)
            snprintf(from, sizeof from, "@%.*s", (int)k - 1, a.sun_path + 1);
        else
            snprintf(from, sizeof from, "%s", a.sun_path);
    }
    if (strcmp(from, want_from) != 0)
        fail("fd %d: datagram '%s' from '%s', want from '%s'", fd, want_data, from, want_from);
}

static void talk(int a, int b)
{
    send_str(a, "ping");
    check_read(b, "ping");
    send_str(b, "pong");
    check_read(a, "pong");
}

static void verify(int final)
{
    char at_cli[80], at_lsn[80];
    snprintf(at_cli, sizeof at_cli, "@%s", cli_name);
    snprintf(at_lsn, sizeof at_lsn, "@%s", lsn_name);
    check_type(100, SOCK_STREAM);
    check_type(102, SOCK_SEQPACKET);
    check_type(104, SOCK_DGRAM);
    check_type(106, SOCK_DGRAM);
    check_type(109, SOCK_STREAM);
    check_type(114, SOCK_STREAM);
    if (int_opt(114, SO_PASSCRED) != 1 || int_opt(100, SO_PASSCRED) != 0)
        fail("SO_PASSCRED of fds 114/100: %d/%d", int_opt(114, SO_PASSCRED),
             int_opt(100, SO_PASSCRED));
    check_inq(100, 6);
    check_inq(101, 6);
    check_inq(102, 7); /* every record queued */
    check_inq(104, 3);
    check_name(104, 0, "");
    check_name(106, 0, dgram_path);
    check_name(107, 0, at_cli);
    check_name(107, 1, dgram_path);
    check_name(108, 0, "");
    check_name(109, 0, at_lsn);
    check_name(111, 0, listen_tmp);
    check_name(114, 0, idle_path);
    if (int_opt(109, SO_ACCEPTCONN) != 1 || int_opt(111, SO_ACCEPTCONN) != 1 ||
        int_opt(114, SO_ACCEPTCONN) != 0)
        fail("listening states");
    check_name(110, 1, at_lsn);
    check_name(112, 1, listen_tmp); /* the name the listener was bound as */
    struct stat st;
    if (lstat(listen_path, &st) != 0 || !S_ISSOCK(st.st_mode) || (st.st_mode & 07777) != 0640)
        fail("%s: not a socket of mode 640 (%s)", listen_path, strerror(errno));
    if (lstat(listen_tmp, &st) == 0)
        fail("%s exists", listen_tmp);
    if (lstat(idle_path, &st) != 0 || !S_ISSOCK(st.st_mode))
        fail("%s: not a socket (%s)", idle_path, strerror(errno));
    if (int_opt(114, SO_PASSSEC) != 1 || int_opt(100, SO_PASSSEC) != 0 ||
        int_opt(114, SO_RCVLOWAT) != 7)
        fail("SO_PASSSEC of fds 114/100: %d/%d, SO_RCVLOWAT of 114: %d",
             int_opt(114, SO_PASSSEC), int_opt(100, SO_PASSSEC), int_opt(114, SO_RCVLOWAT));
    struct timeval tv = {0, 0};
    socklen_t tvlen = sizeof tv;
    if (getsockopt(114, SOL_SOCKET, SO_SNDTIMEO, &tv, &tvlen) != 0 || tv.tv_sec != 3 ||
        tv.tv_usec != 500000)
        fail("SO_SNDTIMEO of fd 114: %ld.%06ld", (long)tv.tv_sec, (long)tv.tv_usec);
    check_type(115, SOCK_SEQPACKET);
    check_name(115, 0, "rel");
    if (int_opt(115, SO_ACCEPTCONN) != 1 || int_opt(116, SO_ACCEPTCONN) != 1 ||
        int_opt(117, SO_ACCEPTCONN) != 1)
        fail("listening states of 115-117");
    check_name(116, 0, twice_path);
    check_name(117, 0, twice_path);
    if (lstat(twice_path, &st) != 0 || !S_ISSOCK(st.st_mode))
        fail("%s: not a socket (%s)", twice_path, strerror(errno));
    if (lstat(twice_old, &st) == 0)
        fail("%s exists", twice_old);
    if (lstat(gone_dir, &st) == 0)
        fail("%s exists", gone_dir);
    check_name(118, 0, gone_path);
    check_name(119, 1, gone_path);
    check_inq(118, 6);
    check_name(124, 0, occupied_path);
    check_name(125, 1, occupied_path);
    check_inq(124, 6);
    {
        char buf[16] = {0};
        int occ = open(occupied_path, O_RDONLY | O_CLOEXEC);
        if (occ < 0 || lstat(occupied_path, &st) != 0 || !S_ISREG(st.st_mode) ||
            read(occ, buf, sizeof buf) != 8 || strcmp(buf, "occupant") != 0)
            fail("%s is no longer the regular file 'occupant'", occupied_path);
        if (occ >= 0)
            close(occ);
    }
    if (strcmp(mode, "ext") == 0)
        check_type(120, SOCK_STREAM);
    if (!final || fail_msg[0])
        return;
    if (final_done) {
        fail("final verify asked twice");
        return;
    }
    final_done = 1;

    check_read(100, "to-100");
    check_read(101, "to-101");
    talk(100, 101);
    check_read(102, "r1");
    check_read(102, "rec-2");
    check_inq(102, 0);
    check_eof(103); /* 102 shut down writing */
    send_str(103, "late");
    check_read(102, "late");
    check_read(104, "dg1");
    check_read(104, "dg2");
    talk(104, 105);
    check_from(106, "hello-srv", at_cli);
    check_from(106, "anon", "");
    send_str(107, "again");
    check_from(106, "again", at_cli);
    int c = accept(109, NULL, NULL);
    if (c < 0) {
        fail("accept on @%s: %s", lsn_name, strerror(errno));
        return;
    }
    talk(c, 110);
    close(c);
    c = accept(111, NULL, NULL);
    if (c < 0) {
        fail("accept on %s: %s", listen_path, strerror(errno));
        return;
    }
    talk(c, 112); /* 112 waited first */
    close(c);
    c = accept(111, NULL, NULL);
    if (c < 0) {
        fail("second accept on %s: %s", listen_path, strerror(errno));
        return;
    }
    check_eof(c); /* 113 shut down writing */
    send_str(c, "to-113");
    check_read(113, "to-113");
    close(c);
    /* CTL/twice leads to 116, the socket whose file survived; the relative name to 115. */
    struct sockaddr_un a;
    socklen_t len = path_addr(&a, twice_path);
    int t = socket(AF_UNIX, SOCK_STREAM, 0);
    if (t < 0 || connect(t, (struct sockaddr *)&a, len) != 0) {
        fail("connect %s: %s", twice_path, strerror(errno));
        return;
    }
    c = accept4(116, NULL, NULL, SOCK_NONBLOCK);
    if (c < 0) {
        fail("%s does not lead to fd 116: %s", twice_path, strerror(errno));
        return;
    }
    talk(c, t);
    close(c);
    close(t);
    len = path_addr(&a, "rel");
    t = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (t < 0 || connect(t, (struct sockaddr *)&a, len) != 0) {
        fail("connect rel: %s", strerror(errno));
        return;
    }
    c = accept4(115, NULL, NULL, SOCK_NONBLOCK);
    if (c < 0) {
        fail("rel does not lead to fd 115: %s", strerror(errno));
        return;
    }
    talk(c, t);
    close(c);
    close(t);
    check_read(118, "to-118");
    send_str(119, "again");
    check_read(118, "again");
    check_read(124, "to-124");
    send_str(125, "again");
    check_read(124, "again");
    if (strcmp(mode, "ext") == 0)
        send_str(120, "ext");
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE [mode [arg]]", argv[0]);
    ctl_init(argv[1]);
    snprintf(dir, sizeof dir, "%s", argv[1]);
    snprintf(dgram_path, sizeof dgram_path, "%s/dgram", dir);
    snprintf(listen_path, sizeof listen_path, "%s/listen", dir);
    snprintf(listen_tmp, sizeof listen_tmp, "%s/listen.tmp", dir);
    snprintf(idle_path, sizeof idle_path, "%s/idle", dir);
    snprintf(twice_path, sizeof twice_path, "%s/twice", dir);
    snprintf(twice_old, sizeof twice_old, "%s/twice.old", dir);
    snprintf(gone_dir, sizeof gone_dir, "%s/gone", dir);
    snprintf(gone_path, sizeof gone_path, "%s/dg", gone_dir);
    snprintf(occupied_path, sizeof occupied_path, "%s/occupied", dir);
    snprintf(cli_name, sizeof cli_name, "crest-unix-%d-cli", (int)getpid());
    snprintf(lsn_name, sizeof lsn_name, "crest-unix-%d-lsn", (int)getpid());
    if (argc > 3)
        mode = argv[3];
    int log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0)
        die("cannot open log %s: %s", argv[2], strerror(errno));
    setup(mode, argc > 4 ? argv[4] : "");

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
