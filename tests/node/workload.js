// A Node.js sample service for scalewise's end-to-end tests: Node's standard library only.
//
//   node workload.js --cpu-ms X [--backend HOST:PORT --backend-ms B] [--alloc-kb N]
//
// One event loop: each /work request burns X ms on the loop, allocates N KiB of garbage, then
// calls a slow HTTP backend through a keep-alive agent. GET /truth returns cumulative truth (same
// keys as the other workloads; cpu_s is loop time spent burning). GET /metrics exposes
// nodejs_gc_duration_seconds as prom-client does, from perf_hooks GC entries.
'use strict';
const http = require('http');
const { PerformanceObserver, performance } = require('perf_hooks');

const argv = process.argv.slice(2);
const arg = (name, d) => { const i = argv.indexOf('--' + name); return i >= 0 ? argv[i + 1] : d; };
const cpuMs = Number(arg('cpu-ms', '1'));
const allocKb = Number(arg('alloc-kb', '0'));
const backend = arg('backend', '');
const backendMs = Number(arg('backend-ms', '20'));
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

const truth = { requests: 0, latency_s: 0, cpu_s: 0, cpu_wait_s: 0, downstream_s: 0,
  lock_wait_s: 0, pool_wait_s: 0, worker_wait_s: 0, gc_s: 0, wall_s: 0 };
const started = performance.now();
const gc = { minor: [0, 0], major: [0, 0], incremental: [0, 0], weakcb: [0, 0] };
const kinds = { 1: 'major', 2: 'minor', 4: 'incremental', 8: 'weakcb', 16: 'major', 15: 'major' };
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    const k = kinds[(e.detail && e.detail.kind) || e.kind] || 'major';
    gc[k][0] += e.duration / 1000; gc[k][1] += 1; truth.gc_s += e.duration / 1000;
  }
}).observe({ entryTypes: ['gc'] });
let sink = [];

function reply(res, body) {
  res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body); // head and body leave together
}

const server = http.createServer((req, res) => {
  if (req.url === '/truth') {
    return reply(res, JSON.stringify({ ...truth, wall_s: (performance.now() - started) / 1000 }));
  }
  if (req.url === '/metrics') {
    let out = '# HELP nodejs_gc_duration_seconds Garbage collection duration by kind, one of major, minor, incremental or weakcb.\n# TYPE nodejs_gc_duration_seconds histogram\n';
    for (const [k, [s, c]] of Object.entries(gc)) {
      out += `nodejs_gc_duration_seconds_bucket{le="+Inf",kind="${k}"} ${c}\n`;
      out += `nodejs_gc_duration_seconds_sum{kind="${k}"} ${s}\nnodejs_gc_duration_seconds_count{kind="${k}"} ${c}\n`;
    }
    return reply(res, out);
  }
  const t0 = performance.now();
  const until = t0 + cpuMs;
  let x = 1;
  while (performance.now() < until) { for (let i = 0; i < 200; i++) x = (x * 1103515245 + 12345) >>> 0; }
  const cpu = (performance.now() - t0) / 1000;
  if (allocKb > 0) {
    sink = [];
    for (let i = 0; i < allocKb / 64; i++) { const a = new Array(8192).fill(i); sink.push(a); }
  }
  const done = (down) => {
    truth.requests += 1; truth.cpu_s += cpu; truth.downstream_s += down;
    truth.latency_s += (performance.now() - t0) / 1000;
    reply(res, '{"ok":' + (x & 1) + '}');
  };
  if (!backend) return done(0);
  const [host, port] = backend.split(':');
  const d0 = performance.now();
  http.get({ host, port: Number(port), path: '/sleep?ms=' + backendMs, agent }, (r) => {
    r.resume();
    r.on('end', () => done((performance.now() - d0) / 1000));
  }).on('error', () => done((performance.now() - d0) / 1000));
});
server.keepAliveTimeout = 60000;
server.listen(0, '127.0.0.1', () => {
  console.log('listening 127.0.0.1:' + server.address().port);
});
