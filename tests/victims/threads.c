/*
 * threads: a two-thread victim that crest must refuse to dump (multi-threaded processes come in
 * a later issue) and leave running. The main thread appends "pid=<pid> n=<counter>" to a log
 * every ~20 ms, so a test can see that it keeps running after the refused dump; the second
 * thread also ticks, and the main thread checks that it still does (it exits with status 111 when
 * the second thread stops making progress for over 10 s).
 *
 * usage: threads CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <pthread.h>

static volatile unsigned long long worker_ticks;

static void *worker(void *arg)
{
    (void)arg;
    for (;;) {
        sleep_ms(20);
        __atomic_add_fetch(&worker_ticks, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_init(argv[1]);
    int log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0)
        die("cannot open log %s: %s", argv[2], strerror(errno));
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL) != 0)
        die("pthread_create failed");

    unsigned long long counter = 0, last_worker = 0, stalled_ticks = 0;
    char line[128];
    for (;;) {
        sleep_ms(20);
        counter++;
        unsigned long long w = __atomic_load_n(&worker_ticks, __ATOMIC_RELAXED);
        stalled_ticks = (w == last_worker) ? stalled_ticks + 1 : 0;
        last_worker = w;
        if (stalled_ticks > 500)
            die("the second thread made no progress for %llu ticks", stalled_ticks);
        int n = snprintf(line, sizeof line, "pid=%d n=%llu\n", (int)getpid(), counter);
        write_all(log_fd, line, (size_t)n, "log");
        if (ctl_verify_requested()) {
            if (stalled_ticks > 5)
                fail("the second thread is stalled");
            ctl_report(counter);
        }
        int code = ctl_exit_requested();
        if (code >= 0)
            exit(code);
    }
}
