//! The TLS connector of [`PostgresStore::connect`] for `sslmode=require` (feature
//! `postgres-rustls`).
//!
//! [`PostgresStore::connect`]: super::PostgresStore::connect

use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::StoreError;

/// The shared rustls configuration (`crate::tls`): the `ring` provider, the platform's
/// roots or webpki's.
pub(super) fn platform_connector() -> Result<MakeRustlsConnect, StoreError> {
    let config = crate::tls::client_config()
        .map_err(|e| StoreError::backend_with(format!("cannot set up TLS: {e}"), e))?;
    Ok(MakeRustlsConnect::new(config))
}
