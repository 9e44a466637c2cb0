//! Optional TLS (rustls) for traffic between hosts: every connection of the
//! cluster is encrypted, under the token's authentication.
//!
//! The cluster has one certificate and key, made by the head
//! (`rayx start --head --tls`, [`generate`]) and shared by every node like the
//! token: each node presents it when it accepts, and trusts it — and nothing
//! else — when it connects, for the name [`SERVER_NAME`]. A stranger without
//! the key cannot pose as a node; the token still decides who may join.

use crate::error::Error;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;

/// The name in the cluster certificate, which every node checks.
pub const SERVER_NAME: &str = "rayx-cluster";

/// The files of a cluster certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, readable by its user only).
    pub key: PathBuf,
}

impl TlsFiles {
    /// `cluster.crt` and `cluster.key` in `dir`.
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join("cluster.crt"),
            key: dir.join("cluster.key"),
        }
    }
}

/// The cluster certificate's files in the default place: `cluster.crt` and
/// `cluster.key` beside the token file (`~/.rayx/`).
pub fn default_files() -> Option<TlsFiles> {
    super::auth::default_path().and_then(|p| p.parent().map(TlsFiles::in_dir))
}

/// The TLS files the environment names: `RAYX_TLS_CERT` and `RAYX_TLS_KEY`,
/// else [`default_files`] with `RAYX_TLS=1`; none otherwise.
pub fn files_from_env() -> Option<TlsFiles> {
    let var = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty());
    if let (Some(cert), Some(key)) = (var("RAYX_TLS_CERT"), var("RAYX_TLS_KEY")) {
        return Some(TlsFiles {
            cert: cert.into(),
            key: key.into(),
        });
    }
    if std::env::var("RAYX_TLS").is_ok_and(|v| v == "1") {
        return default_files();
    }
    None
}

/// A node's TLS: what it accepts with and what it connects with.
pub struct Tls {
    /// For connections it accepts.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// For connections it opens.
    pub connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Startup(format!("TLS: {what}: {e}"))
}

impl Tls {
    /// Loads the cluster certificate and key.
    pub fn load(files: &TlsFiles) -> Result<Arc<Tls>, Error> {
        let cert = CertificateDer::from_pem_file(&files.cert)
            .map_err(|e| failed(&format!("cannot read {}", files.cert.display()), e))?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| failed(&format!("cannot read {}", files.key.display()), e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| failed("protocol versions", e))?
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .map_err(|e| failed("the certificate and key do not go together", e))?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(cert)
            .map_err(|e| failed("the certificate cannot be trusted", e))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| failed("protocol versions", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        }))
    }

    /// The name a connecting node checks in the certificate.
    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from(SERVER_NAME).expect("a valid DNS name")
    }
}

/// Makes a cluster certificate and key (ECDSA P-256, self-signed, for
/// [`SERVER_NAME`]) in `files`, the key readable by its user only, unless
/// both are there already. True if it made them.
pub fn generate(files: &TlsFiles) -> Result<bool, Error> {
    if files.cert.exists() && files.key.exists() {
        return Ok(false);
    }
    let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .map_err(|e| failed("cannot make a certificate", e))?;
    for path in [&files.cert, &files.key] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| failed(&format!("cannot make {}", dir.display()), e))?;
        }
    }
    write_private(&files.key, made.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&files.cert, made.cert.pem())
        .map_err(|e| failed(&format!("cannot write {}", files.cert.display()), e))?;
    Ok(true)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .map_err(|e| failed(&format!("cannot write {}", path.display()), e))?;
    f.write_all(bytes)
        .map_err(|e| failed(&format!("cannot write {}", path.display()), e))
}
