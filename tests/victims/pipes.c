/*
 * pipes: a crest test victim holding pipes with unread data (issue #4).
 *
 *   a_read, a_write   a blocking pipe, both ends close-on-exec; a_dup is dup(a_write) (one
 *                     description, not close-on-exec). Holds the current generation's A data,
 *                     written in 100-byte chunks alternately through a_write and a_dup.
 *   b_read, b_write   an O_NONBLOCK pipe of B_SIZE bytes (F_SETPIPE_SZ) holding the current
 *                     generation's B data.
 *   c_read            the read end of a pipe whose write end it closed after writing C_LEN
 *                     bytes: they must stay readable (checked without consuming them, through
 *                     tee), and poll must report POLLHUP (no writer anywhere).
 *   d_write           the write end of a pipe whose read end it closed: poll must report
 *                     POLLERR (no reader anywhere).
 *   e_read, e_write   a pipe(2) pipe whose read end has signal-driven I/O: O_ASYNC, owner
 *                     this process (F_SETOWN), signal SIGRTMIN+3 (F_SETSIG). A verify checks
 *                     the flags (exactly, so no O_LARGEFILE a reopen would add), owner and
 *                     signal, then writes a byte: the handler must run once, with si_fd e_read.
 *   stdout            every tick writes "pid=P n=N\n" to it as to the log (a test may read it
 *                     through a pipe whose read end only the test holds).
 *
 * On a verify request it checks flags and sizes, reads each pipe until it is empty (the data
 * must be exactly the current generation's, in order), then writes the next generation, which
 * stays buffered for the next dump.
 *
 * usage: pipes CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <poll.h>
#include <sys/ioctl.h>

#define C_LEN 777

#define B_SIZE (128 * 1024)

static int a_read, a_write, a_dup, b_read, b_write, c_read, d_write, e_read, e_write;
static int e_flags;
static volatile sig_atomic_t e_signals, e_fd = -1;

/* The kernel's O_LARGEFILE (glibc defines O_LARGEFILE as 0 on 64-bit). */
#define KERNEL_O_LARGEFILE 0100000

static void on_e_signal(int sig, siginfo_t *si, void *ctx)
{
    (void)sig;
    (void)ctx;
    e_signals++;
    e_fd = si->si_fd;
}

/* Pipe E's signal-driven I/O: flags, owner and signal as set, and a write signals us. */
static void check_async(void)
{
    int fl = fcntl(e_read, F_GETFL);
    if (fl != e_flags)
        fail("pipe E read end: flags %#o, want %#o", fl, e_flags);
    struct f_owner_ex ex = {0};
    if (fcntl(e_read, F_GETOWN_EX, &ex) != 0 || ex.type != F_OWNER_PID || ex.pid != getpid())
        fail("pipe E read end: owner type %d pid %d, want this process %d", ex.type, ex.pid,
             (int)getpid());
    int sig = fcntl(e_read, F_GETSIG);
    if (sig != SIGRTMIN + 3)
        fail("pipe E read end: F_GETSIG %d, want %d", sig, SIGRTMIN + 3);
    if (fcntl(a_read, F_GETFL) & KERNEL_O_LARGEFILE)
        fail("pipe A read end: O_LARGEFILE is set, pipe(2) never sets it");
    if (fail_msg[0])
        return;
    e_signals = 0;
    e_fd = -1;
    write_all(e_write, "e", 1, "pipe E");
    if (e_signals != 1 || e_fd != e_read)
        fail("pipe E: a write gave %d signal(s) with si_fd %d, want 1 with si_fd %d",
             (int)e_signals, (int)e_fd, e_read);
    char c;
    if (read(e_read, &c, 1) != 1)
        fail("pipe E: reading the byte back: %s", strerror(errno));
}
static char c_byte(size_t i) { return (char)('C' + i % 23); }
static unsigned generation;

static size_t a_len(unsigned g) { return 1000 + 13 * (size_t)g; }
static char a_byte(unsigned g, size_t i) { return (char)('a' + (g * 7 + i) % 26); }
static size_t b_len(unsigned g) { return 3000 + 101 * (size_t)g; }
static char b_byte(unsigned g, size_t i) { return (char)(mix(g * 100000 + i) & 0xff); }

static void fill(unsigned g)
{
    char buf[4096];
    for (size_t off = 0, k = 0; off < a_len(g); off += 100, k++) {
        size_t n = a_len(g) - off < 100 ? a_len(g) - off : 100;
        for (size_t i = 0; i < n; i++)
            buf[i] = a_byte(g, off + i);
        write_all(k % 2 ? a_dup : a_write, buf, n, "pipe A");
    }
    for (size_t off = 0; off < b_len(g); off += sizeof buf) {
        size_t n = b_len(g) - off < sizeof buf ? b_len(g) - off : sizeof buf;
        for (size_t i = 0; i < n; i++)
            buf[i] = b_byte(g, off + i);
        write_all(b_write, buf, n, "pipe B");
    }
}

static void check_fd(int fd, int acc, int nonblock, int cloexec, const char *what)
{
    int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
    struct stat st;
    if (fl < 0 || fdfl < 0 || fstat(fd, &st) != 0) {
        fail("%s (fd %d): %s", what, fd, strerror(errno));
        return;
    }
    if (!S_ISFIFO(st.st_mode))
        fail("%s (fd %d): not a pipe (mode %o)", what, fd, st.st_mode);
    if ((fl & O_ACCMODE) != acc)
        fail("%s (fd %d): access mode %d, want %d", what, fd, fl & O_ACCMODE, acc);
    if (!!(fl & O_NONBLOCK) != nonblock)
        fail("%s (fd %d): O_NONBLOCK is %s", what, fd, nonblock ? "clear" : "set");
    if (!!(fdfl & FD_CLOEXEC) != cloexec)
        fail("%s (fd %d): FD_CLOEXEC is %s", what, fd, cloexec ? "clear" : "set");
}

/* Reads exactly `len` bytes of generation g from `fd` (FIONREAD must say so first). */
static void drain(int fd, size_t len, unsigned g, char (*byte)(unsigned, size_t), const char *what)
{
    int avail = -1;
    if (ioctl(fd, FIONREAD, &avail) != 0 || avail != (int)len) {
        fail("%s: %d bytes buffered, want %zu", what, avail, len);
        return;
    }
    char buf[4096];
    size_t got = 0;
    while (got < len) {
        size_t want = len - got < sizeof buf ? len - got : sizeof buf;
        ssize_t n = read(fd, buf, want);
        if (n <= 0) {
            fail("%s: read after %zu of %zu bytes: %s", what, got, len,
                 n == 0 ? "end of file" : strerror(errno));
            return;
        }
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != byte(g, got + (size_t)i)) {
                fail("%s: byte %zu differs (generation %u)", what, got + (size_t)i, g);
                return;
            }
        got += (size_t)n;
    }
}

/* The widowed pipes: C keeps its bytes and reports no writer, D reports no reader. */
static void check_widowed(void)
{
    struct pollfd pf[2] = {{.fd = c_read}, {.fd = d_write}};
    if (poll(pf, 2, 0) < 0) {
        fail("poll on the widowed pipes: %s", strerror(errno));
        return;
    }
    if (!(pf[0].revents & POLLHUP))
        fail("pipe C: a writer exists again (poll revents %#x)", pf[0].revents);
    if (!(pf[1].revents & POLLERR))
        fail("pipe D: a reader exists again (poll revents %#x)", pf[1].revents);
    int avail = -1;
    if (ioctl(c_read, FIONREAD, &avail) != 0 || avail != C_LEN) {
        fail("pipe C: %d bytes buffered, want %d", avail, C_LEN);
        return;
    }
    int t[2];
    if (pipe2(t, O_CLOEXEC) != 0) {
        fail("pipe2: %s", strerror(errno));
        return;
    }
    char buf[C_LEN];
    ssize_t n = tee(c_read, t[1], C_LEN, SPLICE_F_NONBLOCK);
    if (n != C_LEN || read(t[0], buf, C_LEN) != C_LEN)
        fail("pipe C: tee copied %zd of %d bytes: %s", n, C_LEN, strerror(errno));
    else
        for (size_t i = 0; i < C_LEN; i++)
            if (buf[i] != c_byte(i)) {
                fail("pipe C: byte %zu differs", i);
                break;
            }
    close(t[0]);
    close(t[1]);
}

static void verify(void)
{
    check_fd(c_read, O_RDONLY, 0, 0, "pipe C read end");
    check_fd(d_write, O_WRONLY, 0, 0, "pipe D write end");
    check_widowed();
    check_async();
    check_fd(a_read, O_RDONLY, 0, 1, "pipe A read end");
    check_fd(a_write, O_WRONLY, 0, 1, "pipe A write end");
    check_fd(a_dup, O_WRONLY, 0, 0, "pipe A dup'ed write end");
    check_fd(b_read, O_RDONLY, 1, 0, "pipe B read end");
    check_fd(b_write, O_WRONLY, 1, 0, "pipe B write end");
    int sz = fcntl(b_read, F_GETPIPE_SZ);
    if (sz != B_SIZE)
        fail("pipe B: size %d, want %d", sz, B_SIZE);
    /* a_write and a_dup share one description: a status flag set through one shows on both. */
    if (fcntl(a_dup, F_SETFL, O_NONBLOCK) != 0 || !(fcntl(a_write, F_GETFL) & O_NONBLOCK))
        fail("pipe A: the dup'ed write end no longer shares its description");
    fcntl(a_dup, F_SETFL, 0);
    if (fail_msg[0])
        return;
    drain(a_read, a_len(generation), generation, a_byte, "pipe A");
    drain(b_read, b_len(generation), generation, b_byte, "pipe B");
    char c;
    if (read(b_read, &c, 1) != -1 || errno != EAGAIN)
        fail("pipe B: reading it empty does not fail with EAGAIN");
    if (fail_msg[0])
        return;
    generation++;
    fill(generation);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_init(argv[1]);
    int log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0)
        die("cannot open log %s: %s", argv[2], strerror(errno));
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        die("pipe2: %s", strerror(errno));
    a_read = p[0];
    a_write = p[1];
    a_dup = dup(a_write);
    if (pipe2(p, O_NONBLOCK) != 0)
        die("pipe2: %s", strerror(errno));
    b_read = p[0];
    b_write = p[1];
    if (a_dup < 0 || fcntl(b_write, F_SETPIPE_SZ, B_SIZE) != B_SIZE)
        die("dup/F_SETPIPE_SZ: %s", strerror(errno));
    fill(generation);
    if (pipe(p) != 0)
        die("pipe: %s", strerror(errno));
    c_read = p[0];
    char cbuf[C_LEN];
    for (size_t i = 0; i < C_LEN; i++)
        cbuf[i] = c_byte(i);
    write_all(p[1], cbuf, C_LEN, "pipe C");
    close(p[1]);
    if (pipe(p) != 0)
        die("pipe: %s", strerror(errno));
    d_write = p[1];
    close(p[0]);
    if (pipe(p) != 0)
        die("pipe: %s", strerror(errno));
    e_read = p[0];
    e_write = p[1];
    struct sigaction sa = {.sa_sigaction = on_e_signal, .sa_flags = SA_SIGINFO | SA_RESTART};
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGRTMIN + 3, &sa, NULL) != 0 || fcntl(e_read, F_SETOWN, getpid()) != 0 ||
        fcntl(e_read, F_SETSIG, SIGRTMIN + 3) != 0 ||
        fcntl(e_read, F_SETFL, fcntl(e_read, F_GETFL) | O_ASYNC) != 0)
        die("signal-driven I/O on pipe E: %s", strerror(errno));
    e_flags = fcntl(e_read, F_GETFL);

    char line[128];
    unsigned long long counter = 0;
    for (;;) {
        sleep_ms(20);
        counter++;
        int n = snprintf(line, sizeof line, "pid=%d n=%llu\n", (int)getpid(), counter);
        write_all(log_fd, line, (size_t)n, "log");
        write_all(STDOUT_FILENO, line, (size_t)n, "stdout");
        if (ctl_verify_requested()) {
            verify();
            ctl_report(counter);
        }
        int code = ctl_exit_requested();
        if (code >= 0)
            exit(code);
    }
}
