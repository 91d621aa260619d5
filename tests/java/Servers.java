import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.DatagramChannel;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileSystems;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardWatchEventKinds;
import java.nio.file.WatchEvent;
import java.nio.file.WatchKey;
import java.nio.file.WatchService;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The servers of the JVM test victim's {@code server} mode: what a JVM that serves something
 * holds, each on an ephemeral loopback port.
 *
 * <ul>
 *   <li>{@code com.sun.net.httpserver} on 127.0.0.1 and on [::1]: {@code GET /hello} answers
 *       {@code hello <n> pid <pid>} (n counts the requests), {@code GET /watch} the events the
 *       WatchService saw, one {@code KIND NAME} per line;
 *   <li>an NIO echo server: a ServerSocketChannel and its SocketChannels on one Selector
 *       (epoll, and the selector's wakeup fd), echoing every byte back;
 *   <li>a DatagramChannel on 127.0.0.1 answering every datagram with {@code echo:} + it;
 *   <li>a WatchService (inotify) on {@code CTL_DIR/watched}.
 * </ul>
 *
 * <p>Once everything listens, {@code CTL_DIR/ports} is written atomically: one
 * {@code NAME PORT} line for each of http4, http6, nio and udp.
 */
final class Servers {
    static final long PID = ProcessHandle.current().pid();
    static final AtomicLong requests = new AtomicLong();
    static final List<String> watched = new CopyOnWriteArrayList<>();

    static void start(Path ctl) throws IOException {
        Path dir = ctl.resolve("watched");
        Files.createDirectories(dir);
        WatchService watch = FileSystems.getDefault().newWatchService();
        dir.register(watch, StandardWatchEventKinds.ENTRY_CREATE, StandardWatchEventKinds.ENTRY_DELETE);
        Victim.start("cv-watch", () -> watchLoop(watch));

        int http4 = http(InetAddress.getByName("127.0.0.1"));
        int http6 = http(InetAddress.getByName("::1"));

        Selector selector = Selector.open();
        ServerSocketChannel nio = ServerSocketChannel.open();
        nio.bind(new InetSocketAddress(InetAddress.getByName("127.0.0.1"), 0), 64);
        nio.configureBlocking(false);
        nio.register(selector, SelectionKey.OP_ACCEPT);
        Victim.start("cv-nio", () -> echoLoop(selector));

        DatagramChannel udp = DatagramChannel.open();
        udp.bind(new InetSocketAddress(InetAddress.getByName("127.0.0.1"), 0));
        Victim.start("cv-udp", () -> datagramLoop(udp));

        String ports = "http4 " + http4 + "\nhttp6 " + http6
                + "\nnio " + nio.socket().getLocalPort()
                + "\nudp " + udp.socket().getLocalPort() + "\n";
        Victim.writeAtomically(ctl.resolve("ports"), ports);
    }

    static int http(InetAddress address) throws IOException {
        HttpServer server = HttpServer.create(new InetSocketAddress(address, 0), 64);
        server.createContext("/hello", ex -> answer(ex, "hello " + requests.incrementAndGet() + " pid " + PID));
        server.createContext("/watch", ex -> answer(ex, String.join("", watched)));
        server.setExecutor(Executors.newFixedThreadPool(2, r -> {
            Thread t = new Thread(r, "cv-http");
            t.setDaemon(true);
            return t;
        }));
        server.start();
        return server.getAddress().getPort();
    }

    static void answer(HttpExchange ex, String body) throws IOException {
        byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
        // A length of 0 would mean a chunked body; -1 says there is none.
        ex.sendResponseHeaders(200, bytes.length == 0 ? -1 : bytes.length);
        try (OutputStream out = ex.getResponseBody()) {
            out.write(bytes);
        }
    }

    static void watchLoop(WatchService watch) {
        try {
            for (;;) {
                WatchKey key = watch.take();
                for (WatchEvent<?> e : key.pollEvents()) {
                    watched.add(e.kind().name() + " " + e.context() + "\n");
                }
                key.reset();
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    static void echoLoop(Selector selector) {
        ByteBuffer buf = ByteBuffer.allocate(4096);
        try {
            for (;;) {
                selector.select();
                Iterator<SelectionKey> it = selector.selectedKeys().iterator();
                while (it.hasNext()) {
                    SelectionKey key = it.next();
                    it.remove();
                    if (key.isAcceptable()) {
                        SocketChannel c = ((ServerSocketChannel) key.channel()).accept();
                        if (c != null) {
                            c.configureBlocking(false);
                            c.register(selector, SelectionKey.OP_READ);
                        }
                    } else if (key.isReadable()) {
                        SocketChannel c = (SocketChannel) key.channel();
                        buf.clear();
                        int n = c.read(buf);
                        if (n < 0) {
                            key.cancel();
                            c.close();
                            continue;
                        }
                        buf.flip();
                        while (buf.hasRemaining()) {
                            c.write(buf); // small echoes: the send buffer has room
                        }
                    }
                }
            }
        } catch (IOException e) {
            Victim.violation("NIO echo server: " + e);
        }
    }

    static void datagramLoop(DatagramChannel udp) {
        ByteBuffer buf = ByteBuffer.allocate(2048);
        try {
            for (;;) {
                buf.clear();
                SocketAddress from = udp.receive(buf);
                buf.flip();
                byte[] data = new byte[buf.remaining()];
                buf.get(data);
                byte[] prefix = "echo:".getBytes(StandardCharsets.UTF_8);
                ByteBuffer reply = ByteBuffer.allocate(prefix.length + data.length);
                reply.put(prefix).put(data).flip();
                udp.send(reply, from);
            }
        } catch (IOException e) {
            Victim.violation("UDP echo server: " + e);
        }
    }
}
