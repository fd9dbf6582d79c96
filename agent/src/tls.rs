//! TLS for the agent's one HTTP client (reqwest on rustls, for `https://` collectors and metrics
//! endpoints). The crypto provider is `ring`, chosen explicitly: rustls's default (aws-lc-rs)
//! needs a C toolchain with cmake to build. Installed once, before any client is built.

/// Installs the process-wide rustls crypto provider (idempotent).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when a provider is already installed, which is what we want anyway.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
