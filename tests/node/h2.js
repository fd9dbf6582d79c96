// An HTTP/2 service and its load generator for scalewise's tests: Node's standard library only.
//
//   node h2.js serve --cpu-ms X --backend HOST:PORT --backend-ms B
//   node h2.js load --target HOST:PORT --concurrency C --duration-s S
//                   [--measure-after-s A --measure-for-s W]
//
// serve: cleartext HTTP/2 (h2c, as gRPC runs inside a cluster). GET /work burns X ms of CPU, then
// calls the HTTP/1.1 backend over keep-alive connections; GET /truth is the service's own record
// (same keys as the other workloads). Prints "listening ADDR" when ready.
// get: GET --path (default /truth) over HTTP/2, the body on stdout.
// load: ONE HTTP/2 connection carrying C concurrent streams in a closed loop (gRPC's default: a
// channel multiplexes every call), and prints a JSON summary with the clients' own window figures.
'use strict';
const http = require('http');
const http2 = require('http2');

function flag(name, dflt) {
  const i = process.argv.indexOf('--' + name);
  return i >= 0 ? process.argv[i + 1] : dflt;
}

function serve() {
  const cpuMs = Number(flag('cpu-ms', '1'));
  const backend = flag('backend', '');
  const backendMs = Number(flag('backend-ms', '20'));
  const [bhost, bport] = backend.split(':');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const started = process.hrtime.bigint();
  const truth = { requests: 0, latency_s: 0, cpu_s: 0, cpu_wait_s: 0, downstream_s: 0,
    lock_wait_s: 0, pool_wait_s: 0, worker_wait_s: 0, gc_s: 0, wall_s: 0 };
  const secs = (a, b) => Number(b - a) / 1e9;
  const server = http2.createServer();
  server.on('stream', (stream, headers) => {
    const path = headers[':path'];
    if (path === '/truth') {
      const t = Object.assign({}, truth, { wall_s: secs(started, process.hrtime.bigint()) });
      stream.respond({ ':status': 200, 'content-type': 'application/json' });
      stream.end(JSON.stringify(t));
      return;
    }
    const t0 = process.hrtime.bigint();
    const c0 = process.cpuUsage();
    const until = t0 + BigInt(Math.round(cpuMs * 1e6));
    let x = 1;
    while (process.hrtime.bigint() < until) { x = (x * 1103515245 + 12345) % 2147483648; }
    const c1 = process.cpuUsage(c0);
    truth.cpu_s += (c1.user + c1.system) / 1e6;
    const d0 = process.hrtime.bigint();
    const req = http.get({ host: bhost, port: Number(bport), path: '/sleep?ms=' + backendMs, agent }, (res) => {
      res.resume();
      res.on('end', () => {
        const now = process.hrtime.bigint();
        truth.downstream_s += secs(d0, now);
        stream.respond({ ':status': 200, 'content-type': 'application/json' });
        stream.end('{"ok":' + (x & 1) + '}');
        truth.requests += 1;
        truth.latency_s += secs(t0, process.hrtime.bigint());
      });
    });
    req.on('error', () => { stream.respond({ ':status': 502 }); stream.end(); });
  });
  server.listen(0, '127.0.0.1', () => {
    const a = server.address();
    console.log('listening ' + a.address + ':' + a.port);
  });
}

function load() {
  const target = flag('target', '127.0.0.1:8080');
  const concurrency = Number(flag('concurrency', '8'));
  const duration = Number(flag('duration-s', '10')) * 1000;
  const from = Number(flag('measure-after-s', '0')) * 1000;
  const to = from + Number(flag('measure-for-s', String(duration / 1000))) * 1000;
  const session = http2.connect('http://' + target);
  const t0 = performance.now();
  let requests = 0; let errors = 0; let windowRequests = 0; let windowLatency = 0; let busy = 0;
  function one() {
    const start = performance.now() - t0;
    if (start >= duration) { return Promise.resolve(); }
    return new Promise((resolve) => {
      const req = session.request({ ':path': '/work' });
      req.on('response', () => {});
      req.resume();
      const done = (ok) => {
        const end = performance.now() - t0;
        if (ok) { requests += 1; } else { errors += 1; }
        // Request time inside the window (Little's law gives the clients' mean in flight).
        busy += Math.max(0, Math.min(end, to) - Math.max(start, from));
        if (ok && end >= from && end < to) { windowRequests += 1; windowLatency += end - start; }
        resolve();
      };
      req.on('end', () => done(true));
      req.on('error', () => done(false));
      req.end();
    }).then(one);
  }
  const loops = [];
  for (let i = 0; i < concurrency; i++) { loops.push(one()); }
  Promise.all(loops).then(() => {
    const w = (to - from) / 1000;
    console.log(JSON.stringify({
      requests, errors,
      window: {
        from_s: from / 1000, to_s: to / 1000, requests: windowRequests,
        rate_per_s: windowRequests / w,
        mean_latency_ms: windowRequests ? windowLatency / windowRequests : 0,
        mean_in_flight: busy / (to - from),
      },
    }));
    session.close();
  });
}

// get: one GET over HTTP/2, the body on stdout (the service's /truth).
function get() {
  const session = http2.connect('http://' + flag('target', '127.0.0.1:8080'));
  const req = session.request({ ':path': flag('path', '/truth') });
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (c) => { body += c; });
  req.on('end', () => { console.log(body); session.close(); });
  req.on('error', (e) => { console.error(String(e)); process.exit(1); });
  req.end();
}

const modes = { serve, load, get };
if (modes[process.argv[2]]) { modes[process.argv[2]](); } else {
  console.error('usage: node h2.js serve|load|get [flags]');
  process.exit(64);
}
