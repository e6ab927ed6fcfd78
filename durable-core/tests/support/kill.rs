//! What the crash tests that SIGKILL a child process share (`storage_redb.rs`,
//! `transactional_crash.rs`): a seeded random source, spawning this test binary as a child
//! running one test, and waiting for it or killing it.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `SplitMix64`: small, seeded, good enough to pick delays and sizes.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The seed in environment variable `var`, else one from the clock.
#[allow(
    clippy::disallowed_methods,
    reason = "a seed from the clock when none is given"
)]
pub(crate) fn seed(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// How a child's round ended.
#[derive(Debug)]
pub(crate) enum RoundEnd {
    Killed,
    Exited(ExitStatus),
}

/// Runs this test binary's test `test` alone in a child process with `envs`, its output in
/// `log`.
pub(crate) fn spawn_self(test: &str, envs: &[(&str, String)], log: &Path) -> Child {
    let out = File::create(log).expect("child log file");
    let err = out.try_clone().expect("child log file");
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn the child")
}

/// The last 60 lines of a child's log.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Waits up to `limit` for the child to exit; kills it (SIGKILL) if it has not.
#[allow(
    clippy::disallowed_methods,
    reason = "the parent times its kills in real time"
)]
pub(crate) fn wait_or_kill(child: &mut Child, limit: Duration) -> RoundEnd {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            return RoundEnd::Exited(status);
        }
        let now = Instant::now();
        if now >= until {
            child.kill().expect("SIGKILL the child");
            child.wait().expect("reap the child");
            return RoundEnd::Killed;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(2)));
    }
}
