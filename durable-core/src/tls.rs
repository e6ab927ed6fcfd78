//! The rustls client configuration shared by the `PostgreSQL` store's TLS (feature
//! `postgres-rustls`) and durable HTTP calls (feature `http-calls`).

use std::sync::Arc;

/// rustls with the `ring` provider (set here, so a process-wide default provider is neither
/// needed nor disturbed), trusting the platform's roots, or the Mozilla roots of
/// `webpki-roots` when the platform has none.
pub(crate) fn client_config() -> Result<rustls::ClientConfig, rustls::Error> {
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
    // exchange; aws-lc-rs has it but needs a heavier C build. Ring still negotiates X25519
    // and the NIST curves with every `PostgreSQL` and HTTPS server.
    #[allow(deprecated, reason = "ring: no C toolchain beyond a C compiler")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
