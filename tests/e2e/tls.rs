//! The collector's transport hardening with real processes on loopback: TLS on both listeners
//! (a throwaway CA and server certificate made by the test), a real `scalewise-agent run`
//! exporting over HTTPS with `--collector-ca`, an agent without the CA failing and counting its
//! exports, gRPC over TLS, slow and silent clients cut off by the timeouts, the connection cap,
//! and clear startup errors for bad certificate files.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use scalewise_collector::otlp_request;
use scalewise_e2e::collector::{collector_bin, get_with, now_ns, Collector, Profile};
use scalewise_e2e::harness::{free_port, wait_until, RunAgent, Service, TempDir};
use scalewise_e2e::metrics::value;

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it, as PEM files.
struct Pki {
    dir: TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("tls").expect("temp dir");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "scalewise test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("ca key")).expect("ca");
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("key");
        let cert = leaf.signed_by(&key, &issuer).expect("sign");
        let pki = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        std::fs::write(&pki.ca, issuer.pem()).expect("write ca");
        std::fs::write(&pki.cert, cert.pem()).expect("write cert");
        std::fs::write(&pki.key, key.serialize_pem()).expect("write key");
        pki
    }

    fn collector(&self, extra: &[&str]) -> Collector {
        Collector::start_tls(&self.ca, &self.cert, &self.key, extra).expect("TLS collector")
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

#[test]
fn an_agent_exports_over_https_with_the_ca_and_counts_failures_without_it() {
    let pki = Pki::new();
    let c = pki.collector(&[]);
    let svc = Service::workload(&["serve", "--workers", "2", "--cpu-ms", "1"]).expect("workload");
    let pid = svc.pid.to_string();
    let trusted = RunAgent::start(&[
        "--pid",
        &pid,
        "--service",
        "tls-svc",
        "--collector",
        &c.url(),
        "--collector-ca",
        s(&pki.ca),
        "--export-interval",
        "1",
    ])
    .expect("start agent");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut untrusting = RunAgent::start(&[
        "--pid",
        &pid,
        "--service",
        "no-ca-svc",
        "--collector",
        &c.url(),
        "--export-interval",
        "1",
        "--metrics-listen",
        &metrics,
    ])
    .expect("start agent");
    // The trusting agent's service shows up, read over HTTPS with the same CA.
    wait_until(
        Duration::from_secs(25),
        "tls-svc in /api/v1/services",
        || {
            c.json("/api/v1/services").is_ok_and(|v| {
                v["services"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|s| s["service"] == "tls-svc"))
            })
        },
    );
    // The other agent cannot verify the certificate: exports fail, counted, and it goes on.
    let url = format!("http://{metrics}/metrics");
    let exports = |text: &str, result: &str| {
        value(text, "scalewise_agent_exports_total", &[("result", result)]).unwrap_or(0.0)
    };
    wait_until(Duration::from_secs(20), "failed exports counted", || {
        get_with(&url, None, None).is_ok_and(|(_, text)| exports(&text, "failed") >= 2.0)
    });
    let (_, text) = get_with(&url, None, None).expect("agent metrics");
    assert_eq!(exports(&text, "ok"), 0.0, "{text}");
    assert!(untrusting.running(), "the agent without the CA crashed");
    let log = untrusting.stderr();
    assert!(log.contains("export to the collector failed"), "{log}");
    let services = c.json("/api/v1/services").expect("services");
    assert!(
        !services.to_string().contains("no-ca-svc"),
        "an unverified export arrived: {services}"
    );
    assert!(trusted.stderr().contains(&c.url()), "{}", trusted.stderr());
}

#[test]
fn plain_http_to_the_tls_port_fails_and_is_counted() {
    let pki = Pki::new();
    let c = pki.collector(&[]);
    let plain = format!("http://127.0.0.1:{}/healthz", c.port);
    if let Ok((status, body)) = get_with(&plain, None, None) {
        panic!("plain HTTP answered {status}: {body}");
    }
    // A client that does not trust the CA is refused too.
    let untrusted = get_with(&format!("{}/healthz", c.url()), None, None);
    assert!(untrusted.is_err(), "{untrusted:?}");
    // The trusting client gets through, and the failed handshakes were counted.
    assert_eq!(c.get("/healthz").expect("https").0, 200);
    let dropped = c
        .metric(
            "scalewise_collector_connections_dropped_total",
            &[("reason", "tls_handshake")],
        )
        .expect("metric");
    assert!(dropped >= 2.0, "{dropped}");
}

#[test]
fn grpc_export_over_tls_is_received() {
    let pki = Pki::new();
    let grpc_port = free_port();
    let c = pki.collector(&["--grpc-listen", &format!("127.0.0.1:{grpc_port}")]);
    let t0 = now_ns() - 30 * 1_000_000_000;
    let profile = Profile::cpu_bound();
    let ca = std::fs::read_to_string(&pki.ca).expect("ca");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        let export = |tls: Option<ClientTlsConfig>| {
            let profile = profile.clone();
            async move {
                let mut ep = Endpoint::from_shared(format!("https://127.0.0.1:{grpc_port}"))
                    .expect("endpoint")
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(10));
                if let Some(tls) = tls {
                    ep = ep.tls_config(tls).expect("tls config");
                }
                let channel = ep.connect().await?;
                let mut client = MetricsServiceClient::new(channel)
                    .send_compressed(tonic::codec::CompressionEncoding::Gzip);
                let attrs = otlp_request::resource_attrs("grpc-tls", "g-1", Some(9));
                let t = t0 + 20 * 1_000_000_000;
                let req = otlp_request::request(&attrs, &profile.budget(20.0), t0, t);
                client
                    .export(req)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(anyhow::Error::from)
            }
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca))
            .domain_name("localhost");
        let resp = export(Some(tls)).await.expect("export over TLS");
        assert!(resp.partial_success.is_none(), "{resp:?}");
        // Without the CA the handshake fails.
        let no_ca = ClientTlsConfig::new().domain_name("localhost");
        assert!(export(Some(no_ca)).await.is_err());
    });
    let got = c.json("/api/v1/services/grpc-tls").expect("service");
    assert_eq!(got["service"], "grpc-tls");
    assert!(
        c.metric(
            "scalewise_collector_points_received_total",
            &[("transport", "grpc")]
        )
        .expect("m")
            > 0.0
    );
}

/// Writes `bytes` one a second; returns when the collector closed the connection, or `None`
/// when all was written without that.
fn trickle(mut stream: TcpStream, bytes: &[u8]) -> Option<Duration> {
    let start = Instant::now();
    for b in bytes {
        if stream.write_all(&[*b]).is_err() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_secs(1));
        // A closed connection reads EOF (or reset) without blocking long.
        stream
            .set_read_timeout(Some(Duration::from_millis(10)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        match stream.read(&mut buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // EOF, a reset, or an answer (a refusal): the collector is done with it.
            _ => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn slow_and_silent_clients_are_cut_off_and_others_still_answered() {
    let c = Collector::start(&[
        "--header-timeout",
        "2s",
        "--body-timeout",
        "2s",
        "--max-connections",
        "6",
    ])
    .expect("collector");
    let addr = format!("127.0.0.1:{}", c.port);
    // Three slow-loris clients: headers one byte a second.
    let headers = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let stream = TcpStream::connect(&addr).expect("connect");
            std::thread::spawn(move || trickle(stream, headers))
        })
        .collect();
    // Meanwhile others are answered.
    for _ in 0..3 {
        assert_eq!(c.get("/healthz").expect("healthz").0, 200);
        std::thread::sleep(Duration::from_millis(500));
    }
    for t in slow {
        let cut = t
            .join()
            .expect("thread")
            .expect("slow client never cut off");
        assert!(cut < Duration::from_secs(6), "cut after {cut:?}");
    }
    // A body sent one byte a second is refused with 408 once the body timeout passes.
    let mut body_slow = TcpStream::connect(&addr).expect("connect");
    body_slow
        .write_all(
            b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
              Content-Length: 100\r\n\r\n",
        )
        .expect("headers");
    let started = Instant::now();
    let mut writer = body_slow.try_clone().expect("clone");
    std::thread::spawn(move || {
        // Only writes: the answer is read below, on the same socket.
        for _ in 0..20 {
            if writer.write_all(&[0]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    body_slow
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answer = [0u8; 64];
    let n = body_slow.read(&mut answer).expect("an answer");
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(6));
    // The connection cap: six silent connections fill it, a seventh is closed at once; the
    // silent ones are cut by the header timeout and the collector answers again.
    std::thread::sleep(Duration::from_millis(500));
    let silent: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(&addr).expect("connect");
    extra
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    let refused = matches!(extra.read(&mut buf), Ok(0) | Err(_));
    assert!(refused, "a connection over the cap was served");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.get("/healthz").expect("healthz after the cut").0, 200);
    drop(silent);
    let m = |reason: &str| {
        c.metric(
            "scalewise_collector_connections_dropped_total",
            &[("reason", reason)],
        )
        .expect("metric")
    };
    // Three slow-loris and (at least five of) the six silent connections.
    assert!(m("timeout") >= 8.0, "timeouts {}", m("timeout"));
    assert!(m("limit") >= 1.0, "limit {}", m("limit"));
    assert!(
        c.metric(
            "scalewise_collector_requests_rejected_total",
            &[("reason", "body_timeout")]
        )
        .expect("metric")
            >= 1.0
    );
}

#[test]
fn bad_certificate_files_are_clear_startup_errors() {
    let pki = Pki::new();
    let run = |args: &[&str]| {
        let data = TempDir::new("tls-bad").expect("temp dir");
        let out = Command::new(collector_bin())
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run collector");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let missing = pki.dir.join("nope.pem");
    let (st, err) = run(&["--tls-cert", s(&missing), "--tls-key", s(&pki.key)]);
    assert!(!st.success());
    assert!(
        err.contains("TLS certificate file") && err.contains("nope.pem"),
        "{err}"
    );
    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let (st, err) = run(&["--tls-cert", s(&garbage), "--tls-key", s(&pki.key)]);
    assert!(!st.success());
    assert!(
        err.contains("garbage.pem") && err.contains("no CERTIFICATE"),
        "{err}"
    );
    let (st, err) = run(&["--tls-cert", s(&pki.cert), "--tls-key", s(&garbage)]);
    assert!(!st.success());
    assert!(
        err.contains("TLS key file") && err.contains("garbage.pem"),
        "{err}"
    );
    // A key that is not the certificate's.
    let other = pki.dir.join("other-key.pem");
    std::fs::write(&other, KeyPair::generate().expect("key").serialize_pem()).expect("write");
    let (st, err) = run(&["--tls-cert", s(&pki.cert), "--tls-key", s(&other)]);
    assert!(!st.success());
    assert!(
        err.contains("cert.pem") && err.contains("other-key.pem"),
        "{err}"
    );
    // Half a configuration.
    let (st, err) = run(&["--tls-cert", s(&pki.cert)]);
    assert!(!st.success());
    assert!(err.contains("--tls-key"), "{err}");
    // TLS alone does not make a non-loopback listen acceptable: tokens still are required.
    let data = TempDir::new("tls-exposed").expect("temp dir");
    let out = Command::new(collector_bin())
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .args(["--tls-cert", s(&pki.cert), "--tls-key", s(&pki.key)])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-file"));
}

/// `scalewise-agent run ARGS` in a mount namespace where `/etc/ssl` is empty: the trust store a
/// minimal image does not have.
fn without_trust_store() -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /etc/ssl && exec {} \"$@\"",
            scalewise_e2e::harness::agent_bin().display()
        ))
        .arg("sh");
    cmd
}

#[test]
fn without_a_trust_store_plain_http_exports_and_https_says_what_it_needs() {
    if !scalewise_e2e::harness::root("a mount namespace hides the trust store") {
        return;
    }
    let pki = Pki::new();
    let c = Collector::start(&[]).expect("collector");
    let svc = Service::workload(&["serve", "--workers", "2", "--cpu-ms", "1"]).expect("workload");
    let pid = svc.pid.to_string();
    let mut plain = RunAgent::start_with(
        without_trust_store(),
        &[
            "--pid",
            &pid,
            "--service",
            "no-store-svc",
            "--collector",
            &c.url(),
            "--export-interval",
            "1",
        ],
    )
    .expect("start agent");
    wait_until(
        Duration::from_secs(25),
        "no-store-svc in /api/v1/services",
        || {
            c.json("/api/v1/services").is_ok_and(|v| {
                v["services"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|s| s["service"] == "no-store-svc"))
            })
        },
    );
    assert!(plain.running(), "{}", plain.stderr());
    // HTTPS with nothing to trust: a clear start-up error naming the flag, at once.
    let out = without_trust_store()
        .args(["run", "--pid", &pid, "--collector", "https://127.0.0.1:9"])
        .stdin(Stdio::null())
        .output()
        .expect("agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("no trust store") && err.contains("--collector-ca"),
        "{err}"
    );
    // With --collector-ca, the given CA alone: HTTPS exports arrive.
    let tls = pki.collector(&[]);
    let _trusted = RunAgent::start_with(
        without_trust_store(),
        &[
            "--pid",
            &pid,
            "--service",
            "ca-only-svc",
            "--collector",
            &tls.url(),
            "--collector-ca",
            s(&pki.ca),
            "--export-interval",
            "1",
        ],
    )
    .expect("start agent");
    wait_until(
        Duration::from_secs(25),
        "ca-only-svc in /api/v1/services",
        || {
            tls.json("/api/v1/services").is_ok_and(|v| {
                v["services"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|s| s["service"] == "ca-only-svc"))
            })
        },
    );
}
