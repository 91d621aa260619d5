/*
 * sleepers: a C process with N threads (the leader and N - 1 others) that each sleep in a
 * 10 ms nanosleep loop; for measuring the per-thread cost of a restore (tests/restore-speed.sh).
 * The leader appends a line to LOG_FILE every 10 ms.
 *
 * usage: sleepers N LOG_FILE
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void *sleeper(void *arg)
{
    (void)arg;
    struct timespec ts = {0, 10 * 1000 * 1000};
    for (;;)
        nanosleep(&ts, NULL);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s N LOG_FILE\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[1]);
    for (int i = 1; i < n; i++) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 64 * 1024);
        if (pthread_create(&t, &attr, sleeper, NULL) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    unsigned long long k = 0;
    struct timespec ts = {0, 10 * 1000 * 1000};
    for (;;) {
        FILE *f = fopen(argv[2], "a");
        if (f) {
            fprintf(f, "pid=%d n=%llu\n", (int)getpid(), k++);
            fclose(f);
        }
        nanosleep(&ts, NULL);
    }
}
