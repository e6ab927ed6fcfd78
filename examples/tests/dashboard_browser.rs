//! The dashboard in a real browser: headless Chromium driven through chromedriver
//! (`WebDriver`, with `fantoccini`) against the management API's server, in-process, with the
//! examples' orchestrations and entities registered and instances in known states.
//!
//! Needs `/usr/bin/chromedriver` and `/usr/bin/chromium` (Debian's `chromium-driver` and
//! `chromium`; `.ci/run` installs them) or the paths in `DURABLE_CHROMEDRIVER` and
//! `DURABLE_CHROMIUM`. Without them every test prints that it was skipped and why, and passes.
//!
//! `DURABLE_SCREENSHOTS=docs` also writes the README's screenshots (1280x900):
//! `docs/dashboard-list.png`, `docs/dashboard-instance.png` and `docs/dashboard-entities.png`.
//!
//! No sleeps: every wait is a bounded guard around a check of the page (a `WebDriver` wait for an
//! element, or reloading the page until it shows a state the engine reaches on its own).

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use durable_core::http::{self, HttpOptions, HttpServer};
use durable_core::prelude::*;
use durable_core::{ClientError, MemoryStore};
use examples::aggregator::{Stats, report_readings};
use examples::approval::{ApprovalRequest, approval_flow};
use examples::bank::{Transfer, transfer};
use examples::chaining::hello_sequence;
use examples::fan_out::word_count;
use examples::monitor::{MonitorInput, job_monitor};
use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::wd::Capabilities;
use fantoccini::{Client as Browser, ClientBuilder, Locator};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), BoxError>;

/// Longest any one wait may take: the driver's start, a page, an instance reaching a state
/// (a hang guard only, never a timing assertion).
const GUARD: Duration = Duration::from_secs(60);

/// The README's screenshots' window size.
const WINDOW: (u32, u32) = (1280, 900);

/// An instance id made of markup, quotes and non-ASCII text (ids may hold anything but
/// `/`, `\`, `#`, `?` and control characters): if the page did not escape it, the `img` would
/// run its handler and the `script` element would appear in the DOM.
const HOSTILE_ID: &str = "x\"><img src=x onerror=alert(1)>'<script>alert(2)<b>é ✓ 𝄞";

/// A payload that changes the title and opens an alert if it ever runs.
const HOSTILE_SCRIPT: &str = "<script>document.title='pwned';alert(3)</script>";

// ----- the browser ------------------------------------------------------------------------

/// A child process (chromedriver, the demo), killed when the test ends however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver's and Chromium's paths, or why the tests cannot run.
fn browser_tools() -> Result<(PathBuf, PathBuf), String> {
    let find = |var: &str, default: &str, package: &str| {
        let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "no {} (install Debian's `{package}` or set {var})",
                path.display()
            ))
        }
    };
    Ok((
        find(
            "DURABLE_CHROMEDRIVER",
            "/usr/bin/chromedriver",
            "chromium-driver",
        )?,
        find("DURABLE_CHROMIUM", "/usr/bin/chromium", "chromium")?,
    ))
}

/// A port nobody listens on right now (the OS's pick, released for chromedriver to take).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds a free port");
    listener.local_addr().expect("a local address").port()
}

/// chromedriver's and Chromium's paths; `None`, after saying that `test` is skipped and
/// why, when one is missing.
fn tools_or_skip(test: &str) -> Option<(PathBuf, PathBuf)> {
    match browser_tools() {
        Ok(tools) => Some(tools),
        Err(why) => {
            // Straight to stderr, past the test harness's capture.
            let _ = writeln!(
                std::io::stderr(),
                "skipped {test}: {why}; .ci/run installs both"
            );
            None
        }
    }
}

/// Starts chromedriver on a free port and opens a headless Chromium session whose viewport
/// is [`WINDOW`].
async fn open_browser((chromedriver, chromium): (PathBuf, PathBuf)) -> (Process, Browser) {
    let port = free_port();
    let mut child = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("chromedriver starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let driver = Process(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx
            .recv_timeout(GUARD)
            .expect("chromedriver says it started");
        if line.contains("started successfully") {
            break;
        }
    }
    let mut caps = Capabilities::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let browser = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session through chromedriver");
    size_viewport(&browser).await.expect("window size");
    (driver, browser)
}

/// Sizes the window so that its viewport (what a screenshot shows) is [`WINDOW`].
async fn size_viewport(browser: &Browser) -> TestResult {
    browser.set_window_size(WINDOW.0, WINDOW.1).await?;
    let inner = browser
        .execute("return [window.innerWidth, window.innerHeight];", vec![])
        .await?;
    let inner = |i: usize| inner[i].as_u64().map_or(0, |v| v as u32);
    let (w, h) = (inner(0), inner(1));
    if (w, h) != WINDOW && w > 0 && h > 0 {
        let outer = (
            WINDOW.0 + WINDOW.0.saturating_sub(w),
            WINDOW.1 + WINDOW.1.saturating_sub(h),
        );
        browser.set_window_size(outer.0, outer.1).await?;
    }
    Ok(())
}

/// Runs `body` with the browser, then ends the session (so Chromium exits) even when the
/// body failed or panicked, and reports the body's outcome.
async fn with_browser<F, Fut>(test: &str, tools: (PathBuf, PathBuf), body: F)
where
    F: FnOnce(Browser) -> Fut,
    Fut: Future<Output = TestResult> + Send + 'static,
{
    let (driver, browser) = open_browser(tools).await;
    let outcome = tokio::spawn(body(browser.clone())).await;
    let _ = browser.close().await;
    drop(driver);
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{test}: {e}"),
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

// ----- the server and its instances ---------------------------------------------------------

/// The engine with every example registered, serving the management API (and with it the
/// dashboard) on a free loopback port.
struct App {
    worker: Worker,
    server: HttpServer,
}

impl App {
    async fn start() -> App {
        App::start_with(HttpOptions::new()).await
    }

    async fn start_with(options: HttpOptions) -> App {
        let builder = examples::register_all(Worker::builder().store(MemoryStore::new()));
        let worker = examples::shared_state(builder, "durable-dashboard-test")
            .start()
            .expect("worker starts");
        let server = http::serve(worker.client(), ([127, 0, 0, 1], 0).into(), options)
            .await
            .expect("serves");
        App { worker, server }
    }

    fn client(&self) -> Client {
        self.worker.client()
    }

    fn pages(&self) -> Pages {
        Pages(format!("{}/dashboard", self.server.url()))
    }

    async fn stop(self) {
        let _ = self.server.shutdown().await;
        self.worker.shutdown().await;
    }
}

/// The dashboard's root URL.
#[derive(Clone)]
struct Pages(String);

impl Pages {
    /// The URL of a dashboard page (`path` starts after `/dashboard`).
    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }
}

fn id(s: &str) -> InstanceId {
    InstanceId::new(s).expect("a valid instance id")
}

fn with_id(s: &str) -> StartOptions {
    StartOptions::new().instance_id(id(s))
}

/// Known states: five finished runs (chaining, fan-out, a monitor with timers, an aggregator
/// and a transfer, which also leave three entities) and two approvals waiting for their
/// `approval` event.
async fn seed(client: &Client) -> TestResult {
    let cities = vec!["Tokyo".to_owned(), "Lima".to_owned(), "Oslo".to_owned()];
    hello_sequence::start_with(client, cities, with_id("greet-cities"))
        .await?
        .wait()
        .await?;
    let docs = (1..=6).map(|i| "lorem ipsum ".repeat(i)).collect();
    word_count::start_with(client, docs, with_id("count-words"))
        .await?
        .wait()
        .await?;
    let monitor = MonitorInput {
        done_on: 3,
        interval_ms: 100,
        deadline_ms: 10_000,
    };
    job_monitor::start_with(client, monitor, with_id("watch-job"))
        .await?
        .wait()
        .await?;
    report_readings::start_with(client, vec![3, 9, 4], with_id("report-sensor"))
        .await?
        .wait()
        .await?;
    let t = Transfer {
        from: "alice".into(),
        to: "bob".into(),
        amount: 30,
    };
    transfer::start_with(client, t, with_id("pay-bob"))
        .await?
        .wait()
        .await?;
    for po in ["po-7", "po-8"] {
        let req = ApprovalRequest {
            item: format!("purchase order {po}"),
            timeout_hours: 72,
        };
        approval_flow::start_with(client, req, with_id(po)).await?;
    }
    Ok(())
}

// ----- page helpers -------------------------------------------------------------------------

/// The element `css` once the page has it (bounded by [`GUARD`]); the error names the
/// element and the page.
async fn wait_for(browser: &Browser, css: &str) -> Result<Element, BoxError> {
    match browser
        .wait()
        .at_most(GUARD)
        .for_element(Locator::Css(css))
        .await
    {
        Ok(element) => Ok(element),
        Err(CmdError::WaitTimeout) => Err(format!(
            "no `{css}` on {} within {GUARD:?}:\n{}",
            browser.current_url().await?,
            browser.source().await?
        )
        .into()),
        Err(e) => Err(e.into()),
    }
}

async fn text_of(browser: &Browser, css: &str) -> Result<String, BoxError> {
    Ok(wait_for(browser, css)
        .await?
        .text()
        .await?
        .trim()
        .to_owned())
}

/// Reloads the page until `check` holds for it (the page is server-rendered: a state the
/// engine reaches shows after a reload). Bounded by [`GUARD`]; `what` names the state.
async fn reload_until<F, Fut>(browser: &Browser, what: &str, mut check: F) -> TestResult
where
    F: FnMut(Browser) -> Fut,
    Fut: Future<Output = Result<bool, CmdError>>,
{
    let polled = tokio::time::timeout(GUARD, async {
        loop {
            if check(browser.clone()).await? {
                return Ok::<(), CmdError>(());
            }
            browser.refresh().await?;
        }
    })
    .await;
    match polled {
        Ok(done) => Ok(done?),
        Err(_) => Err(format!(
            "the page did not show {what} within {GUARD:?}; at {}:\n{}",
            browser.current_url().await?,
            browser.find(Locator::Css("body")).await?.text().await?
        )
        .into()),
    }
}

/// Whether the element `css` exists and its text is `expected`.
async fn shows(browser: &Browser, css: &str, expected: &str) -> Result<bool, CmdError> {
    match browser.find(Locator::Css(css)).await {
        Ok(e) => Ok(e.text().await?.trim() == expected),
        Err(e) if e.is_no_such_element() => Ok(false),
        Err(e) => Err(e),
    }
}

/// The ids of the instance rows on the list page, top to bottom.
async fn listed_ids(browser: &Browser) -> Result<Vec<String>, BoxError> {
    wait_for(browser, "table#instances").await?;
    let mut ids = Vec::new();
    for row in browser
        .find_all(Locator::Css("table#instances tr[data-instance-id]"))
        .await?
    {
        ids.push(row.attr("data-instance-id").await?.unwrap_or_default());
    }
    Ok(ids)
}

/// The row of instance `id` on the list page (found by attribute value, so any id works).
async fn row_of(browser: &Browser, id: &str) -> Result<Element, BoxError> {
    for row in browser
        .find_all(Locator::Css("table#instances tr[data-instance-id]"))
        .await?
    {
        if row.attr("data-instance-id").await?.as_deref() == Some(id) {
            return Ok(row);
        }
    }
    Err(format!("no row for {id:?}").into())
}

/// Fills the action form `action` on the current page with `fields`, submits it, checks
/// the confirmation page restates it, confirms, and returns the `#flash` that follows.
async fn act(
    browser: &Browser,
    action: &str,
    fields: &[(&str, &str)],
) -> Result<Element, BoxError> {
    let form_css = format!("form.action[data-action=\"{action}\"]");
    let form = wait_for(browser, &form_css).await?;
    for (name, value) in fields {
        let field = form
            .find(Locator::Css(&format!("[name=\"{name}\"]")))
            .await?;
        field.clear().await?;
        field.send_keys(value).await?;
    }
    form.find(Locator::Css("button, input[type=submit]"))
        .await?
        .click()
        .await?;
    let confirm = wait_for(browser, "form#confirm").await?;
    wait_for(browser, "a#confirm-no").await?;
    assert_inert(browser, &browser.title().await?).await?;
    let restated = browser.find(Locator::Css("body")).await?.text().await?;
    let restated_lower = restated.to_lowercase();
    assert!(
        restated_lower.contains(action) || restated_lower.contains(&action.replace('-', " ")),
        "the confirmation restates the action `{action}`:\n{restated}"
    );
    confirm
        .find(Locator::Css("button#confirm-yes"))
        .await?
        .click()
        .await?;
    wait_for(browser, "#flash").await
}

async fn assert_flash_ok(flash: &Element) -> TestResult {
    let class = flash.attr("class").await?.unwrap_or_default();
    let text = flash.text().await?;
    assert!(
        class.split_whitespace().any(|c| c == "ok"),
        "the action succeeded (#flash class {class:?}): {text}"
    );
    assert!(!text.trim().is_empty(), "#flash says what happened");
    Ok(())
}

/// Writes a screenshot of the current page to `docs/<name>.png` when
/// `DURABLE_SCREENSHOTS=docs`.
async fn screenshot(browser: &Browser, name: &str) -> TestResult {
    if std::env::var("DURABLE_SCREENSHOTS").as_deref() != Ok("docs") {
        return Ok(());
    }
    let png = browser.screenshot().await?;
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    std::fs::create_dir_all(&docs)?;
    std::fs::write(docs.join(format!("{name}.png")), png)?;
    Ok(())
}

// ----- the tests ----------------------------------------------------------------------------

/// The issue's flow: open the list, filter by status, open an instance and see its timeline,
/// raise the event it waits for and watch it complete, terminate another and purge it; then
/// a timeline with timers, the entities page and a signal. Also writes the screenshots when
/// asked to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operate_instances_from_the_dashboard() {
    let test = "operate_instances_from_the_dashboard";
    let Some(tools) = tools_or_skip(test) else {
        return;
    };
    let app = App::start().await;
    seed(&app.client()).await.expect("seeded");
    let (client, pages) = (app.client(), app.pages());
    with_browser(test, tools, move |b| async move {
        list_and_filter(&b, &pages).await?;
        raise_the_awaited_event(&b, &pages, &client).await?;
        terminate_and_purge(&b, &pages, &client).await?;
        timeline_with_timers(&b, &pages).await?;
        entities_and_signal(&b, &pages, &client).await
    })
    .await;
    app.stop().await;
}

/// The list: every instance, newest first, counted per status; then filtered to `Running`,
/// and po-7 opened from it.
async fn list_and_filter(b: &Browser, pages: &Pages) -> TestResult {
    b.goto(&pages.at("/")).await?;
    let ids = listed_ids(b).await?;
    let seeded = [
        "greet-cities",
        "count-words",
        "watch-job",
        "report-sensor",
        "pay-bob",
        "po-7",
        "po-8",
    ];
    for expected in seeded {
        assert!(
            ids.iter().any(|i| i == expected),
            "{expected} listed: {ids:?}"
        );
    }
    let pos = |id: &str| ids.iter().position(|i| i == id);
    assert!(pos("po-8") < pos("greet-cities"), "newest first: {ids:?}");
    let count = |status: &str| format!("#counts [data-status=\"{status}\"] .count");
    assert_eq!(text_of(b, &count("Running")).await?, "2");
    assert_eq!(text_of(b, &count("Completed")).await?, "5");
    let row = row_of(b, "po-7").await?;
    let row = &row;
    let cell = |css| async move { row.find(Locator::Css(css)).await?.text().await };
    assert_eq!(cell("td.status").await?.trim(), "Running");
    assert_eq!(cell("td.name").await?.trim(), "approval_flow");
    screenshot(b, "dashboard-list").await?;

    // Filter by status: only the two running approvals remain.
    let filters = wait_for(b, "form#filters").await?;
    filters
        .find(Locator::Css("select[name=status]"))
        .await?
        .select_by_value("Running")
        .await?;
    filters
        .find(Locator::Css("button#apply"))
        .await?
        .click()
        .await?;
    reload_until(b, "the list filtered to Running", |b| async move {
        let url = b.current_url().await?;
        Ok(url.query().unwrap_or("").contains("status=Running"))
    })
    .await?;
    let mut running = listed_ids(b).await?;
    running.sort();
    assert_eq!(running, ["po-7", "po-8"]);
    for cell in b
        .find_all(Locator::Css("table#instances td.status"))
        .await?
    {
        assert_eq!(cell.text().await?.trim(), "Running");
    }
    row_of(b, "po-7")
        .await?
        .find(Locator::Css("a.instance-link"))
        .await?
        .click()
        .await?;
    Ok(())
}

/// On po-7's page: its status, name and timeline; raise the event it waits for and watch it
/// complete.
async fn raise_the_awaited_event(b: &Browser, pages: &Pages, client: &Client) -> TestResult {
    assert_eq!(text_of(b, "#name").await?, "approval_flow");
    assert_eq!(text_of(b, "#status").await?, "Running");
    // The `notify` activity runs on its own; its bar shows once it is done.
    let notify = "#timeline svg [data-kind=\"activity\"][data-name=\"notify\"]";
    reload_until(b, "the notify activity's bar", |b| async move {
        Ok(!b.find_all(Locator::Css(notify)).await?.is_empty())
    })
    .await?;
    let bar = b.find(Locator::Css(notify)).await?;
    assert!(bar.attr("data-seq").await?.is_some(), "a bar has data-seq");
    assert_eq!(bar.attr("data-attempt").await?.as_deref(), Some("1"));
    let title = bar.find(Locator::Css("title")).await?.html(true).await?;
    assert!(
        title.contains("notify"),
        "the bar's title names it: {title}"
    );
    let history = wait_for(b, "pre#history-json").await?.html(true).await?;
    assert!(
        history.contains("notify"),
        "the raw history names the activity"
    );

    let decision = r#"{"approved":true,"by":"ada"}"#;
    let flash = act(
        b,
        "raise-event",
        &[("event", "approval"), ("data", decision)],
    )
    .await?;
    assert_flash_ok(&flash).await?;
    let url = b.current_url().await?;
    assert!(
        url.as_str().starts_with(&pages.at("/instances/po-7")),
        "back on po-7: {url}"
    );
    reload_until(b, "po-7 Completed", |b| async move {
        shows(&b, "#status", "Completed").await
    })
    .await?;
    let output = text_of(b, "pre#output").await?;
    assert!(
        output.contains("purchase order po-7 approved by ada"),
        "{output}"
    );
    let record = client.status(&id("po-7")).await?;
    assert_eq!(
        record.status,
        RuntimeStatus::Completed,
        "as the store has it"
    );
    Ok(())
}

/// Terminate po-8, then purge it: gone from the list and the store.
async fn terminate_and_purge(b: &Browser, pages: &Pages, client: &Client) -> TestResult {
    b.goto(&pages.at("/instances/po-8")).await?;
    let flash = act(b, "terminate", &[("reason", "no longer needed")]).await?;
    assert_flash_ok(&flash).await?;
    reload_until(b, "po-8 Terminated", |b| async move {
        shows(&b, "#status", "Terminated").await
    })
    .await?;
    let flash = act(b, "purge", &[]).await?;
    assert_flash_ok(&flash).await?;
    let ids = listed_ids(b).await?;
    assert!(!ids.iter().any(|i| i == "po-8"), "po-8 purged: {ids:?}");
    assert!(
        ids.iter().any(|i| i == "po-7"),
        "the list after purge: {ids:?}"
    );
    assert!(matches!(
        client.status(&id("po-8")).await,
        Err(ClientError::InstanceNotFound(_))
    ));
    Ok(())
}

/// The monitor's timeline: a bar per check and the timers between them.
async fn timeline_with_timers(b: &Browser, pages: &Pages) -> TestResult {
    b.goto(&pages.at("/instances/watch-job")).await?;
    wait_for(b, "#timeline svg [data-kind=\"timer\"]").await?;
    let checks = "#timeline svg [data-kind=\"activity\"][data-name=\"check_job\"]";
    assert_eq!(
        b.find_all(Locator::Css(checks)).await?.len(),
        3,
        "a bar per check"
    );
    assert_eq!(
        b.find_all(Locator::Css("#timeline svg [data-kind=\"timer\"]"))
            .await?
            .len(),
        2,
        "a bar per timer"
    );
    screenshot(b, "dashboard-instance").await
}

/// Entities: the aggregator's stats and the two accounts; signal the stats a reading.
async fn entities_and_signal(b: &Browser, pages: &Pages, client: &Client) -> TestResult {
    b.goto(&pages.at("/entities")).await?;
    wait_for(b, "table#entities").await?;
    for entity in ["@stats@sensor-1", "@account@alice", "@account@bob"] {
        wait_for(
            b,
            &format!("table#entities tr[data-entity-id=\"{entity}\"]"),
        )
        .await?;
    }
    screenshot(b, "dashboard-entities").await?;
    let link = "table#entities tr[data-entity-id=\"@stats@sensor-1\"] a.entity-link";
    b.find(Locator::Css(link)).await?.click().await?;
    let shown: serde_json::Value = serde_json::from_str(&text_of(b, "pre#state").await?)?;
    assert_eq!(shown["count"], 3, "{shown}");
    let flash = act(b, "signal", &[("operation", "record"), ("input", "50")]).await?;
    assert_flash_ok(&flash).await?;
    reload_until(b, "the signalled reading counted", |b| async move {
        let text = b.find(Locator::Css("pre#state")).await?.text().await?;
        let now: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        Ok(now["count"] == 4 && now["max"] == 50)
    })
    .await?;
    let stored = client.read_entity::<Stats>("sensor-1").await?;
    let stored = stored.expect("a state");
    assert_eq!((stored.count, stored.max), (4, Some(50)));
    Ok(())
}

/// Hostile instance ids, payloads and form input show as text: no element is injected,
/// nothing runs (the title stays, no alert opens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_and_payloads_show_as_text() {
    let test = "hostile_ids_and_payloads_show_as_text";
    let Some(tools) = tools_or_skip(test) else {
        return;
    };
    let app = App::start().await;
    let client = app.client();
    let names = vec![HOSTILE_SCRIPT.to_owned(), HOSTILE_TEXT.to_owned()];
    hello_sequence::start_with(&client, names, with_id(HOSTILE_ID))
        .await
        .expect("starts")
        .wait()
        .await
        .expect("completes");
    let req = ApprovalRequest {
        item: HOSTILE_SCRIPT.into(),
        timeout_hours: 72,
    };
    approval_flow::start_with(&client, req, with_id(&hostile_waiting()))
        .await
        .expect("starts");
    let pages = app.pages();
    with_browser(test, tools, move |b| async move {
        hostile_id_and_payloads(&b, &pages).await?;
        hostile_form_input(&b, &pages).await
    })
    .await;
    app.stop().await;
}

/// Markup-like text in a payload.
const HOSTILE_TEXT: &str = "\"quoted' & ☃ <b>bold</b>";

/// A running instance with a hostile id, for the forms.
fn hostile_waiting() -> String {
    format!("{HOSTILE_ID} waiting")
}

/// The hostile id in the list and on its page, the hostile input and output on the page.
async fn hostile_id_and_payloads(b: &Browser, pages: &Pages) -> TestResult {
    b.goto(&pages.at("/")).await?;
    let ids = listed_ids(b).await?;
    assert!(
        ids.iter().any(|i| i == HOSTILE_ID),
        "listed verbatim: {ids:?}"
    );
    let title = b.title().await?;
    assert_inert(b, &title).await?;
    let row = row_of(b, HOSTILE_ID).await?;
    let link = row.find(Locator::Css("a.instance-link")).await?;
    let shown = link.text().await?;
    assert!(
        shown.contains(HOSTILE_ID),
        "the link shows the id as text: {shown}"
    );

    // Its page: the id, the input and the output are text, nothing more.
    link.click().await?;
    assert_eq!(text_of(b, "#status").await?, "Completed");
    let title = b.title().await?;
    for css in ["pre#input", "pre#output"] {
        let pre = wait_for(b, css).await?;
        let text = pre.text().await?;
        assert!(
            text.contains(HOSTILE_SCRIPT),
            "{css} shows the script as text: {text}"
        );
        assert!(text.contains("<b>bold</b>"), "{css}: {text}");
        let inside = pre.find_all(Locator::Css("*")).await?;
        assert!(
            inside.is_empty(),
            "no element inside {css}: {}",
            pre.html(true).await?
        );
    }
    let body = b.find(Locator::Css("body")).await?.text().await?;
    assert!(body.contains(HOSTILE_ID), "the id is shown verbatim");
    assert_inert(b, &title).await
}

/// A hostile event name and payload through the form, the confirmation and the flash.
async fn hostile_form_input(b: &Browser, pages: &Pages) -> TestResult {
    b.goto(&pages.at("/")).await?;
    row_of(b, &hostile_waiting())
        .await?
        .find(Locator::Css("a.instance-link"))
        .await?
        .click()
        .await?;
    wait_for(b, "#status").await?;
    let title = b.title().await?;
    let data = "\"<img src=x onerror=alert(4)>\"";
    let flash = act(
        b,
        "raise-event",
        &[("event", HOSTILE_SCRIPT), ("data", data)],
    )
    .await?;
    assert_flash_ok(&flash).await?;
    let markup = flash.find_all(Locator::Css("script, img")).await?;
    assert!(
        markup.is_empty(),
        "no markup in the flash: {}",
        flash.html(true).await?
    );
    let url = b.current_url().await?;
    assert!(
        url.as_str().contains("/dashboard/instances/"),
        "on the instance: {url}"
    );
    assert_inert(b, &title).await
}

/// `demo serve` prints the dashboard's URL, and that URL opens the dashboard; its nav leads
/// to the entities page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_demo_serve_prints_opens_the_dashboard() {
    let test = "the_url_demo_serve_prints_opens_the_dashboard";
    let Some(tools) = tools_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["serve", "--port", "0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("demo starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let demo = Process(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let url = loop {
        let line = rx
            .recv_timeout(GUARD)
            .expect("demo prints the dashboard's URL");
        if let Some(url) = line.strip_prefix("dashboard: ") {
            break url.trim().to_owned();
        }
    };
    with_browser(test, tools, move |b| async move {
        b.goto(&url).await?;
        wait_for(&b, "table#instances").await?;
        wait_for(&b, "form#filters").await?;
        wait_for(&b, "nav a#nav-entities").await?.click().await?;
        wait_for(&b, "table#entities").await?;
        wait_for(&b, "nav a#nav-instances").await?.click().await?;
        wait_for(&b, "table#instances").await?;
        Ok(())
    })
    .await;
    drop(demo);
}

/// The token this test's server wants.
const TOKEN: &str = "s3cret-token";

/// With a token configured: the login form sets the `durable_token` cookie (`HttpOnly`,
/// `SameSite=Strict`) and leads back without the token in the URL; the browser's form posts
/// pass the same-origin rule; the list's auto-refresh (app.js, under the page's CSP) shows a
/// change the test did not reload for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_login_actions_and_auto_refresh() {
    let test = "token_login_actions_and_auto_refresh";
    let Some(tools) = tools_or_skip(test) else {
        return;
    };
    let app = App::start_with(HttpOptions::new().bearer_token(TOKEN)).await;
    let client = app.client();
    for po in ["po-9", "po-10"] {
        let req = ApprovalRequest {
            item: po.into(),
            timeout_hours: 72,
        };
        approval_flow::start_with(&client, req, with_id(po))
            .await
            .expect("starts");
    }
    let pages = app.pages();
    with_browser(test, tools, move |b| async move {
        // Signed out: the login page; the token through its form.
        b.goto(&pages.at("/")).await?;
        let login = wait_for(&b, "form#login").await?;
        assert!(
            b.find_all(Locator::Css("table#instances"))
                .await?
                .is_empty()
        );
        login
            .find(Locator::Css("input[name=code]"))
            .await?
            .send_keys(TOKEN)
            .await?;
        login.find(Locator::Css("button")).await?.click().await?;
        wait_for(&b, "table#instances").await?;
        let url = b.current_url().await?;
        assert!(
            !url.as_str().contains(TOKEN),
            "the token left the URL: {url}"
        );
        let cookie = b.get_named_cookie("durable_token").await?;
        assert_eq!(cookie.http_only(), Some(true), "{cookie:?}");
        assert_eq!(
            format!("{:?}", cookie.same_site()),
            "Some(Strict)",
            "{cookie:?}"
        );

        // A form post from the page passes (cookie and same origin).
        b.goto(&pages.at("/instances/po-10")).await?;
        let flash = act(&b, "terminate", &[("reason", "from the browser")]).await?;
        assert_flash_ok(&flash).await?;

        // Auto-refresh: po-9 completes without the test reloading the list.
        b.goto(&pages.at("/")).await?;
        wait_for(&b, "input#auto-refresh").await?.click().await?;
        reload_free_wait(
            &b,
            "the refresh=1 list",
            "//input[@id='auto-refresh' and @checked]",
        )
        .await?;
        assert!(
            b.current_url()
                .await?
                .query()
                .unwrap_or("")
                .contains("refresh=1")
        );
        let decision = serde_json::json!({"approved": true, "by": "grace"});
        client
            .raise_event(&id("po-9"), "approval", &decision)
            .await?;
        client.wait_for_completion(&id("po-9")).await?;
        let completed = "//tr[@data-instance-id='po-9']/td[contains(concat(' ', @class, ' '), \
                         ' status ')][normalize-space()='Completed']";
        reload_free_wait(&b, "po-9 Completed after an automatic reload", completed).await
    })
    .await;
    app.stop().await;
}

/// Waits, without reloading, until the page has an element matching `xpath` (bounded by
/// [`GUARD`]; a `WebDriver` wait).
async fn reload_free_wait(b: &Browser, what: &str, xpath: &str) -> TestResult {
    match b
        .wait()
        .at_most(GUARD)
        .for_element(Locator::XPath(xpath))
        .await
    {
        Ok(_) => Ok(()),
        Err(CmdError::WaitTimeout) => Err(format!(
            "the page did not show {what} within {GUARD:?}: {}",
            b.current_url().await?
        )
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// Nothing the test's strings carry ran or was parsed into elements: the title is
/// `title`, no alert is open, the only scripts are the dashboard's own file and there is no
/// `img` from the hostile strings.
async fn assert_inert(b: &Browser, title: &str) -> TestResult {
    assert_eq!(b.title().await?, title, "no script changed the title");
    match b.get_alert_text().await {
        Err(e) if e.is_no_such_alert() => {}
        Ok(text) => panic!("an alert opened: {text:?}"),
        Err(e) => return Err(e.into()),
    }
    for script in b.find_all(Locator::Css("script")).await? {
        let src = script.attr("src").await?.unwrap_or_default();
        assert!(
            src.ends_with("/dashboard/app.js"),
            "only the dashboard's own script: {}",
            script.html(false).await?
        );
    }
    assert!(
        b.find_all(Locator::Css("img[src=x]")).await?.is_empty(),
        "no injected img"
    );
    Ok(())
}
