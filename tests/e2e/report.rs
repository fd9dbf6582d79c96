//! The rewrite report end to end: `diagnose --report` on real workloads (a service waiting on a
//! real PostgreSQL, a CPU-bound one, a Go binary) in all three formats, the offline `report`
//! command on the saved diagnosis, and the HTML as a person sees it in headless Chromium
//! (screenshot, DOM text, print to PDF).

use std::path::{Path, PathBuf};
use std::process::Command;

use scalewise_e2e::harness::{
    self, agent_bin, diagnose_report, exclusive, orders_on_postgres, Load, Service, TempDir,
};

/// Runs `diagnose --format json --report DIR/r.{json,md,html}` and returns the diagnosis and the
/// three reports.
fn diagnose_with_reports(
    pid: u32,
    seconds: &str,
    extra: &[&str],
    projection: &[&str],
    dir: &Path,
) -> (serde_json::Value, serde_json::Value, String, String) {
    let [j, m, h] = ["r.json", "r.md", "r.html"].map(|f| dir.join(f));
    let out = Command::new(agent_bin())
        .args([
            "diagnose",
            "--quiet",
            "--format",
            "json",
            "--duration",
            seconds,
        ])
        .args(["--pid", &pid.to_string()])
        .args(extra)
        .args(projection)
        .arg("--report")
        .arg(&j)
        .arg("--report")
        .arg(&m)
        .arg("--report")
        .arg(&h)
        .output()
        .expect("run agent");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let diagnosis: serde_json::Value = serde_json::from_slice(&out.stdout).expect("diagnosis");
    std::fs::write(dir.join("diagnosis.json"), &out.stdout).expect("save");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&j).expect("json report")).expect("json");
    (
        diagnosis,
        report,
        std::fs::read_to_string(&m).expect("md report"),
        std::fs::read_to_string(&h).expect("html report"),
    )
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The three formats tell the same story, and the offline command gives the same JSON.
fn check_formats(
    dir: &Path,
    projection: &[&str],
    diagnosis: &serde_json::Value,
    report: &serde_json::Value,
    md: &str,
    html: &str,
) {
    let d = &diagnosis["services"][0];
    assert_eq!(report["service"], d["service"]);
    assert_eq!(report["diagnosis_verdict"], d["verdict"]);
    let text = report["recommendation"]["text"].as_str().expect("text");
    assert!(
        md.contains(text),
        "markdown lacks the recommendation:\n{md}"
    );
    assert!(
        unescape(html).contains(text),
        "html lacks the recommendation"
    );
    for o in report["options"].as_array().expect("options") {
        let name = o["option"].as_str().expect("name");
        assert!(md.contains(name) && html.contains(name), "{name} missing");
    }
    assert!(!html.contains("<script") && !html.contains("http://") && !html.contains("https://"));
    // The runtime and memory the agent added to the diagnosis reach the report.
    assert_eq!(d["runtime"]["name"], "native", "a Rust workload: {d:#}");
    assert!(d["memory_bytes"].as_u64().unwrap_or(0) > 1 << 20, "{d:#}");
    assert!(report["measured"]["memory_mib"].as_f64().unwrap_or(0.0) > 1.0);
    // Offline, from the saved diagnosis: the same model.
    let out = Command::new(agent_bin())
        .args(["report", "--format", "json", "--input"])
        .arg(dir.join("diagnosis.json"))
        .args(projection)
        .output()
        .expect("report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offline: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        &offline, report,
        "report --input differs from diagnose --report"
    );
}

#[test]
fn a_service_waiting_on_postgresql_is_told_not_to_rewrite() {
    let _x = exclusive();
    let dir = TempDir::new("report-pg").expect("temp dir");
    let (pg, svc) = orders_on_postgres().expect("service");
    let _load = Load::start(svc.port, 6, 30.0, 0.0).expect("load");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let dep = format!("{}=orders-db:postgresql", pg.addr());
    let projection = ["--current", "go", "--target", "rust"];
    let (diagnosis, report, md, html) =
        diagnose_with_reports(svc.pid, "8", &["--dependency", &dep], &projection, &dir);
    let d = &diagnosis["services"][0];
    scalewise_e2e::verdicts::record(
        "report-dependency",
        scalewise_e2e::verdicts::Truth::Is("dependency"),
        d,
    );
    assert_eq!(d["verdict"], "dependency", "{d:#}");
    let rec = &report["recommendation"];
    assert_eq!(rec["verdict"], "do_not_rewrite", "{report:#}");
    assert_eq!(rec["option"], "fix_dependency:orders-db", "{report:#}");
    assert!(
        report["ceiling"].as_f64().unwrap_or(1.0) < 0.3,
        "{report:#}"
    );
    let rust = report["options"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["option"] == "rewrite:rust"))
        .expect("rewrite:rust");
    // A rewrite cannot beat the ceiling: it moves latency by less than the CPU share.
    assert!(
        -rust["latency_change"]["central"].as_f64().unwrap_or(-1.0)
            <= report["ceiling"].as_f64().unwrap_or(0.0) + 1e-3,
        "{rust:#}"
    );
    assert_eq!(report["current"]["source"], "given");
    check_formats(&dir, &projection, &diagnosis, &report, &md, &html);
    browser_check(&dir, &html, &report);
}

#[test]
fn a_cpu_bound_service_is_pointed_at_cpu() {
    let _x = exclusive();
    let dir = TempDir::new("report-cpu").expect("temp dir");
    let svc = Service::workload(&["serve", "--workers", "4", "--cpu-ms", "15"]).expect("service");
    let _load = Load::start(svc.port, 8, 30.0, 0.0).expect("load");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let projection = ["--current", "python"];
    let (diagnosis, report, md, html) = diagnose_with_reports(svc.pid, "8", &[], &projection, &dir);
    let d = &diagnosis["services"][0];
    scalewise_e2e::verdicts::record(
        "report-scale-up",
        scalewise_e2e::verdicts::Truth::Is("scale_up"),
        d,
    );
    assert_eq!(d["verdict"], "scale_up", "{d:#}");
    let rec = &report["recommendation"];
    let option = rec["option"].as_str().unwrap_or_default();
    // The lever for a CPU-bound service is CPU: more of it, or less work per request.
    assert!(
        option.starts_with("rewrite:") || option == "scale_out" || option == "tune_gc",
        "{report:#}"
    );
    assert!(
        report["ceiling"].as_f64().unwrap_or(0.0) > 0.5,
        "{report:#}"
    );
    let rust = report["options"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["option"] == "rewrite:rust"))
        .expect("rewrite:rust");
    let cur = &report["options"][0];
    assert!(
        rust["throughput_per_instance"]["central"]
            .as_f64()
            .unwrap_or(0.0)
            > 1.5
                * cur["throughput_per_instance"]["central"]
                    .as_f64()
                    .unwrap_or(f64::MAX),
        "Python -> Rust on CPU-bound work buys throughput: {report:#}"
    );
    check_formats(&dir, &projection, &diagnosis, &report, &md, &html);
}

#[test]
fn a_go_binary_is_recognised_with_its_version() {
    let _x = exclusive();
    let dir = TempDir::new("report-go").expect("temp dir");
    let svc = Service::go(&["--cpu-ms", "1"]).expect("go service");
    let md = dir.join("r.md");
    let v =
        diagnose_report(&[svc.pid], 1.0, &["--report", md.to_str().expect("utf8")]).expect("agent");
    let rt = &v["services"][0]["runtime"];
    assert_eq!(rt["name"], "go", "{v:#}");
    let version = rt["version"].as_str().unwrap_or_default();
    assert!(version.starts_with("go1."), "{rt}");
    // Idle: the report says it cannot tell, and names the runtime.
    let md = std::fs::read_to_string(md).expect("md");
    assert!(md.contains(version), "{md}");
}

#[test]
fn a_jvm_is_recognised_with_its_version_from_hsperfdata() {
    let _x = exclusive();
    let svc = Service::java(&["-Xmx64m"], &["--workers", "2", "--cpu-ms", "1"]).expect("jvm");
    let v = diagnose_report(&[svc.pid], 1.0, &[]).expect("agent");
    let rt = &v["services"][0]["runtime"];
    assert_eq!(rt["name"], "java", "{v:#}");
    assert_eq!(rt["evidence"], "hsperfdata", "{rt}");
    // java.property.java.version: "17.0.x" on this machine's JDK, any digits elsewhere.
    let version = rt["version"].as_str().unwrap_or_default();
    assert!(version.starts_with(|c: char| c.is_ascii_digit()), "{rt}");
    // A JVM's resident memory is tens of MiB at least.
    assert!(
        v["services"][0]["memory_bytes"].as_u64().unwrap_or(0) > 20 << 20,
        "{v:#}"
    );
}

#[test]
fn bad_report_requests_fail_before_sampling() {
    let out = Command::new(agent_bin())
        .args([
            "diagnose",
            "--pid",
            "1",
            "--duration",
            "30",
            "--report",
            "r.pdf",
        ])
        .output()
        .expect("agent");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(".html, .md or .json"));
    let out = Command::new(agent_bin())
        .args(["report", "--input", "/nonexistent/d.json"])
        .output()
        .expect("agent");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/d.json"));
}

/// Headless Chromium ([`harness::chromium`]); its stdout.
fn chromium(args: &[String]) -> Vec<u8> {
    harness::chromium(args)
        .expect("chromium (install it: scripts/install-deps)")
        .stdout
}

/// What a person sees: the DOM after rendering holds the verdict, every option and the ceiling;
/// the screenshot is not blank and shows the bars' colours; the page prints to a PDF.
fn browser_check(dir: &Path, html: &str, report: &serde_json::Value) {
    let page = dir.join("report.html");
    std::fs::write(&page, html).expect("write html");
    let url = format!("file://{}", page.display());

    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom".into(), url.clone()])).into_owned();
    let dom = unescape(&dom);
    for want in [
        "Do not rewrite",
        "Recommended:",
        "Ceiling:",
        "Where a request's time would go",
        "Assumptions",
        report["recommendation"]["text"].as_str().unwrap_or("?"),
        report["service"].as_str().unwrap_or("?"),
    ] {
        assert!(dom.contains(want), "rendered page lacks {want:?}");
    }
    for o in report["options"].as_array().into_iter().flatten() {
        assert!(dom.contains(o["option"].as_str().unwrap_or("?")));
    }

    let shot = dir.join("report.png");
    chromium(&[
        format!("--screenshot={}", shot.display()),
        "--window-size=1200,1600".into(),
        url.clone(),
    ]);
    let file = std::fs::File::open(&shot).expect("screenshot written");
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("png");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("frame");
    assert_eq!((info.width, info.height), (1200, 1600));
    let channels = info.color_type.samples();
    let px: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    let white = px
        .iter()
        .filter(|p| p[0] > 245 && p[1] > 245 && p[2] > 245)
        .count();
    let ink = px
        .iter()
        .filter(|p| p[0] < 80 && p[1] < 80 && p[2] < 80)
        .count();
    assert!(white < px.len() * 97 / 100, "screenshot is (nearly) blank");
    assert!(ink > 2_000, "no text drawn: {ink} dark pixels");
    // The bars: downstream teal (#1b9e77) dominates a dependency-bound service; CPU orange
    // (#d95f02) is drawn too.
    let near = |p: &[u8], c: [u8; 3]| (0..3).all(|i| (p[i] as i32 - c[i] as i32).abs() < 12);
    let teal = px.iter().filter(|p| near(p, [0x1b, 0x9e, 0x77])).count();
    let orange = px.iter().filter(|p| near(p, [0xd9, 0x5f, 0x02])).count();
    assert!(
        teal > 20_000,
        "downstream bars not drawn: {teal} teal pixels"
    );
    assert!(orange > 100, "cpu bars not drawn: {orange} orange pixels");
    assert!(
        teal > orange,
        "a dependency-bound service's bars are mostly downstream"
    );

    let pdf = dir.join("report.pdf");
    chromium(&[
        format!("--print-to-pdf={}", pdf.display()),
        "--no-pdf-header-footer".into(),
        url,
    ]);
    let bytes = std::fs::read(&pdf).expect("pdf written");
    assert!(bytes.starts_with(b"%PDF-"), "not a PDF");
    let pages = bytes
        .windows(10)
        .filter(|w| w == b"/Type /Pag" || w == b"/Type/Page")
        .count();
    assert!(
        pages >= 1 && bytes.len() > 10_000,
        "empty PDF ({} bytes)",
        bytes.len()
    );
    // Keep the artefacts for a person to look at when asked.
    if let Ok(keep) = std::env::var("SCALEWISE_REPORT_ARTEFACTS") {
        let keep = PathBuf::from(keep);
        let _ = std::fs::create_dir_all(&keep);
        for f in ["report.html", "report.png", "report.pdf"] {
            let _ = std::fs::copy(dir.join(f), keep.join(f));
        }
    }
}
