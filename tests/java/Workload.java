// A JVM sample service for scalewise's end-to-end tests, with self-recorded ground truth.
//
//   java Workload --workers N [--cpu-ms X] [--lock-ms Z] [--alloc-mb M] [--port P] [--server pool]
//
// Thread per connection (blocking java.net sockets, as servlet containers with blocking I/O do),
// or with `--server pool` the JDK's com.sun.net.httpserver: a dispatcher thread on a selector
// handing requests to a fixed pool of N worker threads, headers and body written separately with
// the JDK's defaults (Nagle on), as many services built on it run;
// each request on /work waits for one of N worker permits, burns X ms of thread CPU time, takes a
// global lock for Z ms, and allocates M MB of short-lived garbage. GET /truth returns cumulative
// truth: request latency, thread CPU (ThreadMXBean), waits, and GC time (GarbageCollectorMXBean).
// Only the JDK is used.

import java.io.*;
import java.lang.management.*;
import java.net.*;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;
import java.util.concurrent.Semaphore;
import com.sun.net.httpserver.HttpServer;

public class Workload {
    static double cpuMs = 0, lockMs = 0, allocMb = 0;
    static Semaphore workers;
    static final Object LOCK = new Object();
    static final ThreadMXBean THREADS = ManagementFactory.getThreadMXBean();
    static final long START = System.nanoTime();
    static final long GC_START = gcMillis();
    // Truth sums, guarded by Workload.class.
    static double requests, latencyS, cpuS, lockWaitS, workerWaitS;
    // A small live set so collections have something to trace; the rest dies young.
    static final byte[][] RING = new byte[64][];
    static volatile long sink;

    static long gcMillis() {
        long t = 0;
        for (GarbageCollectorMXBean gc : ManagementFactory.getGarbageCollectorMXBeans()) {
            t += Math.max(0, gc.getCollectionTime());
        }
        return t;
    }

    static void burn(double ms) {
        long until = THREADS.getCurrentThreadCpuTime() + (long) (ms * 1e6);
        long x = 0x9e3779b97f4a7c15L;
        while (THREADS.getCurrentThreadCpuTime() < until) {
            for (int i = 0; i < 2000; i++) {
                x ^= x << 13; x ^= x >>> 7; x ^= x << 17;
            }
        }
        sink += x;
    }

    static void allocate(double mb, int seed) {
        int chunks = (int) (mb * 16); // 64 KiB each
        for (int i = 0; i < chunks; i++) {
            byte[] b = new byte[64 * 1024];
            b[i % b.length] = (byte) i;
            sink += b[(i * 7) % b.length];
            if ((i & 7) == 0) {
                RING[(seed + i) & 63] = b;
            }
        }
    }

    static void handle(int seed) throws InterruptedException {
        long t0 = System.nanoTime();
        long cpu0 = THREADS.getCurrentThreadCpuTime();
        workers.acquire();
        double workerWait = (System.nanoTime() - t0) / 1e9;
        double lockWait = 0;
        try {
            if (cpuMs > 0) burn(cpuMs);
            if (allocMb > 0) allocate(allocMb, seed);
            if (lockMs > 0) {
                long w = System.nanoTime();
                synchronized (LOCK) {
                    lockWait = (System.nanoTime() - w) / 1e9;
                    Thread.sleep((long) lockMs, (int) ((lockMs % 1) * 1e6));
                }
            }
        } finally {
            workers.release();
        }
        double cpu = (THREADS.getCurrentThreadCpuTime() - cpu0) / 1e9;
        double latency = (System.nanoTime() - t0) / 1e9;
        synchronized (Workload.class) {
            requests += 1; latencyS += latency; cpuS += cpu;
            lockWaitS += lockWait; workerWaitS += workerWait;
        }
    }

    static String truth() {
        synchronized (Workload.class) {
            double wall = (System.nanoTime() - START) / 1e9;
            double gc = (gcMillis() - GC_START) / 1e3;
            return String.format(java.util.Locale.ROOT,
                "{\"requests\":%.0f,\"latency_s\":%.6f,\"cpu_s\":%.6f,\"cpu_wait_s\":0.0,"
                + "\"downstream_s\":0.0,\"lock_wait_s\":%.6f,\"pool_wait_s\":0.0,"
                + "\"worker_wait_s\":%.6f,\"gc_s\":%.6f,\"wall_s\":%.6f}",
                requests, latencyS, cpuS, lockWaitS, workerWaitS, gc, wall);
        }
    }

    static void serve(Socket s) {
        try (s) {
            s.setTcpNoDelay(true);
            BufferedReader in = new BufferedReader(new InputStreamReader(s.getInputStream(), StandardCharsets.ISO_8859_1));
            OutputStream out = s.getOutputStream();
            int seed = 0;
            while (true) {
                String first = in.readLine();
                if (first == null) return;
                String line;
                while ((line = in.readLine()) != null && !line.isEmpty()) { }
                String path = first.split(" ").length > 1 ? first.split(" ")[1] : "/";
                String body;
                if (path.equals("/truth")) {
                    body = truth();
                } else {
                    handle(seed++);
                    body = "{\"ok\":true}";
                }
                byte[] b = body.getBytes(StandardCharsets.UTF_8);
                byte[] head = ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + b.length + "\r\n\r\n").getBytes(StandardCharsets.ISO_8859_1);
                byte[] msg = new byte[head.length + b.length];
                System.arraycopy(head, 0, msg, 0, head.length);
                System.arraycopy(b, 0, msg, head.length, b.length);
                out.write(msg); // one write: the socket signal ends "awaiting" at the first byte
                out.flush();
            }
        } catch (Exception e) {
            // a client went away: close the connection, keep serving others
        }
    }

    public static void main(String[] args) throws Exception {
        int port = 0, n = 8;
        boolean pool = false;
        for (int i = 0; i + 1 < args.length; i += 2) {
            switch (args[i]) {
                case "--port": port = Integer.parseInt(args[i + 1]); break;
                case "--workers": n = Integer.parseInt(args[i + 1]); break;
                case "--cpu-ms": cpuMs = Double.parseDouble(args[i + 1]); break;
                case "--lock-ms": lockMs = Double.parseDouble(args[i + 1]); break;
                case "--alloc-mb": allocMb = Double.parseDouble(args[i + 1]); break;
                case "--server": pool = args[i + 1].equals("pool"); break;
                default: System.err.println("unknown flag " + args[i]); System.exit(64);
            }
        }
        workers = new Semaphore(n, true);
        if (pool) {
            HttpServer server = HttpServer.create(new InetSocketAddress(InetAddress.getByName("127.0.0.1"), port), 128);
            server.setExecutor(Executors.newFixedThreadPool(n));
            server.createContext("/", ex -> {
                String path = ex.getRequestURI().getPath();
                String body;
                if (path.equals("/truth")) {
                    body = truth();
                } else {
                    try {
                        handle(0);
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                    }
                    body = "{\"ok\":true}";
                }
                byte[] b = body.getBytes(StandardCharsets.UTF_8);
                ex.getResponseHeaders().set("Content-Type", "application/json");
                ex.sendResponseHeaders(200, b.length);
                try (OutputStream os = ex.getResponseBody()) {
                    os.write(b);
                }
            });
            server.start();
            System.out.println("listening 127.0.0.1:" + server.getAddress().getPort());
            System.out.flush();
            return;
        }
        ServerSocket ss = new ServerSocket(port, 128, InetAddress.getByName("127.0.0.1"));
        System.out.println("listening 127.0.0.1:" + ss.getLocalPort());
        System.out.flush();
        while (true) {
            Socket s = ss.accept();
            Thread t = new Thread(() -> serve(s), "conn-" + s.getPort());
            t.setDaemon(true);
            t.start();
        }
    }
}
