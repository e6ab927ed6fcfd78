//! What the command lines (`demo`, `bench`, `pg_bench`) share: how they report a bad
//! argument and how they end.

use std::process::ExitCode;

/// Prints `program: error` and the usage's first line to stderr; exit code 2 (bad usage).
pub fn usage_error(program: &str, usage: &str, error: &str) -> ExitCode {
    let first = usage.lines().next().unwrap_or_default();
    eprintln!("{program}: {error}\n{first}  ({program} --help for more)");
    ExitCode::from(2)
}

/// Runs `main` on a multi-threaded Tokio runtime; an error is printed as
/// `program: error` (its `Display`) with exit code 1.
pub fn run<F>(program: &str, main: F) -> ExitCode
where
    F: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|rt| rt.block_on(main));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}
