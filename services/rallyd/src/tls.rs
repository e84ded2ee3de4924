//! TLS for the gRPC listener: the certificate chain and key from PEM files, swapped in place
//! when the files change (or on [`crate::Running::reload_tls`], which `rallyd` calls on SIGHUP).
//!
//! rustls with the aws-lc-rs provider, TLS 1.3 only, ALPN `h2`. New handshakes get the newest
//! certificate; connections already open keep theirs. A reload that fails (a half-written file,
//! a key that does not match the chain) is logged and the previous certificate stays.
//!
//! Not here: accepting connections (`listener.rs`) or any gRPC.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::RallydError;

/// Largest certificate chain or key file read (a chain of a few certificates is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;
/// How long the watcher waits after the last change before reloading: renewals write the chain
/// and the key one after the other (cert-manager swaps a symlink once).
const SETTLE: Duration = Duration::from_millis(300);

/// Where the certificate chain and its key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The certificate new handshakes get, replaceable while the server runs.
#[derive(Debug)]
pub(crate) struct CertStore {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
}

#[derive(Debug, Clone)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The file contents it was made from, to tell a real change from a touched file.
    source: (Vec<u8>, Vec<u8>),
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .key
                .clone(),
        )
    }
}

/// The crypto provider of every TLS link `rallyd` terminates: aws-lc-rs, the provider the SDK's
/// QUIC data plane and the token signer already use (one implementation to audit and patch, and
/// a FIPS-validated build exists), limited to TLS 1.3's suites.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl CertStore {
    /// Loads the files; fails with a clear error when they are missing, unreadable by design
    /// (the key is open to other users), malformed, or do not match.
    pub(crate) fn load(files: TlsFiles) -> Result<Arc<CertStore>, RallydError> {
        let provider = provider();
        let loaded = load_pair(&files, &provider)?;
        tracing::info!(
            cert = %files.cert.display(),
            sha256 = %leaf_fingerprint(&loaded.key),
            "TLS certificate loaded"
        );
        Ok(Arc::new(CertStore {
            files,
            provider,
            current: RwLock::new(loaded),
        }))
    }

    /// The rustls configuration of the listener: TLS 1.3 only, ALPN `h2`, no client
    /// certificates, the certificate from this store.
    pub(crate) fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, RallydError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| RallydError::Tls(format!("TLS 1.3 is not available: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// Reads the files again; when they changed and make a valid pair, new handshakes get the
    /// new certificate. Returns whether it changed.
    pub(crate) fn reload(&self) -> Result<bool, RallydError> {
        let source = read_pair(&self.files)?;
        if self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .source
            == source
        {
            return Ok(false);
        }
        let loaded = certified(&self.files, &self.provider, source)?;
        let fingerprint = leaf_fingerprint(&loaded.key);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = loaded;
        tracing::info!(cert = %self.files.cert.display(), sha256 = %fingerprint, "TLS certificate reloaded");
        Ok(true)
    }

    /// The SHA-256 of the leaf certificate new handshakes get, in hex.
    pub(crate) fn fingerprint(&self) -> String {
        leaf_fingerprint(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .key,
        )
    }

    /// Reloads whenever a file in the folders of the chain or the key changes (renewals replace
    /// files or swap a symlink in place), until `stop`. The watcher lives on its own thread; a
    /// folder that cannot be watched is an error at start.
    pub(crate) fn watch(self: &Arc<Self>, stop: CancellationToken) -> Result<(), RallydError> {
        use notify::Watcher as _;
        let (changed, mut changes) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    // A full channel means a reload is already due: nothing is lost.
                    let _ = changed.try_send(());
                }
            })
            .map_err(|e| RallydError::Tls(format!("cannot watch the certificate files: {e}")))?;
        let mut folders: Vec<PathBuf> = [&self.files.cert, &self.files.key]
            .iter()
            .map(|file| folder_of(file))
            .collect();
        folders.dedup();
        for folder in &folders {
            watcher
                .watch(folder, notify::RecursiveMode::NonRecursive)
                .map_err(|e| RallydError::Tls(format!("cannot watch {}: {e}", folder.display())))?;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let _watcher = watcher;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    change = changes.recv() => if change.is_none() { return },
                }
                // Let the writer finish: wait until the folder has been quiet for a moment.
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(SETTLE) => break,
                        change = changes.recv() => if change.is_none() { return },
                    }
                }
                if let Err(error) = store.reload() {
                    tracing::warn!(%error, "the TLS files changed but cannot be used; keeping the current certificate");
                }
            }
        });
        Ok(())
    }
}

/// Rereads the TLS files of a running `rallyd` (see [`crate::Running::tls_reloader`]).
#[derive(Debug, Clone)]
pub struct TlsReloader(pub(crate) Arc<CertStore>);

impl TlsReloader {
    /// Reads the files again: when they changed and make a valid pair, new connections get the
    /// new certificate. Returns whether it changed.
    pub fn reload(&self) -> Result<bool, RallydError> {
        self.0.reload()
    }
}

fn folder_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn load_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<Loaded, RallydError> {
    let source = read_pair(files)?;
    certified(files, provider, source)
}

fn read_pair(files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>), RallydError> {
    rally_auth::check_private_file(&files.key).map_err(RallydError::Keys)?;
    Ok((read_bounded(&files.cert)?, read_bounded(&files.key)?))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, RallydError> {
    use std::io::Read as _;
    let io = |source| RallydError::Io {
        what: format!("reading {}", path.display()),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(RallydError::Tls(format!(
            "{} is larger than {MAX_PEM_BYTES} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

fn certified(
    files: &TlsFiles,
    provider: &CryptoProvider,
    source: (Vec<u8>, Vec<u8>),
) -> Result<Loaded, RallydError> {
    let chain = CertificateDer::pem_slice_iter(&source.0)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            RallydError::Tls(format!(
                "{} is not a PEM certificate chain: {e}",
                files.cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(RallydError::Tls(format!(
            "{} holds no CERTIFICATE block",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&source.1).map_err(|e| {
        RallydError::Tls(format!(
            "{} is not a PEM private key: {e}",
            files.key.display()
        ))
    })?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| RallydError::Tls(format!("{}: unusable key: {e}", files.key.display())))?;
    let key = CertifiedKey::new(chain, signer);
    key.keys_match().map_err(|e| {
        RallydError::Tls(format!(
            "{} is not the key of the first certificate in {}: {e}",
            files.key.display(),
            files.cert.display()
        ))
    })?;
    Ok(Loaded {
        key: Arc::new(key),
        source,
    })
}

fn leaf_fingerprint(key: &CertifiedKey) -> String {
    key.end_entity_cert()
        .map(|leaf| hex::encode(Sha256::digest(leaf.as_ref())))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> TlsFiles {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let files = TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        replace(&files.cert, cert.pem().as_bytes());
        replace(&files.key, key.serialize_pem().as_bytes());
        files
    }

    fn replace(path: &Path, bytes: &[u8]) {
        use std::os::unix::fs::OpenOptionsExt as _;
        let temporary = path.with_extension("new");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .expect("open");
        std::io::Write::write_all(&mut file, bytes).expect("write");
        std::fs::rename(&temporary, path).expect("rename");
    }

    #[test]
    fn a_reload_swaps_only_a_changed_valid_pair() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = write_pair(dir.path(), "one.test");
        let store = CertStore::load(files.clone()).expect("load");
        let first = store.fingerprint();
        assert!(!store.reload().expect("unchanged"), "same files, no swap");

        // A key that belongs to another certificate is refused; the old pair stays.
        let other = tempfile::tempdir().expect("tempdir");
        let stranger = write_pair(other.path(), "two.test");
        let stranger_key = std::fs::read(&stranger.key).expect("read");
        replace(&files.key, &stranger_key);
        let error = store.reload().expect_err("mismatched pair").to_string();
        assert!(
            error.contains("is not the key of the first certificate"),
            "{error}"
        );
        assert_eq!(store.fingerprint(), first);

        let stranger_cert = std::fs::read(&stranger.cert).expect("read");
        replace(&files.cert, &stranger_cert);
        assert!(store.reload().expect("a valid new pair"));
        assert_ne!(store.fingerprint(), first);
    }

    #[test]
    fn garbage_and_empty_files_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = write_pair(dir.path(), "one.test");
        replace(&files.cert, b"not a certificate");
        let error = CertStore::load(files.clone())
            .expect_err("garbage")
            .to_string();
        assert!(
            error.contains("tls.crt holds no CERTIFICATE block"),
            "{error}"
        );
        let files = write_pair(dir.path(), "one.test");
        replace(&files.key, b"");
        let error = CertStore::load(files).expect_err("no key").to_string();
        assert!(
            error.contains("tls.key is not a PEM private key"),
            "{error}"
        );
    }
}
