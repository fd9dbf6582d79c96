//! TLS for both listeners: a rustls server configuration from a PEM certificate chain and key,
//! read once at startup (no reload). The crypto provider is `ring`, named explicitly rather than
//! installed process-wide. ALPN offers HTTP/2 (gRPC) and HTTP/1.1.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("TLS certificate file {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("TLS key file {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("TLS certificate {cert} and key {key}: {message}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| e.to_string())
}

/// The certificates of a PEM file, in order; an error names what is wrong with it.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |message: String| TlsError::Cert {
        path: path.to_path_buf(),
        message,
    };
    let pem = read(path).map_err(bad)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block in it".to_string()));
    }
    Ok(certs)
}

/// The first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bad = |message: String| TlsError::Key {
        path: path.to_path_buf(),
        message,
    };
    let pem = read(path).map_err(bad)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            bad("no PRIVATE KEY block in it (PKCS#8, RSA or EC)".to_string())
        }
        e => bad(format!("not a PEM private key: {e}")),
    })
}

/// The server configuration both listeners share.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key_der = load_key(key)?;
    let pair = |message: String| TlsError::Pair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        message,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| pair(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)
    .map_err(|e| pair(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_or_empty_files_are_named() {
        let dir = std::env::temp_dir().join(format!("scalewise-tls-unit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let missing = dir.join("missing.pem");
        let e = load_certs(&missing).expect_err("missing").to_string();
        assert!(
            e.contains("missing.pem") && e.contains("certificate"),
            "{e}"
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "hello\n").expect("write");
        let e = load_certs(&empty).expect_err("empty").to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no CERTIFICATE"),
            "{e}"
        );
        let e = load_key(&empty).expect_err("no key").to_string();
        assert!(e.contains("TLS key file") && e.contains("empty.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
