//! A test OTLP/HTTP metrics receiver on `opentelemetry-proto` (prost types): records every data
//! point it is sent, rebuilds each instance's cumulative [`Budget`] with the collector's own
//! wire mapping, and can go away and come back on the same port (a collector outage).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, AggregationTemporality};
use prost::Message;
use scalewise_core::wire;
use scalewise_core::Budget;

/// One data point as received.
#[derive(Clone, Debug)]
pub struct Point {
    pub metric: String,
    pub unit: String,
    pub attrs: BTreeMap<String, String>,
    pub value: f64,
    pub start_unix_nano: u64,
    pub time_unix_nano: u64,
    /// A cumulative monotonic Sum (else a gauge).
    pub cumulative_sum: bool,
}

/// One resource's points from one request: an instance's snapshot.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub received: Instant,
    pub resource: BTreeMap<String, String>,
    pub points: Vec<Point>,
    pub authorization: Option<String>,
    /// The request was gzip-compressed.
    pub gzip: bool,
}

impl Snapshot {
    pub fn instance(&self) -> &str {
        self.resource
            .get("service.instance.id")
            .map_or("", String::as_str)
    }
    pub fn service(&self) -> &str {
        self.resource.get("service.name").map_or("", String::as_str)
    }
    /// The `start_time_unix_nano` of the instance's sums (they all share it).
    pub fn start_unix_nano(&self) -> u64 {
        self.points
            .iter()
            .filter(|p| p.cumulative_sum)
            .map(|p| p.start_unix_nano)
            .min()
            .unwrap_or(0)
    }
    /// When the SDK collected the points (`time_unix_nano`), as a `SystemTime`.
    pub fn taken(&self) -> std::time::SystemTime {
        let ns = self
            .points
            .iter()
            .map(|p| p.time_unix_nano)
            .max()
            .unwrap_or(0);
        std::time::UNIX_EPOCH + Duration::from_nanos(ns)
    }
    /// The cumulative budget, rebuilt with `wire::apply` (what the collector does).
    pub fn budget(&self) -> Budget {
        let mut b = Budget::default();
        for p in &self.points {
            let look = |k: &str| p.attrs.get(k).cloned();
            let _ = wire::apply(&mut b, &p.metric, &look, p.value);
        }
        b
    }
    pub fn value(&self, metric: &str) -> Option<f64> {
        self.points
            .iter()
            .find(|p| p.metric == metric)
            .map(|p| p.value)
    }
}

fn text(kv: &[KeyValue]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                _ => String::new(),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// Decodes one request body (gzip or not) into snapshots.
pub fn decode(body: &[u8], gzip: bool, auth: Option<String>) -> anyhow::Result<Vec<Snapshot>> {
    let raw = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .take(64 << 20)
            .read_to_end(&mut out)?;
        out
    } else {
        body.to_vec()
    };
    let req = ExportMetricsServiceRequest::decode(raw.as_slice())?;
    let mut out = Vec::new();
    for rm in req.resource_metrics {
        let resource = rm.resource.map(|r| text(&r.attributes)).unwrap_or_default();
        let mut points = Vec::new();
        for sm in rm.scope_metrics {
            for m in sm.metrics {
                let (dps, cumulative_sum) = match m.data {
                    Some(metric::Data::Sum(s)) => (
                        s.data_points,
                        s.is_monotonic
                            && s.aggregation_temporality
                                == AggregationTemporality::Cumulative as i32,
                    ),
                    Some(metric::Data::Gauge(g)) => (g.data_points, false),
                    _ => continue,
                };
                for dp in dps {
                    let value = match dp.value {
                        Some(number_data_point::Value::AsDouble(d)) => d,
                        Some(number_data_point::Value::AsInt(i)) => i as f64,
                        None => continue,
                    };
                    points.push(Point {
                        metric: m.name.clone(),
                        unit: m.unit.clone(),
                        attrs: text(&dp.attributes),
                        value,
                        start_unix_nano: dp.start_time_unix_nano,
                        time_unix_nano: dp.time_unix_nano,
                        cumulative_sum,
                    });
                }
            }
        }
        out.push(Snapshot {
            received: Instant::now(),
            resource,
            points,
            authorization: auth.clone(),
            gzip,
        });
    }
    Ok(out)
}

#[derive(Default)]
struct State {
    snapshots: Vec<Snapshot>,
    errors: Vec<String>,
}

/// The receiver: an axum server on its own runtime thread, on loopback.
pub struct Receiver {
    pub port: u16,
    state: Arc<Mutex<State>>,
    server: Option<(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    )>,
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<Mutex<State>>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let gzip = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    match decode(&body, gzip, auth) {
        Ok(s) => {
            st.snapshots.extend(s);
            axum::http::StatusCode::OK
        }
        Err(e) => {
            st.errors.push(e.to_string());
            axum::http::StatusCode::BAD_REQUEST
        }
    }
}

impl Receiver {
    pub fn start() -> anyhow::Result<Receiver> {
        let mut r = Receiver {
            port: 0,
            state: Arc::default(),
            server: None,
        };
        r.serve(0)?;
        Ok(r)
    }

    /// A receiver listening on loopback inside the network namespace `/run/netns/NAME` (the
    /// socket is bound from a thread that joined it; needs root).
    pub fn start_in_netns(name: &str) -> anyhow::Result<Receiver> {
        let ns = std::fs::File::open(format!("/run/netns/{name}"))?;
        let listener = std::thread::spawn(move || -> anyhow::Result<std::net::TcpListener> {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd changes only this short-lived thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                anyhow::bail!("setns: {}", std::io::Error::last_os_error());
            }
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("netns thread panicked"))??;
        let mut r = Receiver {
            port: 0,
            state: Arc::default(),
            server: None,
        };
        r.serve_on(listener)?;
        Ok(r)
    }

    fn serve(&mut self, port: u16) -> anyhow::Result<()> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("binding the receiver on port {port}"))?;
        self.serve_on(listener)
    }

    fn serve_on(&mut self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        listener.set_nonblocking(true)?;
        let addr: SocketAddr = listener.local_addr()?;
        self.port = addr.port();
        let app = axum::Router::new()
            .route("/v1/metrics", axum::routing::post(handle))
            .with_state(self.state.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        self.server = Some((tx, thread));
        Ok(())
    }

    /// The collector goes away: the port refuses connections.
    pub fn stop(&mut self) {
        if let Some((tx, thread)) = self.server.take() {
            let _ = tx.send(());
            let _ = thread.join();
        }
    }

    /// The collector comes back on the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let port = self.port;
        // The old socket may linger briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.serve(port) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshots
            .clone()
    }

    pub fn errors(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .errors
            .clone()
    }

    /// Snapshots of the instances of `service`, oldest first.
    pub fn of_service(&self, service: &str) -> Vec<Snapshot> {
        self.snapshots()
            .into_iter()
            .filter(|s| s.service() == service)
            .collect()
    }

    /// Waits until `pred` holds on the snapshots received so far (or `timeout`).
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Snapshot]) -> bool,
    ) -> anyhow::Result<Vec<Snapshot>> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.snapshots();
            if pred(&s) {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "receiver: condition not met after {timeout:?} ({} snapshots: services {:?}; errors {:?})",
                    s.len(),
                    s.iter().map(|s| s.service().to_string()).collect::<std::collections::BTreeSet<_>>(),
                    self.errors()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}
