//! The benchmark's `--quick` mode as a smoke test: every workload runs and reports a figure.
//! Figures are not judged here (a debug build on a shared CI machine says nothing about
//! speed); the benchmark itself is `cargo run --release -p examples --bin bench`.

use std::process::Command;

#[test]
fn bench_quick_reports_every_workload() {
    let dir = std::env::temp_dir().join(format!("durable-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let table = dir.join("bench-results.md");
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--quick", "--out"])
        .arg(&table)
        .current_dir(&dir)
        .output()
        .expect("the bench binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    let written = std::fs::read_to_string(&table).expect("the table is written");
    for workload in ["W1", "W2", "W3", "W4", "R", "M"] {
        let row = written
            .lines()
            .find(|l| l.starts_with(&format!("| durable | {workload} |")))
            .unwrap_or_else(|| panic!("no {workload} row in:\n{written}"));
        // | system | workload | metric | median | p99 | n | ...
        let median = row.split('|').nth(4).unwrap().trim();
        let number: String = median
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        assert!(
            number.parse::<f64>().is_ok_and(|v| v > 0.0),
            "{workload}: no figure in {row}"
        );
        assert!(stdout.contains(row), "{workload}: the row is also printed");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
