//! The command lines: `--help` prints the usage and succeeds; a bad argument is an error
//! that names it, printed as text (not debug output), before any store is opened.

use std::process::{Command, Output};

fn run(bin: &str, args: &[&str]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir.path())
        .env_remove("DURABLE_TEST_POSTGRES_URL")
        .output()
        .unwrap();
    (out, dir)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Files the command left in its working directory.
fn files(dir: &tempfile::TempDir) -> Vec<String> {
    std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn demo_help_and_bad_arguments() {
    let demo = env!("CARGO_BIN_EXE_demo");
    for help in ["--help", "-h"] {
        let (out, dir) = run(demo, &[help]);
        assert!(out.status.success(), "{help}: {out:?}");
        let stdout = text(&out.stdout);
        assert!(stdout.starts_with("usage: demo"), "{stdout}");
        assert!(stdout.contains("--port N"), "{stdout}");
        assert_eq!(files(&dir), Vec::<String>::new(), "--help opened no store");
    }
    for (args, names) in [
        (&["bogus"][..], "`bogus`"),
        (&["serve", "--port", "eighty"][..], "`--port eighty`"),
        (&["serve", "--port"][..], "`--port`"),
        (&["serve", "--verbose"][..], "`--verbose`"),
    ] {
        let (out, dir) = run(demo, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.starts_with("demo: "), "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?}: {stderr}");
        assert!(!stderr.contains('"'), "printed with Display: {stderr}");
        assert_eq!(
            files(&dir),
            Vec::<String>::new(),
            "{args:?} opened no store"
        );
    }
}

/// Checks `--help` and a set of bad argument lists for one of the command lines.
fn check_cli(bin: &str, name: &str, bad: &[(&[&str], &str)]) {
    let (out, dir) = run(bin, &["--help"]);
    assert!(out.status.success(), "{name} --help: {out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with(&format!("usage: {name}")), "{stdout}");
    assert_eq!(
        files(&dir),
        Vec::<String>::new(),
        "{name} --help wrote nothing"
    );
    for (args, names) in bad {
        let (out, dir) = run(bin, args);
        assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {out:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.starts_with(&format!("{name}: ")),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains(names), "{args:?}: {stderr}");
        assert_eq!(
            files(&dir),
            Vec::<String>::new(),
            "{name} {args:?} wrote nothing"
        );
    }
}

#[test]
fn bench_help_and_bad_arguments() {
    check_cli(
        env!("CARGO_BIN_EXE_bench"),
        "bench",
        &[
            (&["--only", "W1,W9"], "`W9`"),
            (&["--out"], "`--out`"),
            (&["--fast"], "`--fast`"),
        ],
    );
}

#[cfg(feature = "postgres")]
#[test]
fn pg_bench_help_and_bad_arguments() {
    check_cli(
        env!("CARGO_BIN_EXE_pg_bench"),
        "pg_bench",
        &[
            (&["--instances", "many"], "`--instances many`"),
            (&["--workers", "1,x"], "`--workers x`"),
            (&["--samples", "0"], "`--samples 0`"),
            (&["--nope"], "`--nope`"),
        ],
    );
}
