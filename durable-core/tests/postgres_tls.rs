//! `PostgresStore` over TLS (feature `postgres-rustls`): `from_config` with a rustls
//! connector trusting a private CA runs an orchestration end to end on connections the server
//! reports as TLS; `from_pool` does the same on a pool the test builds; `connect` with
//! `sslmode=require` attempts TLS (and refuses a certificate the platform does not trust).
//!
//! Needs a server that takes TLS: `DURABLE_TEST_POSTGRES_TLS_URL` (with `sslmode=require`)
//! and `DURABLE_TEST_POSTGRES_TLS_CA` (the PEM file of the CA that signed the server's
//! certificate); `.ci/pg-tls-cluster` makes such a server and prints both. Skipped, with one
//! line saying why, when they are not set.
#![cfg(feature = "postgres-rustls")]

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use durable_core::deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use durable_core::prelude::*;
use durable_core::rustls::{self, pki_types::CertificateDer, pki_types::pem::PemObject};
use durable_core::tokio_postgres::{self, Config};
use durable_core::tokio_postgres_rustls::MakeRustlsConnect;
use durable_core::{Event, PostgresOptions, PostgresStore, Store, StoreError};

const URL_ENV: &str = "DURABLE_TEST_POSTGRES_TLS_URL";
const CA_ENV: &str = "DURABLE_TEST_POSTGRES_TLS_CA";

#[activity]
async fn greet(_ctx: ActivityContext, name: String) -> Result<String, ActivityError> {
    Ok(format!("hello, {name}"))
}

#[orchestrator]
async fn hello(ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    Ok(ctx.call(greet, name).await?)
}

/// The server's URL and its CA's PEM file, or `None` (after saying why) when not set.
fn server() -> Option<(String, String)> {
    match (std::env::var(URL_ENV), std::env::var(CA_ENV)) {
        (Ok(url), Ok(ca)) if !url.is_empty() && !ca.is_empty() => Some((url, ca)),
        _ => {
            static SKIPPED: std::sync::Once = std::sync::Once::new();
            SKIPPED.call_once(|| {
                // Straight to stderr, past the test harness's capture.
                let _ = writeln!(
                    std::io::stderr(),
                    "PostgreSQL TLS tests skipped: {URL_ENV} and {CA_ENV} are not both set \
                     (`eval \"$(.ci/pg-tls-cluster)\"` makes a local server and sets them)"
                );
            });
            None
        }
    }
}

/// rustls trusting only the CA in `ca_file`.
fn tls(ca_file: &str) -> MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).expect("the CA file") {
        roots.add(cert.expect("a PEM certificate")).expect("a CA");
    }
    #[allow(deprecated, reason = "ring, as durable-core uses")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    MakeRustlsConnect::new(config)
}

fn fresh_hub() -> String {
    format!("durable_tls_{}", &InstanceId::random().as_str()[..12])
}

/// Runs `hello` on `store` with a worker: it completes with the activity's output.
async fn run_hello(store: PostgresStore) {
    let worker = Worker::builder()
        .register(hello)
        .register(greet)
        .store(store.clone())
        .start()
        .unwrap();
    let client = worker.client();
    let handle = hello::start(&client, "tls".to_owned()).await.unwrap();
    let record = tokio::time::timeout(
        Duration::from_secs(30),
        client.wait_for_completion(handle.id()),
    )
    .await
    .expect("the orchestration finishes")
    .unwrap();
    assert_eq!(record.status, RuntimeStatus::Completed, "{record:?}");
    assert_eq!(
        record.output::<String>().unwrap().as_deref(),
        Some("hello, tls")
    );
    let history = store.read_history(handle.id()).await.unwrap();
    let steps = history
        .iter()
        .filter(|e| matches!(e.event, Event::TaskCompleted { .. }))
        .count();
    assert_eq!(steps, 1, "one activity result in {history:?}");
    worker.shutdown().await;
}

/// The connections named `app`, and how many of them the server reports as TLS.
async fn tls_sessions(url: &str, ca: &str, app: &str) -> (i64, i64, bool) {
    let config: Config = url.parse().unwrap();
    let (client, connection) = config.connect(tls(ca)).await.unwrap();
    let driver = tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                     WHERE a.application_name = $1),
                    (SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                     WHERE a.application_name = $1 AND s.ssl),
                    (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
            &[&app],
        )
        .await
        .unwrap();
    drop(client);
    let _ = driver.await;
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_config_over_tls_runs_an_orchestration() {
    let Some((url, ca)) = server() else { return };
    let app = format!("durable_tls_test_{}", &InstanceId::random().as_str()[..8]);
    let mut config: Config = url.parse().unwrap();
    assert_eq!(
        config.get_ssl_mode(),
        tokio_postgres::config::SslMode::Require,
        "{URL_ENV} asks for TLS"
    );
    config.application_name(&app);
    let store = PostgresStore::from_config(config, tls(&ca), PostgresOptions::new(fresh_hub()))
        .await
        .unwrap();
    run_hello(store.clone()).await;
    let (sessions, over_tls, this_one) = tls_sessions(&url, &ca, &app).await;
    // The pool's, the lease pool's and the listener's connections at least.
    assert!(sessions >= 3, "{sessions} connections named {app}");
    assert_eq!(
        over_tls, sessions,
        "every connection of the store is over TLS"
    );
    assert!(this_one, "the checking connection is over TLS");
    store.drop_task_hub().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_pool_over_tls_runs_an_orchestration() {
    let Some((url, ca)) = server() else { return };
    let app = format!("durable_tls_pool_{}", &InstanceId::random().as_str()[..8]);
    let mut config: Config = url.parse().unwrap();
    config.application_name(&app);
    let manager = Manager::from_config(
        config,
        tls(&ca),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager).max_size(4).build().unwrap();
    let store = PostgresStore::from_pool(pool.clone(), PostgresOptions::new(fresh_hub()))
        .await
        .unwrap();
    run_hello(store.clone()).await;
    let (sessions, over_tls, _) = tls_sessions(&url, &ca, &app).await;
    assert!(sessions >= 1, "{sessions} connections named {app}");
    assert_eq!(over_tls, sessions, "every pooled connection is over TLS");
    assert_eq!(
        sessions,
        i64::try_from(pool.status().size).unwrap(),
        "the store opened no connection beyond the user's pool"
    );
    store.drop_task_hub().await.unwrap();
}

/// `connect` with `sslmode=require` speaks TLS and verifies the server against the
/// platform's roots, which do not hold the test's private CA: the handshake is refused
/// (without TLS support, the error would be that the server needs TLS or that TLS is
/// unavailable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_sslmode_require_verifies_the_certificate() {
    let Some((url, _)) = server() else { return };
    let err = PostgresStore::connect(&url, PostgresOptions::new(fresh_hub()))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let chain = {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            let _ = write!(text, " / {s}");
            source = s.source();
        }
        text
    };
    assert!(
        chain.contains("certificate") || chain.contains("UnknownIssuer"),
        "a certificate error: {chain}"
    );
}
