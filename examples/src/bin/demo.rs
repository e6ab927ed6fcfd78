//! The demo: runs the durable patterns end to end on an embedded redb file
//! (`durable-demo.redb` in the working directory) and prints what happens.
//!
//! ```text
//! cargo run -p examples --bin demo
//! ```
//!
//! Instances have fixed ids and are started with [`IdReusePolicy::DedupeRunning`]: kill the
//! demo midway and run it again, and it picks the unfinished instances up where they were.
//!
//! `cargo run -p examples --bin demo -- serve [--port 7071]` instead serves the Durable
//! Functions-compatible HTTP API and the dashboard on 127.0.0.1 with every pattern
//! registered, and prints the dashboard's URL and curl lines to try.
//!
//! Watching it: `RUST_LOG=info` prints the engine's lifecycle events to stderr
//! (`RUST_LOG=durable_core::http=debug` one span per API request; default: errors only).
//! `serve --metrics` (or `DURABLE_METRICS=1`) also serves the engine's metrics for
//! Prometheus at `/metrics` on the same port; without `serve`, `DURABLE_METRICS=1` prints
//! them at the end.

use std::time::Duration;

use durable_core::http::{self, HttpOptions};
use durable_core::prelude::*;
use durable_core::{InstanceQuery, RedbStore};
use examples::aggregator::{Stats, report_readings};
use examples::approval::{APPROVAL_EVENT, ApprovalRequest, Decision, approval_flow};
use examples::bank::{Account, Transfer, transfer};
use examples::chaining::hello_sequence;
use examples::fan_out::word_count;
use examples::monitor::{MonitorInput, job_monitor};
use examples::observe;
use examples::status::{AuditRequest, audit};
use metrics_exporter_prometheus::PrometheusHandle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "\
usage: demo [serve [--port N] [--metrics]]

  (no command)      run the six patterns once on durable-demo.redb and print what happens
  serve             serve the HTTP management API and the dashboard on 127.0.0.1
    --port N        the port (default 7071)
    --metrics       also serve Prometheus metrics at /metrics
  -h, --help        print this help

environment: RUST_LOG=info prints lifecycle events; DURABLE_METRICS=1 turns metrics on";

/// What the command line asks for.
enum Command {
    /// Run the patterns once.
    Patterns,
    /// Serve the HTTP API on `port`, with `/metrics` if `metrics`.
    Serve { port: u16, metrics: bool },
    /// Print the usage.
    Help,
}

/// Parses the arguments (after the program name) before anything is opened or started.
fn parse_args(args: &[String]) -> Result<Command, String> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Command::Help);
    }
    let Some((command, rest)) = args.split_first() else {
        return Ok(Command::Patterns);
    };
    if command != "serve" {
        return Err(format!(
            "unknown command `{command}` (the only command is `serve`)"
        ));
    }
    let (mut port, mut metrics) = (7071, false);
    let mut rest = rest.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--port" => {
                let value = rest.next().ok_or("`--port` needs a port number")?;
                port = value
                    .parse::<u16>()
                    .map_err(|_| format!("`--port {value}`: not a port number (0–65535)"))?;
            }
            "--metrics" => metrics = true,
            other => return Err(format!("unknown argument `{other}` to `serve`")),
        }
    }
    Ok(Command::Serve { port, metrics })
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            return std::process::ExitCode::SUCCESS;
        }
        Ok(command) => command,
        Err(e) => return examples::cli::usage_error("demo", USAGE, &e),
    };
    examples::cli::run("demo", run(command))
}

async fn run(command: Command) -> Result<(), BoxError> {
    examples::observe::init_tracing();
    let wants_metrics = matches!(command, Command::Serve { metrics: true, .. });
    // Installed before the worker starts, so its first queue reading is recorded.
    let metrics = if observe::metrics_requested(wants_metrics) {
        Some(observe::install_prometheus()?)
    } else {
        None
    };
    let path = "durable-demo.redb";
    let store = RedbStore::open(path)?;
    println!("store: {path} (redb, fsync on every commit)");
    let builder = examples::register_all(Worker::builder().store(store));
    // The activities' shared state: an HTTP client and its `User-Agent` (see `status`).
    let worker = examples::shared_state(builder, "durable-demo").start()?;
    match command {
        Command::Patterns => {
            run_patterns(worker).await?;
            if let Some(handle) = metrics {
                println!("== metrics (Prometheus text format)");
                print!("{}", observe::render(&handle));
            }
            Ok(())
        }
        Command::Serve { port, .. } => serve(worker, port, metrics).await,
        Command::Help => Ok(()),
    }
}

/// The demo's HTTP server: the management API alone (`http::serve`), or merged with
/// `/metrics` into one axum app.
enum Server {
    Api(http::HttpServer),
    WithMetrics(
        tokio::task::JoinHandle<std::io::Result<()>>,
        tokio::sync::oneshot::Sender<()>,
    ),
}

/// Serves the HTTP API (and `/metrics` when `metrics` is given) until Ctrl-C.
async fn serve(
    worker: Worker,
    port: u16,
    metrics: Option<PrometheusHandle>,
) -> Result<(), BoxError> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (url, server) = match metrics {
        None => {
            let server = http::serve(worker.client(), addr, HttpOptions::new()).await?;
            (server.url(), Server::Api(server))
        }
        Some(handle) => {
            let app = http::router(worker.client(), HttpOptions::new())
                .merge(observe::metrics_routes(handle));
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let url = format!("http://{}", listener.local_addr()?);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
            });
            (url, Server::WithMetrics(task, stop))
        }
    };
    seed(&worker.client()).await?;
    let base = format!("{url}{}", http::PREFIX);
    println!("dashboard: {url}{}", http::DASHBOARD);
    println!("serving the management API at {base}");
    if matches!(server, Server::WithMetrics(..)) {
        println!("metrics for Prometheus at {url}/metrics");
    }
    println!("try:");
    println!(
        "  curl -i -X POST {base}/orchestrators/hello_sequence -H 'content-type: application/json' -d '[\"Tokyo\",\"Lima\"]'"
    );
    println!("  curl -s {base}/instances/<id>?showHistory=true");
    println!(
        "  curl -i -X POST {base}/orchestrators/approval_flow/po-7 -d '{{\"item\":\"po-7\",\"timeout_hours\":72}}'"
    );
    println!(
        "  curl -i -X POST {base}/instances/po-7/raiseEvent/approval -d '{{\"approved\":true,\"by\":\"ada\"}}'"
    );
    println!("  curl -i -X POST '{base}/entities/stats/sensor-1?op=record' -d 42");
    println!("  curl -s {base}/entities/stats/sensor-1");
    println!("  curl -s '{base}/instances?runtimeStatus=Running'");
    tokio::signal::ctrl_c().await?;
    match server {
        Server::Api(server) => server.shutdown().await?,
        Server::WithMetrics(task, stop) => {
            let _ = stop.send(());
            task.await??;
        }
    }
    worker.shutdown().await;
    Ok(())
}

/// On an empty store, starts a few instances so the dashboard has something to show and to
/// operate: a chain that completes, an approval that waits for its event (raise it from the
/// instance's page), a monitor on a durable timer, and an entity.
async fn seed(client: &Client) -> Result<(), BoxError> {
    let counts = client.count_instances(&InstanceQuery::new()).await?;
    if counts.iter().any(|(_, n)| *n > 0) {
        return Ok(());
    }
    let id = |id: &str| StartOptions::new().instance_id(InstanceId::new(id).expect("valid id"));
    hello_sequence::start_with(
        client,
        vec!["Tokyo".into(), "Lima".into()],
        id("greet-cities"),
    )
    .await?;
    let request = ApprovalRequest {
        item: "purchase order 7".into(),
        timeout_hours: 72,
    };
    approval_flow::start_with(client, request, id("po-7")).await?;
    let input = MonitorInput {
        done_on: 3,
        interval_ms: 2_000,
        deadline_ms: 60_000,
    };
    job_monitor::start_with(client, input, id("watch-job")).await?;
    client.entity::<Stats>("sensor-1").record(42).await?;
    println!(
        "seeded: greet-cities (a chain), po-7 (waits for its `{APPROVAL_EVENT}` event: raise it \
         from its page, e.g. {{\"approved\":true,\"by\":\"ada\"}}), watch-job (a monitor), \
         entity stats/sensor-1"
    );
    Ok(())
}

/// Pattern 3 over real HTTP: start an orchestration with a POST, follow the 202's
/// `Location` until the status answers 200 with the output.
async fn async_http_api(worker: &Worker) -> Result<(), BoxError> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client as HttpClient;
    use hyper_util::rt::TokioExecutor;

    let server = http::serve(
        worker.client(),
        ([127, 0, 0, 1], 0).into(),
        HttpOptions::new(),
    )
    .await?;
    let http: HttpClient<_, Full<axum::body::Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let start = format!(
        "{}{}/orchestrators/hello_sequence",
        server.url(),
        http::PREFIX
    );
    let request = axum::http::Request::post(&start)
        .header("content-type", "application/json")
        .body(Full::from(r#"["Cairo","Oslo"]"#))?;
    let response = http.request(request).await?;
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Location header")?
        .to_owned();
    println!("   POST {start} -> {}", response.status());
    println!("   Location: {location}");
    for _ in 0..200 {
        let response = http.get(location.parse()?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body)?;
        println!("   GET Location -> {status} {}", json["runtimeStatus"]);
        if status == axum::http::StatusCode::OK {
            println!("   -> output {}", json["output"]);
            server.shutdown().await?;
            return Ok(());
        }
        #[allow(
            clippy::disallowed_methods,
            reason = "a client honouring Retry-After, shortened for the demo"
        )]
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("the HTTP-started orchestration did not finish".into())
}

#[allow(clippy::too_many_lines, reason = "the demo script reads top to bottom")]
async fn run_patterns(worker: Worker) -> Result<(), BoxError> {
    let client = worker.client();
    let opts = |id: &str| {
        StartOptions::new()
            .instance_id(InstanceId::new(id).expect("valid id"))
            .reuse(IdReusePolicy::DedupeRunning)
    };

    println!("== 1. chaining");
    let run = hello_sequence::start_with(
        &client,
        vec!["Tokyo".into(), "Seattle".into(), "London".into()],
        opts("demo-chaining"),
    )
    .await?;
    println!("   started {}", run.id());
    println!("   -> {:?}", run.wait().await?);

    println!("== 2. fan-out/fan-in");
    let docs: Vec<String> = (1..=100).map(|i| "lorem ipsum ".repeat(i)).collect();
    let run = word_count::start_with(&client, docs, opts("demo-fan-out")).await?;
    println!("   started {} over 100 documents in parallel", run.id());
    println!("   -> {} words", run.wait().await?);

    println!("== 3. async HTTP API");
    async_http_api(&worker).await?;

    println!("== 4. monitor");
    let input = MonitorInput {
        done_on: 3,
        interval_ms: 200,
        deadline_ms: 10_000,
    };
    let run = job_monitor::start_with(&client, input, opts("demo-monitor")).await?;
    println!("   started {} (polls on a durable timer)", run.id());
    println!("   -> {}", run.wait().await?);

    println!("== 5. human interaction");
    let req = ApprovalRequest {
        item: "purchase order 42".into(),
        timeout_hours: 72,
    };
    let run = approval_flow::start_with(&client, req, opts("demo-approval")).await?;
    println!(
        "   started {}; waiting up to 72h for `{APPROVAL_EVENT}`",
        run.id()
    );
    tokio::time::timeout(Duration::from_secs(5), async {
        while run.status().await.map(|s| s.status) != Ok(RuntimeStatus::Running) {
            tokio::task::yield_now().await;
        }
    })
    .await?;
    run.raise(
        APPROVAL_EVENT,
        &Decision {
            approved: true,
            by: "ada".into(),
        },
    )
    .await?;
    println!("   raised `{APPROVAL_EVENT}`");
    println!("   -> {}", run.wait().await?);

    println!("== 6. aggregator (entity)");
    let stats = client.entity::<Stats>("sensor-1");
    stats.reset().await?;
    for v in [3, 9, 4] {
        stats.record(v).await?;
    }
    println!("   signalled 3 readings to {}", stats.id());
    let run = report_readings::start_with(&client, vec![10, 2], opts("demo-aggregator")).await?;
    println!(
        "   orchestration {} signalled 2 more and called `average`",
        run.id()
    );
    println!("   -> average {:?}", run.wait().await?);
    println!("   state: {:?}", stats.state().await?);

    println!("== critical section: transfers between accounts");
    let mut runs = Vec::new();
    for (i, (from, to)) in [
        ("alice", "bob"),
        ("bob", "alice"),
        ("alice", "carol"),
        ("carol", "bob"),
    ]
    .into_iter()
    .enumerate()
    {
        let t = Transfer {
            from: from.into(),
            to: to.into(),
            amount: 30,
        };
        runs.push(transfer::start_with(&client, t, opts(&format!("demo-transfer-{i}"))).await?);
    }
    for r in &runs {
        r.wait().await?;
    }
    let mut total = 0;
    for who in ["alice", "bob", "carol"] {
        let b = client
            .read_entity::<Account>(who)
            .await?
            .map_or(0, |a| a.balance);
        println!("   {who}: {b}");
        total += b;
    }
    println!("   total {total} (money is conserved)");

    println!("== shared state: an activity calls the management API with the worker's HTTP client");
    let server = http::serve(
        worker.client(),
        ([127, 0, 0, 1], 0).into(),
        HttpOptions::new(),
    )
    .await?;
    let req = AuditRequest {
        api: format!("{}{}", server.url(), http::PREFIX),
        instance_ids: vec![
            "demo-chaining".into(),
            "demo-approval".into(),
            "demo-nonexistent".into(),
        ],
    };
    let run = audit::start(&client, req).await?;
    for (id, status) in run.wait().await? {
        println!("   {id}: {}", status.as_deref().unwrap_or("(unknown)"));
    }
    server.shutdown().await?;

    worker.shutdown().await;
    println!("all patterns completed");
    Ok(())
}
