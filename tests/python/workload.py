"""A Python sample service for scalewise's end-to-end tests: standard library only.

    python3 workload.py --cpu-ms X --backend HOST:PORT --backend-ms B [--lock-ms Z]

ThreadingHTTPServer (a thread per connection, the GIL shared): each /work request burns X ms of
thread CPU time, optionally holds a global lock for Z ms, then calls a slow HTTP backend over a
per-thread keep-alive connection. GET /truth returns cumulative truth with the same keys as the
Rust workloads. Prints "listening ADDR" when ready.
"""
import argparse
import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = None
truth = {"requests": 0.0, "latency_s": 0.0, "cpu_s": 0.0, "cpu_wait_s": 0.0, "downstream_s": 0.0,
         "lock_wait_s": 0.0, "pool_wait_s": 0.0, "worker_wait_s": 0.0, "gc_s": 0.0, "wall_s": 0.0}
truth_lock = threading.Lock()
big_lock = threading.Lock()
local = threading.local()
started = time.perf_counter()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, body):
        # One write: head and body together.
        head = ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % len(body)).encode()
        self.wfile.write(head + body)
        self.wfile.flush()

    def do_GET(self):
        if self.path == "/truth":
            with truth_lock:
                t = dict(truth, wall_s=time.perf_counter() - started)
            return self.reply(json.dumps(t).encode())
        t0 = time.perf_counter()
        c0 = time.thread_time()
        end = c0 + args.cpu_ms / 1000.0
        x = 1
        while time.thread_time() < end:
            for _ in range(200):
                x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        lock_wait = 0.0
        if args.lock_ms > 0:
            w = time.perf_counter()
            with big_lock:
                lock_wait = time.perf_counter() - w
                time.sleep(args.lock_ms / 1000.0)
        down = 0.0
        if args.backend:
            if not hasattr(local, "conn"):
                host, port = args.backend.rsplit(":", 1)
                local.conn = http.client.HTTPConnection(host, int(port))
            d0 = time.perf_counter()
            local.conn.request("GET", "/sleep?ms=%s" % args.backend_ms)
            local.conn.getresponse().read()
            down = time.perf_counter() - d0
        cpu = time.thread_time() - c0
        latency = time.perf_counter() - t0
        with truth_lock:
            truth["requests"] += 1
            truth["latency_s"] += latency
            truth["cpu_s"] += cpu
            truth["downstream_s"] += down
            truth["lock_wait_s"] += lock_wait
        self.reply(b'{"ok":true}')


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--cpu-ms", type=float, default=1.0)
    p.add_argument("--lock-ms", type=float, default=0.0)
    p.add_argument("--backend", default="")
    p.add_argument("--backend-ms", type=float, default=20.0)
    args = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print("listening 127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
