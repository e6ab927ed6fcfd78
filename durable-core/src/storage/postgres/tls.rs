//! The TLS connector of [`PostgresStore::connect`] for `sslmode=require` (feature
//! `postgres-rustls`).
//!
//! [`PostgresStore::connect`]: super::PostgresStore::connect

use std::sync::Arc;

use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::StoreError;

/// rustls with the `ring` provider (set here, so a process-wide default provider is not
/// needed, nor disturbed), trusting the platform's roots, or the Mozilla roots of
/// `webpki-roots` when the platform has none.
pub(super) fn platform_connector() -> Result<MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "while loading the platform's trusted certificates");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::debug!(
            "no trusted certificates on this platform: using the Mozilla roots of webpki-roots"
        );
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    // rustls 0.23.48 deprecates the ring provider for its lack of post-quantum key
    // exchange; aws-lc-rs has it but needs a heavier C build. Ring still negotiates
    // X25519 and the NIST curves with every PostgreSQL server.
    #[allow(deprecated, reason = "ring: no C toolchain beyond a C compiler")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::backend_with(format!("cannot set up TLS: {e}"), e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}
