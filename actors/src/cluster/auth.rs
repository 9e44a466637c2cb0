//! Cluster authentication: a shared token that never crosses the wire.
//!
//! Every connection starts with a challenge–response in both directions. The
//! connecting side sends a fresh nonce in its hello; the listener answers with
//! its own nonce and its proof, HMAC-SHA256(token, "rayx-listener" ‖ client
//! nonce ‖ listener nonce); the connecting side checks it (so it never talks to
//! a listener that does not know the token) and answers with its proof over
//! the nonces in the other order and another label. Proofs are compared in
//! constant time (`hmac`'s `verify_slice`). Nonces are 32 bytes from the OS.
//!
//! The token lives in a file only its user can read (`~/.rayx/token` unless
//! `RAYX_TOKEN_FILE` names another), or in `RAYX_TOKEN`.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A cluster token (the key of the proofs).
pub type Token = Arc<str>;

/// Bytes of a nonce.
pub const NONCE: usize = 32;

/// Who proves: the two labels keep a proof from being replayed the other way.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    /// The side that accepted the connection.
    Listener,
    /// The side that opened it.
    Connector,
}

impl Side {
    fn label(self) -> &'static [u8] {
        match self {
            Side::Listener => b"rayx-listener",
            Side::Connector => b"rayx-connector",
        }
    }
}

fn mac(token: &str, side: Side, first: &[u8], second: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(side.label());
    mac.update(&(first.len() as u32).to_be_bytes());
    mac.update(first);
    mac.update(second);
    mac
}

/// The proof of `side` over the two nonces: the connector's nonce first for
/// the listener's proof, the listener's first for the connector's.
pub fn prove(token: &str, side: Side, first: &[u8], second: &[u8]) -> Vec<u8> {
    mac(token, side, first, second)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// Whether `proof` is `side`'s proof over the nonces (constant time).
pub fn verify(token: &str, side: Side, first: &[u8], second: &[u8], proof: &[u8]) -> bool {
    mac(token, side, first, second).verify_slice(proof).is_ok()
}

/// A fresh nonce from the OS.
pub fn nonce() -> Vec<u8> {
    let mut n = vec![0u8; NONCE];
    getrandom::fill(&mut n).expect("the OS has no random numbers");
    n
}

/// A new token: 32 random bytes, as hex.
pub fn generate() -> String {
    nonce().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the token is kept: `RAYX_TOKEN_FILE`, else `~/.rayx/token`.
pub fn default_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RAYX_TOKEN_FILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".rayx").join("token"))
}

/// Whether `RAYX_AUTH=none` turns authentication off.
pub fn disabled_by_env() -> bool {
    std::env::var("RAYX_AUTH").is_ok_and(|a| a == "none")
}

/// The token this process proves, from its environment: none with
/// `RAYX_AUTH=none`; else `RAYX_TOKEN`; else the token file
/// ([`default_path`]), which a head (`make`) creates when there is none.
pub fn from_env(make: bool) -> Result<Option<String>, crate::error::Error> {
    if disabled_by_env() {
        return Ok(None);
    }
    if let Some(t) = std::env::var("RAYX_TOKEN").ok().filter(|t| !t.is_empty()) {
        return Ok(Some(t));
    }
    let Some(path) = default_path() else {
        return Ok(make.then(generate));
    };
    let read = if make {
        read_or_create(&path).map(Some)
    } else {
        read(&path)
    };
    read.map_err(|e| {
        crate::error::Error::Startup(format!(
            "cannot read the cluster token at {}: {e}",
            path.display()
        ))
    })
}

/// Reads a token file (its first line, trimmed).
pub fn read(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let t = s.lines().next().unwrap_or("").trim().to_string();
            Ok((!t.is_empty()).then_some(t))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The token in `path`, made (readable by this user only) if there is none.
/// Two processes making it at once agree: the file is created exclusively
/// and the loser reads the winner's.
pub fn read_or_create(path: &Path) -> std::io::Result<String> {
    if let Some(t) = read(path)? {
        return Ok(t);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let token = generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut f) => {
            use std::io::Write;
            f.write_all(token.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Another process made it between our read and our create; it
            // writes right after creating, so wait briefly for the bytes.
            for _ in 0..100 {
                if let Some(t) = read(path)? {
                    return Ok(t);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::io::Error::other(format!(
                "{} exists but holds no token",
                path.display()
            )))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_checks_only_with_its_token_side_and_nonces() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        let p = prove("secret", Side::Listener, &a, &b);
        assert!(verify("secret", Side::Listener, &a, &b, &p));
        assert!(!verify("other", Side::Listener, &a, &b, &p));
        assert!(!verify("secret", Side::Connector, &a, &b, &p));
        assert!(!verify("secret", Side::Listener, &b, &a, &p));
        assert!(!verify("secret", Side::Listener, &a, &b, &p[..31]));
        assert!(!verify("secret", Side::Listener, &a, &b, &[]));
    }

    #[test]
    fn a_token_file_is_made_once_and_private() {
        let dir = std::env::temp_dir().join(format!("rayx-auth-{}", generate()));
        let path = dir.join("token");
        let t = read_or_create(&path).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(read_or_create(&path).unwrap(), t);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
