import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The crest demo application: a small HTTP service that keeps 48 MiB of live data (the system
 * property demo.live.mib sets another size: tests/compare-criu.sh uses 200), a scheduled
 * ticker and a worker pool busy, and logs a line every 10 ms. `tests/demo.sh` checkpoints it
 * with crest and restores it; the restored JVM carries on where it was, its clients' connections
 * included.
 *
 * usage: java Demo LOG_FILE PORT_FILE
 * It serves HTTP on 127.0.0.1 (an ephemeral port, or -Ddemo.port=N, written to PORT_FILE once it
 * listens):
 * GET /hello answers "hello N pid PID" (N counts the requests), GET /check re-checks the live
 * data and answers "ok pid=PID n=N" or "FAIL ...".
 */
public class Demo {
    /** Live data in MiB, one 1 MiB array each: -Ddemo.live.mib=N (default 48). */
    static final int ARRAYS = Integer.getInteger("demo.live.mib", 48);
    static final long[][] live = new long[ARRAYS][];
    static long expected;

    static long fill() {
        long sum = 0, x = 0x9e3779b97f4a7c15L;
        for (int i = 0; i < ARRAYS; i++) {
            live[i] = new long[128 * 1024]; // 1 MiB each
            for (int j = 0; j < live[i].length; j++) {
                x ^= x << 13; x ^= x >>> 7; x ^= x << 17;
                live[i][j] = x;
                sum += x * (j + 1);
            }
        }
        return sum;
    }

    static long checksum() {
        long sum = 0;
        for (long[] a : live) for (int j = 0; j < a.length; j++) sum += a[j] * (j + 1);
        return sum;
    }

    public static void main(String[] args) throws Exception {
        FileOutputStream log = new FileOutputStream(args[0], true);
        expected = fill();
        long pid = ProcessHandle.current().pid();
        AtomicLong ticks = new AtomicLong();
        AtomicLong work = new AtomicLong();
        AtomicLong lines = new AtomicLong();
        AtomicLong requests = new AtomicLong();
        ScheduledExecutorService ticker = Executors.newSingleThreadScheduledExecutor();
        ticker.scheduleAtFixedRate(ticks::incrementAndGet, 1, 1, TimeUnit.MILLISECONDS);
        var pool = Executors.newFixedThreadPool(4);
        for (int w = 0; w < 4; w++) {
            pool.submit(() -> {
                while (true) {
                    long s = 0;
                    for (int i = 0; i < 100_000; i++) s += i * 31L ^ (s >>> 3);
                    work.addAndGet(s == 42 ? 2 : 1);
                    Thread.sleep(1);
                }
            });
        }
        HttpServer http = HttpServer.create(new InetSocketAddress(InetAddress.getByName("127.0.0.1"),
                Integer.getInteger("demo.port", 0)), 64);
        http.createContext("/hello", ex -> answer(ex, "hello " + requests.incrementAndGet() + " pid " + pid));
        http.createContext("/check", ex -> answer(ex, checksum() == expected
                ? "ok pid=" + pid + " n=" + lines.get()
                : "FAIL live data changed"));
        http.setExecutor(Executors.newFixedThreadPool(2));
        http.start();
        Path ports = Paths.get(args[1]);
        Path tmp = Paths.get(args[1] + ".tmp");
        Files.write(tmp, (http.getAddress().getPort() + "\n").getBytes(StandardCharsets.UTF_8));
        Files.move(tmp, ports, StandardCopyOption.ATOMIC_MOVE);
        for (long n = 0; ; n++) {
            lines.set(n);
            String line = "pid=" + pid + " n=" + n + " ticks=" + ticks.get() + " work=" + work.get() + "\n";
            log.write(line.getBytes(StandardCharsets.UTF_8));
            Thread.sleep(10);
        }
    }

    static void answer(HttpExchange ex, String body) throws IOException {
        byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
        // A length of 0 would mean a chunked body; -1 says there is none.
        ex.sendResponseHeaders(200, bytes.length == 0 ? -1 : bytes.length);
        try (OutputStream out = ex.getResponseBody()) {
            out.write(bytes);
        }
    }
}
