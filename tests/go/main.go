// A Go sample service for scalewise's GC tests: standard library only.
//
//	gowork --alloc-kb N --cpu-ms X
//
// GET /work allocates N KiB of short-lived garbage and burns X ms of CPU; /debug/vars is expvar
// (memstats.PauseTotalNs); /metrics exposes go_gc_duration_seconds as the Prometheus Go client
// does (a summary of stop-the-world pauses); /truth is the service's own view: total GC pause
// over wall time, and with --backend the requests' latency, CPU (the process's, from getrusage)
// and time spent calling the backend. With --backend ADDR each request also calls
// http://ADDR/sleep?ms=B with http.DefaultClient: its transport keeps at most two idle
// connections per host, so under concurrency most calls open a new connection; --max-conns N caps
// the connections to the backend at N (MaxConnsPerHost), and calls queue in the client for one.
// The time a call waits for a connection (httptrace: until GotConn, less any dial) is the truth's
// pool_wait_s; the rest of the call is downstream_s. It prints "listening ADDR" when ready.
package main

import (
	"context"
	_ "expvar"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"
)

// Cumulative truth, in nanoseconds.
var requests, latencyNs, downstreamNs, poolNs atomic.Int64

func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var sink []byte

func main() {
	allocKB := flag.Int("alloc-kb", 2048, "garbage per request, KiB")
	cpuMs := flag.Float64("cpu-ms", 1, "CPU per request, ms")
	backend := flag.String("backend", "", "HTTP backend to call per request, HOST:PORT")
	backendMs := flag.Float64("backend-ms", 10, "the backend's delay per call, ms")
	maxConns := flag.Int("max-conns", 0, "cap on connections to the backend (MaxConnsPerHost); 0: the default client")
	flag.Parse()
	client := http.DefaultClient
	if *maxConns > 0 {
		client = &http.Client{Transport: &http.Transport{MaxConnsPerHost: *maxConns, MaxIdleConnsPerHost: *maxConns}}
	}
	startCPU := processCPU()
	start := time.Now()
	var startPause time.Duration
	{
		var s debug.GCStats
		debug.ReadGCStats(&s)
		startPause = s.PauseTotal
	}
	http.HandleFunc("/work", func(w http.ResponseWriter, r *http.Request) {
		t0 := time.Now()
		defer func() {
			requests.Add(1)
			latencyNs.Add(int64(time.Since(t0)))
		}()
		for i := 0; i < *allocKB/64; i++ {
			b := make([]byte, 64*1024)
			b[i%len(b)] = byte(i)
			if i%16 == 0 {
				sink = b
			}
		}
		end := time.Now().Add(time.Duration(*cpuMs * float64(time.Millisecond)))
		x := uint64(88172645463325252)
		for time.Now().Before(end) {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
		}
		if *backend != "" {
			c0 := time.Now()
			var got time.Time
			var dial time.Duration
			var dialStart time.Time
			trace := &httptrace.ClientTrace{
				ConnectStart: func(string, string) { dialStart = time.Now() },
				ConnectDone:  func(string, string, error) { dial += time.Since(dialStart) },
				GotConn:      func(httptrace.GotConnInfo) { got = time.Now() },
			}
			ctx := httptrace.WithClientTrace(context.Background(), trace)
			url := fmt.Sprintf("http://%s/sleep?ms=%g", *backend, *backendMs)
			req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
			resp, err := client.Do(req)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			wait := time.Duration(0)
			if !got.IsZero() {
				wait = got.Sub(c0) - dial
				if wait < 0 {
					wait = 0
				}
			}
			poolNs.Add(int64(wait))
			downstreamNs.Add(int64(time.Since(c0) - wait))
		}
		fmt.Fprintf(w, "{\"ok\":%d}", x&1)
	})
	http.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		var s debug.GCStats
		s.PauseQuantiles = make([]time.Duration, 5)
		debug.ReadGCStats(&s)
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintln(w, "# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.")
		fmt.Fprintln(w, "# TYPE go_gc_duration_seconds summary")
		for i, q := range []string{"0", "0.25", "0.5", "0.75", "1"} {
			fmt.Fprintf(w, "go_gc_duration_seconds{quantile=%q} %g\n", q, s.PauseQuantiles[i].Seconds())
		}
		fmt.Fprintf(w, "go_gc_duration_seconds_sum %g\n", s.PauseTotal.Seconds())
		fmt.Fprintf(w, "go_gc_duration_seconds_count %d\n", s.NumGC)
		fmt.Fprintf(w, "# TYPE go_goroutines gauge\ngo_goroutines %d\n", runtime.NumGoroutine())
	})
	http.HandleFunc("/truth", func(w http.ResponseWriter, r *http.Request) {
		var s debug.GCStats
		debug.ReadGCStats(&s)
		fmt.Fprintf(w, "{\"requests\":%d,\"latency_s\":%g,\"cpu_s\":%g,\"cpu_wait_s\":0,\"downstream_s\":%g,"+
			"\"lock_wait_s\":0,\"pool_wait_s\":%g,\"worker_wait_s\":0,\"gc_s\":%g,\"wall_s\":%g}",
			requests.Load(), time.Duration(latencyNs.Load()).Seconds(), (processCPU() - startCPU).Seconds(),
			time.Duration(downstreamNs.Load()).Seconds(), time.Duration(poolNs.Load()).Seconds(),
			(s.PauseTotal - startPause).Seconds(), time.Since(start).Seconds())
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Printf("listening %s\n", l.Addr())
	panic(http.Serve(l, nil))
}
