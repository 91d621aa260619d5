/*
 * sockets: a crest test victim with what a JVM has besides memory and threads: AF_UNIX sockets
 * and a performance-data file mapped shared (issue #4).
 *
 *   queued_fd   one end of a socketpair whose other end wrote QUEUED and was closed;
 *               O_NONBLOCK, close-on-exec (reads QUEUED, then end of file; writes: EPIPE)
 *   closed_fd   the same without data, blocking, not close-on-exec (JDK 17's NIO "pre-close" fd)
 *   dgram_fd    an unbound, unconnected datagram socket, close-on-exec
 *   listen_fd   a stream socket bound to CTL_DIR/listen.tmp, listening with backlog 5, chmod 0600
 *               and renamed to CTL_DIR/listen (as HotSpot's attach listener); a second thread
 *               blocks in accept() on it and answers every connection's byte b with b + 1
 *   perf        CTL_DIR/perf/hsperfdata_x/<pid>: PERF_PAGES pages, MAP_SHARED read-write, fd
 *               closed; pages 0 and 2.. hold a pattern, page 1 stays a hole, word 0 of page 0
 *               is rewritten with the counter every tick (as the JVM updates its counters)
 *
 * On a verify request it checks each socket's type, flags and state (without consuming what
 * is queued), that the listening socket file is there with mode 0600, and that the file at the
 * perf path holds exactly what its mapping shows.
 *
 * With a third argument "live-pair" it also keeps both ends of a connected socketpair open,
 * with "in the pair" sent through one end and left unread in the other: on a verify request it
 * reads those bytes, checks a message goes through both ways, and leaves the bytes unread again
 * for the next dump.
 *
 * usage: sockets CTL_DIR LOG_FILE [live-pair]
 */
#include "victim.h"

#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>

#define QUEUED "queued-bytes"
#define PERF_PAGES 8

static int queued_fd, closed_fd, dgram_fd, listen_fd;
static int live[2] = {-1, -1};
#define IN_THE_PAIR "in the pair"
static char listen_path[CTL_PATH_MAX];
static char perf_path[CTL_PATH_MAX];
static uint64_t *perf;
static size_t page, perf_bytes;
static unsigned long long counter;
static volatile unsigned long long served;

static void *acceptor(void *arg)
{
    (void)arg;
    for (;;) {
        int c = accept(listen_fd, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR)
                continue;
            die("accept: %s", strerror(errno));
        }
        unsigned char b;
        ssize_t n;
        do
            n = read(c, &b, 1);
        while (n < 0 && errno == EINTR);
        if (n == 1) {
            b++;
            if (write(c, &b, 1) != 1)
                die("answer: %s", strerror(errno));
            __atomic_add_fetch(&served, 1, __ATOMIC_RELAXED);
        }
        close(c);
    }
    return NULL;
}

static int peer_closed_pair(int flags)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | flags, 0, sv) != 0)
        die("socketpair: %s", strerror(errno));
    close(sv[1]);
    return sv[0];
}

static uint64_t perf_word(size_t i) { return mix(i + 7); }

static int perf_in_hole(size_t i) { return i >= page / 8 && i < 2 * page / 8; }

static void setup(const char *dir, int live_pair)
{
    page = (size_t)sysconf(_SC_PAGESIZE);

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        die("socketpair: %s", strerror(errno));
    write_all(sv[1], QUEUED, strlen(QUEUED), "socket pair");
    close(sv[1]);
    queued_fd = sv[0];
    if (fcntl(queued_fd, F_SETFL, O_NONBLOCK) != 0)
        die("F_SETFL: %s", strerror(errno));
    closed_fd = peer_closed_pair(0);
    dgram_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (dgram_fd < 0)
        die("socket: %s", strerror(errno));

    listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd < 0)
        die("socket: %s", strerror(errno));
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(listen_path, sizeof listen_path, "%s/listen", dir);
    if (strlen(listen_path) + 5 >= sizeof addr.sun_path)
        die("control directory path too long for a socket: %s", dir);
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s.tmp", listen_path);
    if (bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) != 0)
        die("bind %s: %s", addr.sun_path, strerror(errno));
    if (listen(listen_fd, 5) != 0)
        die("listen: %s", strerror(errno));
    if (chmod(addr.sun_path, 0600) != 0 || rename(addr.sun_path, listen_path) != 0)
        die("chmod/rename %s: %s", addr.sun_path, strerror(errno));
    pthread_t t;
    if (pthread_create(&t, NULL, acceptor, NULL) != 0)
        die("pthread_create failed");

    char perf_dir[CTL_PATH_MAX];
    snprintf(perf_dir, sizeof perf_dir, "%s/perf", dir);
    if (mkdir(perf_dir, 0755) != 0)
        die("mkdir %s: %s", perf_dir, strerror(errno));
    snprintf(perf_dir, sizeof perf_dir, "%s/perf/hsperfdata_x", dir);
    if (mkdir(perf_dir, 0755) != 0)
        die("mkdir %s: %s", perf_dir, strerror(errno));
    snprintf(perf_path, sizeof perf_path, "%s/%d", perf_dir, (int)getpid());
    int fd = open(perf_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        die("create %s: %s", perf_path, strerror(errno));
    perf_bytes = PERF_PAGES * page;
    if (ftruncate(fd, (off_t)perf_bytes) != 0)
        die("ftruncate: %s", strerror(errno));
    perf = mmap(NULL, perf_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (perf == MAP_FAILED)
        die("mmap %s: %s", perf_path, strerror(errno));
    close(fd);
    for (size_t i = 0; i < perf_bytes / 8; i++)
        if (!perf_in_hole(i))
            perf[i] = perf_word(i);

    if (live_pair) {
        /* Both ends stay open, with unread bytes in one. */
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, live) != 0)
            die("socketpair: %s", strerror(errno));
        write_all(live[1], IN_THE_PAIR, strlen(IN_THE_PAIR), "the live pair");
    }
}

static void check_flags(int fd, int nonblock, int cloexec, int type, const char *what)
{
    int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
    if (fl < 0 || fdfl < 0) {
        fail("%s (fd %d): fcntl: %s", what, fd, strerror(errno));
        return;
    }
    if (!!(fl & O_NONBLOCK) != nonblock)
        fail("%s (fd %d): O_NONBLOCK is %s", what, fd, nonblock ? "clear" : "set");
    if (!!(fdfl & FD_CLOEXEC) != cloexec)
        fail("%s (fd %d): FD_CLOEXEC is %s", what, fd, cloexec ? "clear" : "set");
    int t = -1, d = -1;
    socklen_t len = sizeof t;
    getsockopt(fd, SOL_SOCKET, SO_TYPE, &t, &len);
    len = sizeof d;
    getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &d, &len);
    if (t != type || d != AF_UNIX)
        fail("%s (fd %d): family %d type %d, want AF_UNIX type %d", what, fd, d, t, type);
}

/* The end of a pair whose peer is gone: `want` still queued, then end of file; no writing. */
static void check_peer_closed(int fd, const char *want, const char *what)
{
    int avail = -1;
    if (ioctl(fd, FIONREAD, &avail) != 0 || avail != (int)strlen(want))
        fail("%s (fd %d): %d bytes queued, want %zu", what, fd, avail, strlen(want));
    char buf[64] = {0};
    ssize_t n = recv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
    if (n != (ssize_t)strlen(want) || memcmp(buf, want, (size_t)n) != 0)
        fail("%s (fd %d): peeked %zd bytes '%.*s', want '%s'", what, fd, n, (int)(n > 0 ? n : 0),
             buf, want);
    if (send(fd, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != -1 || errno != EPIPE)
        fail("%s (fd %d): writing does not fail with EPIPE (%s)", what, fd, strerror(errno));
}

static void check_live_pair(void)
{
    char buf[64] = {0};
    ssize_t n = recv(live[0], buf, sizeof buf - 1, MSG_DONTWAIT);
    if (n != (ssize_t)strlen(IN_THE_PAIR) || memcmp(buf, IN_THE_PAIR, (size_t)n) != 0) {
        fail("the live pair held %zd bytes \"%s\", expected \"%s\"", n, buf, IN_THE_PAIR);
        return;
    }
    write_all(live[0], "back", 4, "the live pair");
    n = recv(live[1], buf, sizeof buf - 1, MSG_DONTWAIT);
    if (n != 4 || memcmp(buf, "back", 4) != 0)
        fail("the live pair's other end got %zd bytes", n);
    write_all(live[1], IN_THE_PAIR, strlen(IN_THE_PAIR), "the live pair");
}

static void verify(void)
{
    if (live[0] >= 0)
        check_live_pair();
    check_flags(queued_fd, 1, 1, SOCK_STREAM, "peer-closed pair with data");
    check_peer_closed(queued_fd, QUEUED, "peer-closed pair with data");
    check_flags(closed_fd, 0, 0, SOCK_STREAM, "peer-closed pair");
    check_peer_closed(closed_fd, "", "peer-closed pair");
    char b;
    if (recv(closed_fd, &b, 1, MSG_DONTWAIT) != 0)
        fail("peer-closed pair (fd %d): no end of file: %s", closed_fd, strerror(errno));

    check_flags(dgram_fd, 0, 1, SOCK_DGRAM, "unconnected datagram socket");
    struct sockaddr_un addr;
    socklen_t len = sizeof addr;
    if (getsockname(dgram_fd, (struct sockaddr *)&addr, &len) != 0 || len != sizeof(sa_family_t))
        fail("unconnected datagram socket: bound (address length %u)", (unsigned)len);
    len = sizeof addr;
    if (getpeername(dgram_fd, (struct sockaddr *)&addr, &len) == 0 || errno != ENOTCONN)
        fail("unconnected datagram socket: has a peer");

    check_flags(listen_fd, 0, 1, SOCK_STREAM, "listening socket");
    int on = 0;
    len = sizeof on;
    if (getsockopt(listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) != 0 || !on)
        fail("listening socket (fd %d) is not listening", listen_fd);
    struct stat st;
    if (lstat(listen_path, &st) != 0)
        fail("%s: %s", listen_path, strerror(errno));
    else if (!S_ISSOCK(st.st_mode) || (st.st_mode & 07777) != 0600)
        fail("%s: mode %o, want a socket with mode 600", listen_path, st.st_mode);

    /* The file at the perf path is what the mapping shows: the same file, content intact. */
    for (size_t i = 1; i < perf_bytes / 8; i++) {
        uint64_t want = perf_in_hole(i) ? 0 : perf_word(i);
        if (perf[i] != want) {
            fail("perf mapping word %zu is %#llx, want %#llx", i, (unsigned long long)perf[i],
                 (unsigned long long)want);
            break;
        }
    }
    if (perf[0] != counter)
        fail("perf mapping word 0 is %llu, want the counter %llu", (unsigned long long)perf[0],
             counter);
    size_t flen;
    char *file = read_file(perf_path, &flen);
    if (!file)
        fail("cannot read %s: %s", perf_path, strerror(errno));
    else if (flen != perf_bytes || memcmp(file, perf, perf_bytes) != 0)
        fail("%s (%zu bytes) differs from its mapping (%zu bytes)", perf_path, flen, perf_bytes);
    free(file);
    if (stat(perf_path, &st) == 0 && (st.st_mode & 07777) != 0600)
        fail("%s: mode %o, want 600", perf_path, st.st_mode & 07777);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE [live-pair]", argv[0]);
    ctl_init(argv[1]);
    int log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0)
        die("cannot open log %s: %s", argv[2], strerror(errno));
    setup(argv[1], argc > 3 && strcmp(argv[3], "live-pair") == 0);

    char line[128];
    for (;;) {
        sleep_ms(20);
        counter++;
        perf[0] = counter;
        int n = snprintf(line, sizeof line, "pid=%d n=%llu\n", (int)getpid(), counter);
        write_all(log_fd, line, (size_t)n, "log");
        if (ctl_verify_requested()) {
            verify();
            ctl_report(counter);
        }
        int code = ctl_exit_requested();
        if (code >= 0)
            exit(code);
    }
}
