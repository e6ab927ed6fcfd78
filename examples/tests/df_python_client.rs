//! The unmodified Durable Functions Python client (`azure-functions-durable` 1.7.0) against
//! `demo serve`: runs `examples/scripts/df_python_client.py`, which starts, queries, raises
//! events, signals entities, suspends, resumes, terminates, rewinds, restarts and purges
//! through the client and asserts every answer.
//!
//! Python comes from `$DURABLE_DF_PYTHON`, else from the venv `.ci/run` creates
//! (`target/df-client-venv`), else `python3` on the `PATH`; it must import the package at
//! version 1.7.0. Without one the test passes with a note saying why it was skipped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Longest the demo may take to start serving, and the script to run (hang guards only;
/// the script has its own per-step guards).
const START_GUARD: Duration = Duration::from_secs(120);
const SCRIPT_GUARD: Duration = Duration::from_secs(900);
const PACKAGE_VERSION: &str = "1.7.0";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("examples/ lives in the workspace")
        .to_owned()
}

/// A Python that imports `azure.durable_functions` at the pinned version, or why none.
fn python() -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("DURABLE_DF_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(workspace().join("target/df-client-venv/bin/python"));
    candidates.push(PathBuf::from("python3"));
    let mut why = Vec::new();
    for python in candidates {
        let probe = Command::new(&python)
            .args([
                "-c",
                "import importlib.metadata as m, azure.durable_functions; \
                 print(m.version('azure-functions-durable'))",
            ])
            .output();
        match probe {
            Ok(out) if out.status.success() => {
                let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if version == PACKAGE_VERSION {
                    return Ok(python);
                }
                why.push(format!(
                    "{} has azure-functions-durable {version}, not {PACKAGE_VERSION}",
                    python.display()
                ));
            }
            Ok(_) => why.push(format!(
                "{} cannot import azure.durable_functions",
                python.display()
            )),
            Err(e) => why.push(format!("{}: {e}", python.display())),
        }
    }
    Err(why.join("; "))
}

/// Kills the demo when the test ends, however it ends.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `demo serve --port 0` in `dir` and returns it with the API's base URL.
fn start_demo(dir: &Path) -> (Demo, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["serve", "--port", "0"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("demo starts");
    let mut demo = Demo(child);
    let stdout = demo.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("serving the management API at ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(START_GUARD)
        .expect("demo prints the URL it serves");
    (demo, url)
}

#[test]
fn the_durable_functions_python_client_drives_demo_serve() {
    let python = match python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!(
                "skipped: no Python with azure-functions-durable=={PACKAGE_VERSION} ({why}); \
                 .ci/run installs it into target/df-client-venv"
            );
            return;
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let (_demo, url) = start_demo(dir.path());
    let script = workspace().join("examples/scripts/df_python_client.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(format!("{url}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        let out = std::io::read_to_string(stdout).unwrap_or_default();
        let err = std::io::read_to_string(stderr).unwrap_or_default();
        let _ = tx.send((out, err));
    });
    let Ok((out, err)) = rx.recv_timeout(SCRIPT_GUARD) else {
        let _ = child.kill();
        panic!("the client script did not finish");
    };
    let status = child.wait().expect("python exits");
    println!("{out}");
    assert!(
        status.success(),
        "the Durable Functions client script failed ({status}):\n{out}\n{err}"
    );
    assert!(
        out.contains("all Durable Functions client checks passed"),
        "{out}"
    );
}
