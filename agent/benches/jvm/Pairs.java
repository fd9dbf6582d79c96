// The overhead bench's JVM service (OVERHEAD_SERVICE=jvm): one JVM holding both ends of PAIRS
// loopback connections, as the measurement did. A server thread per connection answers
// each 4-byte request after 2 ms; PAIRS client threads in the same JVM send a request, read the
// answer and pause THINK_MS; idle threads wait on a monitor so that the JVM has about THREADS
// threads. Prints its port, then serves until killed. Only the JDK is used.
//
//   java Pairs THREADS PAIRS THINK_MS

import java.io.*;
import java.net.*;

public class Pairs {
    public static void main(String[] args) throws Exception {
        int threads = Integer.parseInt(args[0]);
        int pairs = Integer.parseInt(args[1]);
        long think = Long.parseLong(args[2]);
        ServerSocket server = new ServerSocket(0, 1024, InetAddress.getLoopbackAddress());
        int port = server.getLocalPort();
        Thread acceptor = new Thread(() -> {
            try {
                while (true) {
                    Socket s = server.accept();
                    s.setTcpNoDelay(true);
                    Thread t = new Thread(() -> serve(s));
                    t.setDaemon(true);
                    t.start();
                }
            } catch (IOException e) {
                // server closed: the process is ending
            }
        });
        acceptor.start();
        for (int i = 0; i < pairs; i++) {
            final long stagger = (i * 7919L) % Math.max(1, think);
            new Thread(() -> client(port, think, stagger)).start();
        }
        // Each pair is two threads (client, server); the JVM's own threads (GC, JIT, signal
        // handling: about 20 here) and main and the acceptor count towards THREADS.
        final Object monitor = new Object();
        for (int i = 0; i < threads - 2 * pairs - 22; i++) {
            Thread t = new Thread(() -> {
                synchronized (monitor) {
                    while (true) {
                        try {
                            monitor.wait();
                        } catch (InterruptedException e) {
                            return;
                        }
                    }
                }
            });
            t.setDaemon(true);
            t.start();
        }
        System.out.println(port);
        System.out.flush();
    }

    static boolean readFully(InputStream in, byte[] b) throws IOException {
        int got = 0;
        while (got < b.length) {
            int n = in.read(b, got, b.length - got);
            if (n < 0) return false;
            got += n;
        }
        return true;
    }

    static void serve(Socket s) {
        try (s) {
            InputStream in = s.getInputStream();
            OutputStream out = s.getOutputStream();
            byte[] b = new byte[4];
            while (readFully(in, b)) {
                Thread.sleep(2);
                out.write(b);
            }
        } catch (Exception e) {
            // client gone
        }
    }

    static void client(int port, long think, long stagger) {
        try (Socket s = new Socket(InetAddress.getLoopbackAddress(), port)) {
            s.setTcpNoDelay(true);
            InputStream in = s.getInputStream();
            OutputStream out = s.getOutputStream();
            byte[] ping = "ping".getBytes();
            byte[] b = new byte[4];
            Thread.sleep(stagger);
            while (true) {
                out.write(ping);
                if (!readFully(in, b)) return;
                Thread.sleep(think);
            }
        } catch (Exception e) {
            // server gone
        }
    }
}
