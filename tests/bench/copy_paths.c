/*
 * Which way should a dump move page data from the target into the page file?
 *
 *   A. process_vm_readv from crest in 8 MiB batches, then write() (what crest does: crest sees
 *      the bytes, so it can skip all-zero pages and hash what it writes);
 *   B. vmsplice() inside the target (what a parasite would do) into a pipe that crest splice()s
 *      to the file (the bytes never pass through crest).
 *
 * A forked child holds SIZE MiB of non-zero data and plays the target; it vmsplices on request.
 * Five rounds of each, printed as times and throughput.
 *
 * usage: cc -O2 -o copy_paths tests/bench/copy_paths.c && ./copy_paths [SIZE_MIB] [OUT_FILE]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024UL * 1024)
#define BATCH (8 * MIB)
#define PIPE_CHUNK (1 << 20)

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* The target: on each byte from `go`, vmsplice all of `mem` into `pipe_w`. */
static void target_loop(char *mem, size_t size, int go, int pipe_w)
{
    char b;
    while (read(go, &b, 1) == 1) {
        for (size_t off = 0; off < size;) {
            size_t len = size - off < PIPE_CHUNK ? size - off : PIPE_CHUNK;
            struct iovec iov = { mem + off, len };
            ssize_t n = vmsplice(pipe_w, &iov, 1, 0);
            if (n < 0) {
                perror("vmsplice");
                _exit(1);
            }
            off += n;
        }
    }
    _exit(0);
}

static void report(const char *what, size_t size, double t0, double t1, double t2)
{
    printf("%-24s %7.1f ms (%5.0f MiB/s), fsync %6.1f ms\n", what, (t1 - t0) * 1e3,
           size / MIB / (t1 - t0), (t2 - t1) * 1e3);
}

int main(int argc, char **argv)
{
    size_t size = (argc > 1 ? strtoul(argv[1], NULL, 10) : 384) * MIB;
    const char *out = argc > 2 ? argv[2] : "copy_paths.out";
    char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || size % BATCH) {
        fprintf(stderr, "SIZE_MIB must be a multiple of 8 and fit in memory\n");
        return 1;
    }
    for (size_t i = 0; i < size; i += 8)
        *(uint64_t *)(mem + i) = i * 0x9E3779B97F4A7C15ULL + 1;

    int pipe_fds[2], go[2];
    if (pipe(pipe_fds) || pipe(go)) {
        perror("pipe");
        return 1;
    }
    fcntl(pipe_fds[1], F_SETPIPE_SZ, PIPE_CHUNK);
    pid_t target = fork();
    if (target == 0)
        target_loop(mem, size, go[0], pipe_fds[1]);
    close(pipe_fds[1]);

    char *buf = malloc(BATCH);
    for (int round = 0; round < 5; round++) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        double t0 = now();
        for (size_t off = 0; off < size; off += BATCH) {
            struct iovec local = { buf, BATCH }, remote = { mem + off, BATCH };
            if (process_vm_readv(target, &local, 1, &remote, 1, 0) != (ssize_t)BATCH ||
                write(fd, buf, BATCH) != (ssize_t)BATCH) {
                perror("process_vm_readv/write");
                return 1;
            }
        }
        double t1 = now();
        fsync(fd);
        report("process_vm_readv+write", size, t0, t1, now());
        close(fd);

        fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        t0 = now();
        if (write(go[1], "x", 1) != 1)
            return 1;
        for (size_t got = 0; got < size;) {
            ssize_t n = splice(pipe_fds[0], NULL, fd, NULL, PIPE_CHUNK, SPLICE_F_MOVE);
            if (n <= 0) {
                perror("splice");
                return 1;
            }
            got += n;
        }
        t1 = now();
        fsync(fd);
        report("vmsplice+splice", size, t0, t1, now());
        close(fd);
    }
    unlink(out);
    kill(target, SIGKILL);
    waitpid(target, NULL, 0);
    return 0;
}
