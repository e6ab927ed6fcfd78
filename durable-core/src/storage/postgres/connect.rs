//! Opening a [`PostgresStore`]: its pools, the schema's migration, the listener and the
//! notifier.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Config, NoTls, Socket};

use super::notify::{ListenConnector, Listener, Notifier, listen_connector};
use super::schema::{migrate, quote_ident, validate_hub};
use super::sql::Sql;
use super::util::describe;
use super::{Inner, PostgresOptions, PostgresStore};
use crate::error::StoreError;
use crate::storage::StoreSignals;

/// Connections for taking leases (fetches) and reading wake times.
const LEASE_POOL_SIZE: usize = 4;

impl PostgresStore {
    /// Connects to the database at `url` (a `postgres://user:password@host:port/database`
    /// URL or a `host=… user=… dbname=…` string), creates or migrates the task hub's schema,
    /// and starts listening for other processes' notifications.
    ///
    /// Without the feature `postgres-rustls` the connections use no TLS (`sslmode=require`
    /// fails): run them over a trusted network, or give a TLS connector to
    /// [`from_config`](Self::from_config). With it, a URL with `sslmode=require` connects
    /// over TLS (rustls), verifying the server's certificate against the platform's trusted
    /// roots (or, when the platform has none, the Mozilla roots of `webpki-roots`); other
    /// URLs (`sslmode=prefer`, the default, and `disable`) connect without TLS as before. For
    /// a private CA, build the connector yourself and use [`from_config`](Self::from_config).
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the URL is invalid, the server cannot be reached or
    /// refuses the login (or the TLS handshake), the user may not create the schema, the
    /// schema exists but is not a task hub, or it holds a schema version newer than this
    /// build knows.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use durable_core::{PostgresOptions, PostgresStore};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), durable_core::StoreError> {
    /// let store = PostgresStore::connect("postgres://postgres@localhost/app", PostgresOptions::default()).await?;
    /// assert_eq!(store.task_hub(), "durable");
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let config: Config = url.parse().map_err(|e| {
            StoreError::backend_with(
                format!("invalid PostgreSQL connection string: {}", describe(&e)),
                e,
            )
        })?;
        #[cfg(feature = "postgres-rustls")]
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Self::from_config(config, super::tls::platform_connector()?, options).await;
        }
        Self::from_config(config, NoTls, options).await
    }

    /// Connects with `config` through the TLS connector `tls` (any
    /// [`MakeTlsConnect`](tokio_postgres::tls::MakeTlsConnect), e.g. `NoTls`,
    /// `tokio_postgres_rustls::MakeRustlsConnect` or `postgres_native_tls::MakeTlsConnector`),
    /// creates or migrates the task hub's schema, and starts listening for other processes'
    /// notifications on a connection of its own (reopened with `config` and `tls` when it is
    /// lost).
    ///
    /// Like [`connect`](Self::connect), it opens a pool of
    /// [`pool_size`](PostgresOptions::pool_size) connections, a few more for taking leases
    /// (whose sessions commit asynchronously) and one for notifications. An
    /// `application_name` (`durable`) and a connect timeout
    /// ([`PostgresOptions::connect_timeout`]) are set when `config` has none.
    ///
    /// `config` and `tls` are of `tokio-postgres` 0.7, re-exported as
    /// [`durable_core::tokio_postgres`](crate::tokio_postgres) (depend on the same version,
    /// or use the re-export). With the feature `postgres-rustls`, rustls and its connector
    /// are re-exported as [`durable_core::rustls`](crate::rustls) and
    /// [`durable_core::tokio_postgres_rustls`](crate::tokio_postgres_rustls).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    ///
    /// # Examples
    ///
    /// A server whose certificate is signed by a private CA, over rustls (feature
    /// `postgres-rustls`):
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres-rustls")]
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use durable_core::rustls::{self, pki_types::{CertificateDer, pem::PemObject}};
    /// use durable_core::tokio_postgres::Config;
    /// use durable_core::tokio_postgres_rustls::MakeRustlsConnect;
    /// use durable_core::{PostgresOptions, PostgresStore};
    ///
    /// let mut roots = rustls::RootCertStore::empty();
    /// for cert in CertificateDer::pem_file_iter("/etc/durable/db-ca.pem")? {
    ///     roots.add(cert?)?;
    /// }
    /// // The process's default crypto provider: ring, when no other is enabled.
    /// let tls = rustls::ClientConfig::builder()
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    /// let config: Config = "postgres://durable@db.internal/app?sslmode=require".parse()?;
    /// let store =
    ///     PostgresStore::from_config(config, MakeRustlsConnect::new(tls), PostgresOptions::new("orders"))
    ///         .await?;
    /// # drop(store);
    /// # Ok(()) }
    /// # #[cfg(not(feature = "postgres-rustls"))]
    /// # fn main() {}
    /// ```
    #[allow(clippy::similar_names, reason = "config and lease_config")]
    pub async fn from_config<T>(
        mut config: Config,
        tls: T,
        options: PostgresOptions,
    ) -> Result<Self, StoreError>
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + Sync,
        T::TlsConnect: Send + Sync,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        validate_hub(&options.task_hub)?;
        set_defaults(&mut config, &options);
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = build_pool(manager, options.pool_size.max(1), &options)?;
        // Leases are taken on their own connections with asynchronous commit: a lease lost
        // in a database crash is a released lease, so taking one need not wait for the WAL
        // flush. Every other write is durable before it is acknowledged.
        let mut lease_config = config.clone();
        let session = match config.get_options() {
            Some(o) => format!("{o} -c synchronous_commit=off"),
            None => "-c synchronous_commit=off".to_owned(),
        };
        lease_config.options(&session);
        let lease_pool = build_pool(
            Manager::from_config(
                lease_config,
                tls.clone(),
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            ),
            LEASE_POOL_SIZE,
            &options,
        )?;
        Self::start(
            pool,
            lease_pool,
            false,
            Some(listen_connector(config, tls)),
            options,
        )
        .await
    }

    /// A store on a connection pool the application built (say, with a custom
    /// [`Manager`](deadpool_postgres::Manager) or hook that fetches a short-lived IAM or
    /// Entra token per connection): creates or migrates the task hub's schema through it.
    ///
    /// Everything runs on `pool` (of `deadpool-postgres` 0.14, re-exported as
    /// [`durable_core::deadpool_postgres`](crate::deadpool_postgres));
    /// [`PostgresOptions::pool_size`] does not apply, and the pool should hold at least a
    /// few connections (episode commits, fetches and notifications use one each at a time).
    /// Its connections' session state is left as it is: taking or renewing a lease runs in
    /// a transaction of its own that turns `synchronous_commit` off for that transaction
    /// alone (`SET LOCAL`, in the same round trip), and each notification likewise.
    ///
    /// **No notifications are received**: a pooled connection cannot `LISTEN` (the pool's
    /// connection task drops what arrives). Writes of this store still wake its own
    /// workers at once, but work written by other processes is found on the next
    /// [`fallback_poll`](PostgresOptions::fallback_poll) (default 5 s), and timers as
    /// usual. Lower `fallback_poll`, or give a connection to listen on with
    /// [`from_pool_with_listener`](Self::from_pool_with_listener).
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the task hub's name is invalid, no connection can be
    /// had from `pool`, or the schema cannot be created or migrated (as
    /// [`connect`](Self::connect)).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use durable_core::deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
    /// use durable_core::tokio_postgres::{Config, NoTls};
    /// use durable_core::{PostgresOptions, PostgresStore};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config: Config = "postgres://durable@db.internal/app".parse()?;
    /// let manager = Manager::from_config(
    ///     config,
    ///     NoTls,
    ///     ManagerConfig { recycling_method: RecyclingMethod::Fast },
    /// );
    /// let pool = Pool::builder(manager).max_size(16).build()?;
    /// let store = PostgresStore::from_pool(
    ///     pool,
    ///     PostgresOptions::new("orders").fallback_poll(Duration::from_millis(500)),
    /// )
    /// .await?;
    /// # drop(store);
    /// # Ok(()) }
    /// ```
    pub async fn from_pool(pool: Pool, options: PostgresOptions) -> Result<Self, StoreError> {
        validate_hub(&options.task_hub)?;
        Self::start(pool.clone(), pool, true, None, options).await
    }

    /// Like [`from_pool`](Self::from_pool), and listens for other processes' notifications
    /// on a connection of its own opened with `listen_config` and `tls` (and reopened with
    /// them when it is lost), so their work is picked up at once rather than on the
    /// fallback poll.
    ///
    /// `listen_config` is used as it is each time (an `application_name` and connect
    /// timeout are added when it has none): a password that expires (an IAM token) must
    /// stay valid for reconnections, or the listener keeps retrying while the fallback poll
    /// carries on.
    ///
    /// # Errors
    ///
    /// As [`from_pool`](Self::from_pool), and when the listening connection cannot be
    /// opened.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use durable_core::deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
    /// use durable_core::tokio_postgres::{Config, NoTls};
    /// use durable_core::{PostgresOptions, PostgresStore};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config: Config = "postgres://durable@db.internal/app".parse()?;
    /// let manager = Manager::from_config(
    ///     config.clone(),
    ///     NoTls,
    ///     ManagerConfig { recycling_method: RecyclingMethod::Fast },
    /// );
    /// let pool = Pool::builder(manager).max_size(16).build()?;
    /// let store =
    ///     PostgresStore::from_pool_with_listener(pool, config, NoTls, PostgresOptions::new("orders"))
    ///         .await?;
    /// # drop(store);
    /// # Ok(()) }
    /// ```
    pub async fn from_pool_with_listener<T>(
        pool: Pool,
        mut listen_config: Config,
        tls: T,
        options: PostgresOptions,
    ) -> Result<Self, StoreError>
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + Sync,
        T::TlsConnect: Send + Sync,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        validate_hub(&options.task_hub)?;
        set_defaults(&mut listen_config, &options);
        let connector = listen_connector(listen_config, tls);
        Self::start(pool.clone(), pool, true, Some(connector), options).await
    }

    /// Migrates the task hub through `pool`, starts the listener (with `listen`; without,
    /// only the fallback poll) and the notifier. `lease_local`: leases are taken on the
    /// main pool's connections (see [`leasing`](Self::leasing)).
    async fn start(
        pool: Pool,
        lease_pool: Pool,
        lease_local: bool,
        listen: Option<ListenConnector>,
        options: PostgresOptions,
    ) -> Result<Self, StoreError> {
        let hub = options.task_hub.clone();
        let schema = quote_ident(&hub);
        migrate(&pool, &hub, &schema).await?;

        let channel = format!("durable_{hub}");
        let origin = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
        let signals = Arc::new(StoreSignals::default());
        let first = match &listen {
            Some(connect) => Some(connect(channel.clone()).await.map_err(|e| {
                StoreError::backend_with(
                    format!(
                        "task hub `{hub}`: cannot open the notification connection: {}",
                        describe(&e)
                    ),
                    e,
                )
            })?),
            None => None,
        };
        let listener = tokio::spawn(
            Listener {
                connect: listen,
                channel: channel.clone(),
                origin: origin.clone(),
                signals: Arc::clone(&signals),
                poll: options.fallback_poll,
            }
            .run(first),
        );
        let notifier = Arc::new(Notifier::default());
        let notifier_task = tokio::spawn(Arc::clone(&notifier).run(
            pool.clone(),
            format!(
                "BEGIN; SET LOCAL synchronous_commit TO OFF; NOTIFY {}, '{origin}:",
                quote_ident(&channel)
            ),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                lease_pool,
                lease_local,
                sql: Sql::new(&schema),
                hub,
                channel,
                origin,
                options,
                signals,
                notifier,
                commits: std::sync::Mutex::default(),
                writes: AtomicU64::new(0),
                wake_hints: std::sync::Mutex::default(),
                listener,
                notifier_task,
            }),
        })
    }
}

/// The `application_name` (`durable`) and connect timeout of `options`, unless `config`
/// has its own.
fn set_defaults(config: &mut Config, options: &PostgresOptions) {
    if config.get_application_name().is_none() {
        config.application_name("durable");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(options.connect_timeout);
    }
}

fn build_pool(
    manager: Manager,
    size: usize,
    options: &PostgresOptions,
) -> Result<Pool, StoreError> {
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(options.connect_timeout))
        .wait_timeout(Some(Duration::from_secs(120)))
        .build()
        .map_err(|e| StoreError::backend_with(format!("cannot create the connection pool: {e}"), e))
}
