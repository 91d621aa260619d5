/*
 * aio: a crest test victim holding AIO contexts (io_setup) with completed, unreaped events.
 *
 * Context A (io_setup(64)): five reads of DATA_FILE (fd 100) submitted, the first two reaped,
 *   so three completed events (data 2, 3, 4) wait in the ring between head and tail.
 * Context B (io_setup(1), the smallest ring): reads submitted and reaped until the ring is
 *   nearly full, then four more submitted and left unreaped, so the unreaped events wrap
 *   around the ring's end (head > tail).
 * Both rings' header (nr, head, tail) is recorded at start; every verify checks it is
 * unchanged, that the context ids still name the contexts (io_getevents with nothing to
 * reap), and the read buffers. A "final" verify (once per process) reaps every waiting
 * event, checking each (data, object, result) and that none is left; then submits a new read
 * of DATA_FILE on each context, which must complete at the next tail with the file's content.
 *
 * CTL/info: "nr_a N\nhead_a H\ntail_a T\nnr_b N\nhead_b H\ntail_b T\n".
 *
 * usage: aio CTL_DIR LOG_FILE DATA_FILE
 */
#include "victim.h"

#include <linux/aio_abi.h>
#include <sys/syscall.h>

#define DATA_FD 100
#define DATA "crest aio victim: the file's content\n"
#define NR_A 5
#define REAPED_A 2
#define WAITING_B 4

struct ring {
    unsigned id, nr, head, tail, magic, compat, incompat, header_length;
    struct io_event events[];
};

struct context {
    aio_context_t id;
    unsigned nr, head, tail; /* as recorded at start */
    unsigned first;          /* aio_data of the oldest waiting event */
    unsigned waiting;        /* events waiting at start */
};

static struct context ca, cb;
static struct iocb iocbs[256];
static char bufs[256][64];
static int final_done;

static long io_setup(unsigned n, aio_context_t *ctx) { return syscall(__NR_io_setup, n, ctx); }
static long io_submit(aio_context_t ctx, long n, struct iocb **p)
{
    return syscall(__NR_io_submit, ctx, n, p);
}
static long io_getevents(aio_context_t ctx, long min, long max, struct io_event *ev,
                         struct timespec *t)
{
    return syscall(__NR_io_getevents, ctx, min, max, ev, t);
}

static volatile struct ring *ring_of(const struct context *c)
{
    return (volatile struct ring *)c->id;
}

/* Submits one read of the data file into slot `i`, tagged with aio_data `i`. */
static void submit_read(const struct context *c, unsigned i)
{
    struct iocb *p = &iocbs[i];
    memset(p, 0, sizeof *p);
    memset(bufs[i], 0, sizeof bufs[i]);
    p->aio_data = i;
    p->aio_lio_opcode = IOCB_CMD_PREAD;
    p->aio_fildes = DATA_FD;
    p->aio_buf = (uint64_t)(uintptr_t)bufs[i];
    p->aio_nbytes = strlen(DATA);
    if (io_submit(c->id, 1, &p) != 1)
        die("io_submit: %s", strerror(errno));
}

static void reap_one(const struct context *c)
{
    struct io_event ev;
    if (io_getevents(c->id, 1, 1, &ev, NULL) != 1)
        die("io_getevents: %s", strerror(errno));
}

static void record(struct context *c)
{
    volatile struct ring *r = ring_of(c);
    c->nr = r->nr;
    c->head = r->head;
    c->tail = r->tail;
}

static void setup(void)
{
    if (io_setup(64, &ca.id) != 0 || io_setup(1, &cb.id) != 0)
        die("io_setup: %s", strerror(errno));
    for (unsigned i = 0; i < NR_A; i++)
        submit_read(&ca, i);
    for (unsigned i = 0; i < REAPED_A; i++)
        reap_one(&ca);
    ca.first = REAPED_A;
    ca.waiting = NR_A - REAPED_A;
    record(&ca);

    /* B: go round the ring so that the waiting events wrap at its end. Slots 100.. hold the
     * waiting requests' iocbs; the reaped ones reuse slot 99. */
    unsigned nr = ring_of(&cb)->nr;
    for (unsigned i = 0; i + 2 < nr; i++) {
        submit_read(&cb, 99);
        reap_one(&cb);
    }
    for (unsigned i = 0; i < WAITING_B; i++)
        submit_read(&cb, 100 + i);
    cb.first = 100;
    cb.waiting = WAITING_B;
    record(&cb);
    if (cb.head <= cb.tail)
        die("context B does not wrap: head %u tail %u", cb.head, cb.tail);
}

static void check_header(const char *name, const struct context *c)
{
    volatile struct ring *r = ring_of(c);
    if (r->nr != c->nr || r->head != c->head || r->tail != c->tail)
        fail("context %s: nr %u head %u tail %u, want %u %u %u", name, r->nr, r->head, r->tail,
             c->nr, c->head, c->tail);
    /* Reaps nothing (min 0, max 0): fails with EINVAL if the id names no context. */
    struct timespec zero = {0, 0};
    if (io_getevents(c->id, 0, 0, NULL, &zero) != 0)
        fail("context %s: io_getevents on id %#llx: %s", name, (unsigned long long)c->id,
             strerror(errno));
}

static void check_buffer(const char *name, unsigned i)
{
    if (memcmp(bufs[i], DATA, strlen(DATA)) != 0)
        fail("context %s: read %u holds '%.*s'", name, i, (int)strlen(DATA), bufs[i]);
}

/* Reaps the waiting events of `c` and checks them, then a new read. */
static void final_check(const char *name, struct context *c)
{
    struct io_event ev[8];
    struct timespec zero = {0, 0};
    long got = io_getevents(c->id, 0, 8, ev, &zero);
    if (got != (long)c->waiting) {
        fail("context %s: %ld events waiting, want %u", name, got, c->waiting);
        return;
    }
    for (unsigned k = 0; k < c->waiting; k++) {
        unsigned i = c->first + k;
        if (ev[k].data != i || ev[k].obj != (uint64_t)(uintptr_t)&iocbs[i] ||
            ev[k].res != (int64_t)strlen(DATA))
            fail("context %s: event %u is data %llu obj %#llx res %lld, want %u %p %zu", name,
                 k, (unsigned long long)ev[k].data, (unsigned long long)ev[k].obj,
                 (long long)ev[k].res, i, (void *)&iocbs[i], strlen(DATA));
        check_buffer(name, i);
    }
    unsigned want_tail = (c->tail + 1) % c->nr;
    submit_read(c, 200);
    if (io_getevents(c->id, 1, 1, ev, NULL) != 1) {
        fail("context %s: the new read: io_getevents: %s", name, strerror(errno));
        return;
    }
    if (ev[0].data != 200 || ev[0].res != (int64_t)strlen(DATA))
        fail("context %s: the new read completed as data %llu res %lld", name,
             (unsigned long long)ev[0].data, (long long)ev[0].res);
    check_buffer(name, 200);
    if (ring_of(c)->tail != want_tail || ring_of(c)->head != want_tail)
        fail("context %s: after the new read head %u tail %u, want %u %u", name,
             ring_of(c)->head, ring_of(c)->tail, want_tail, want_tail);
}

static void verify(int final)
{
    check_header("A", &ca);
    check_header("B", &cb);
    for (unsigned k = 0; k < ca.waiting; k++)
        check_buffer("A", ca.first + k);
    for (unsigned k = 0; k < cb.waiting; k++)
        check_buffer("B", cb.first + k);
    if (!final || fail_msg[0])
        return;
    if (final_done) {
        fail("final verify asked twice");
        return;
    }
    final_done = 1;
    final_check("A", &ca);
    final_check("B", &cb);
}

int main(int argc, char **argv)
{
    if (argc != 4)
        die("usage: aio CTL_DIR LOG_FILE DATA_FILE");
    ctl_init(argv[1]);
    int fd = open(argv[3], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die("open %s: %s", argv[3], strerror(errno));
    write_all(fd, DATA, strlen(DATA), "data file");
    if (dup3(fd, DATA_FD, O_CLOEXEC) != DATA_FD)
        die("dup3: %s", strerror(errno));
    close(fd);
    setup();
    char info[256];
    snprintf(info, sizeof info, "nr_a %u\nhead_a %u\ntail_a %u\nnr_b %u\nhead_b %u\ntail_b %u\n",
             ca.nr, ca.head, ca.tail, cb.nr, cb.head, cb.tail);
    ctl_write_file(argv[1], "info", info);

    int log_fd = log_open(argv[2]);
    for (unsigned long long n = 1;; n++) {
        log_tick(log_fd, n);
        size_t blen = 0;
        char *body = read_file(ctl_request, &blen);
        if (ctl_verify_requested()) {
            fail_msg[0] = 0;
            verify(body && blen >= 5 && memcmp(body, "final", 5) == 0);
            ctl_report(n);
        }
        free(body);
        int code = ctl_exit_requested();
        if (code >= 0)
            exit(code);
        sleep_ms(20);
    }
}
