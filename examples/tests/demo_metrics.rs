//! `demo serve --metrics`: the engine's metrics for Prometheus at `/metrics` on the demo's
//! server, beside the management API. Starts an orchestration over the API, waits for it to
//! complete, then scrapes `/metrics` and looks for the store, queue and cache metrics.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Longest the demo may take to start serving, and the run to complete (hang guards only).
const GUARD: Duration = Duration::from_secs(120);

/// Kills the demo when the test ends, however it ends.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP/1.1 request on a fresh connection; the answer's status code and body.
fn request(host: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(host).expect("connects to the demo");
    stream.set_read_timeout(Some(GUARD)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("an answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}

#[test]
fn demo_serve_with_metrics_exposes_durable_metrics_for_prometheus() {
    let dir = tempfile::tempdir().expect("temp dir");
    let child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["serve", "--port", "0", "--metrics"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("demo starts");
    let mut demo = Demo(child);
    let stdout = demo.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut api, mut metrics) = (None, None);
    while api.is_none() || metrics.is_none() {
        let line = rx
            .recv_timeout(GUARD)
            .expect("the demo prints the API's and the metrics' URLs");
        if let Some(url) = line.strip_prefix("serving the management API at ") {
            api = Some(url.trim().to_owned());
        }
        if let Some(url) = line.strip_prefix("metrics for Prometheus at ") {
            metrics = Some(url.trim().to_owned());
        }
    }
    let (api, metrics) = (api.unwrap(), metrics.unwrap());
    let rest = metrics.strip_prefix("http://").expect("an http URL");
    let (host, metrics_path) = rest.split_at(rest.find('/').expect("a path"));
    assert_eq!(metrics_path, "/metrics");
    let prefix = api
        .strip_prefix(&format!("http://{host}"))
        .expect("the API on the same server");

    let (status, body) = request(
        host,
        "POST",
        &format!("{prefix}/orchestrators/hello_sequence?timeout=60"),
        r#"["Tokyo","Lima"]"#,
    );
    assert_eq!(status, 200, "the run completes within the wait: {body}");
    assert!(body.contains("Hello Tokyo!"), "{body}");

    let (status, text) = request(host, "GET", "/metrics", "");
    assert_eq!(status, 200, "{text}");
    for name in [
        "# TYPE durable_store_commit_seconds histogram",
        "durable_store_commit_seconds_count{store=\"redb\"}",
        "durable_store_commit_batch_size_count{store=\"redb\"}",
        "# TYPE durable_queue_ready_orchestrations gauge",
        "# TYPE durable_queue_ready_activities gauge",
        "# TYPE durable_queue_timers_due gauge",
        "# TYPE durable_cache_misses_total counter",
        "# TYPE durable_cache_hits_total counter",
    ] {
        assert!(text.contains(name), "no `{name}` in /metrics:\n{text}");
    }
    let commits: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("durable_store_commit_seconds_count{store=\"redb\"} "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a commit count");
    assert!(commits > 0, "{text}");
}
