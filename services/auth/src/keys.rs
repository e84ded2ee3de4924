//! Ed25519 signing keys, their ids, their PEM files, and the ring of keys a verifier accepts.

use std::collections::HashMap;
use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};

/// The DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a PEM-encoded Ed25519 key.
    #[error("key file {path} is not a PEM Ed25519 key: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The system random generator failed.
    #[error("could not generate a key: {0}")]
    Generate(String),
    /// A secret file other users could read or change: it is refused, as ssh refuses such keys.
    #[error(
        "secret file {path} is open to other users (mode {mode:04o}): run `chmod 600 {path}` \
         (group read, 0640, is allowed: that is how Kubernetes gives a Secret to a non-root pod)"
    )]
    TooOpen {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
}

/// Refuses a secret file (a private key, a grant secret) that users other than its owner and
/// group may read or change, or that its group may change. Group read is allowed: Kubernetes
/// gives a Secret to a non-root pod as a file of group `fsGroup`, mode 0440. A missing file
/// passes (the caller decides whether to generate it).
#[cfg(unix)]
pub fn check_private_file(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(KeyError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o027 != 0 {
        return Err(KeyError::TooOpen {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// Refuses a secret file others may read; nothing to check where there are no Unix modes.
#[cfg(not(unix))]
pub fn check_private_file(_path: &Path) -> Result<(), KeyError> {
    Ok(())
}

/// An Ed25519 private key with its key id.
#[derive(Clone)]
pub struct SigningKey {
    pkcs8: Vec<u8>,
    public: [u8; 32],
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("private", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::from_pkcs8(doc.as_ref()).map_err(|reason| KeyError::Generate(reason.to_string()))
    }

    fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, &'static str> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8))
            .map_err(|_| "not an Ed25519 PKCS#8 private key")?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| "Ed25519 public key is not 32 bytes")?;
        Ok(Self {
            pkcs8: pkcs8.to_vec(),
            public,
            kid: key_id(&public),
        })
    }

    /// The key id: the first 8 bytes of the SHA-256 of the public key, in hex.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    pub(crate) fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The key as a PEM `PRIVATE KEY` (PKCS#8) document.
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PRIVATE KEY", self.pkcs8.clone()))
    }

    /// The public half as a PEM `PUBLIC KEY` (Ed25519 `SubjectPublicKeyInfo`): what replicas
    /// that only verify tokens need (`--token-verify-keys`).
    pub fn public_pem(&self) -> String {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.public);
        pem::encode(&pem::Pem::new("PUBLIC KEY", der))
    }

    /// Parses a PEM `PRIVATE KEY` (PKCS#8 Ed25519) document.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let doc = pem::parse(text).map_err(|e| e.to_string())?;
        if doc.tag() != "PRIVATE KEY" {
            return Err(format!("expected a PRIVATE KEY block, found {}", doc.tag()));
        }
        Self::from_pkcs8(doc.contents()).map_err(str::to_owned)
    }

    /// Reads the key at `path`, or when the file does not exist, generates one and writes it
    /// there (readable by the owner only). Returns the key and whether it was generated.
    pub fn load_or_generate(path: &Path) -> Result<(Self, bool), KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        check_private_file(path)?;
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_pem(&text)
                .map(|key| (key, false))
                .map_err(|reason| KeyError::Malformed {
                    path: path.display().to_string(),
                    reason,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                write_private(path, key.to_pem().as_bytes()).map_err(io)?;
                Ok((key, true))
            }
            Err(e) => Err(io(e)),
        }
    }
}

/// Writes a new secret file readable by its owner only (mode 0600 on Unix); fails if the file
/// exists, so a secret is never overwritten.
#[cfg(unix)]
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Writes a new secret file; fails if the file exists, so a secret is never overwritten.
#[cfg(not(unix))]
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

fn key_id(public: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

/// The public keys a verifier accepts, by key id.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: HashMap<String, [u8; 32]>,
}

impl KeyRing {
    /// A ring holding the public half of `key`.
    pub fn of(key: &SigningKey) -> Self {
        let mut ring = Self::default();
        ring.insert_public(key.public_key());
        ring
    }

    /// Adds a public key; returns its key id.
    pub fn insert_public(&mut self, public: [u8; 32]) -> String {
        let kid = key_id(&public);
        self.keys.insert(kid.clone(), public);
        kid
    }

    /// Adds the key in a PEM file: a `PRIVATE KEY` (a previous signing key) or a `PUBLIC KEY`
    /// (Ed25519 `SubjectPublicKeyInfo`). Returns its key id.
    pub fn insert_pem_file(&mut self, path: &Path) -> Result<String, KeyError> {
        let malformed = |reason: String| KeyError::Malformed {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let doc = pem::parse(&text).map_err(|e| malformed(e.to_string()))?;
        let public = match doc.tag() {
            "PRIVATE KEY" => {
                check_private_file(path)?;
                SigningKey::from_pkcs8(doc.contents())
                    .map_err(|e| malformed(e.to_owned()))?
                    .public_key()
            }
            "PUBLIC KEY" => {
                let der = doc.contents();
                match der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
                    Some(key) => key
                        .try_into()
                        .map_err(|_| malformed("public key is not 32 bytes".into()))?,
                    None => return Err(malformed("not an Ed25519 public key".into())),
                }
            }
            other => return Err(malformed(format!("unexpected PEM block {other}"))),
        };
        Ok(self.insert_public(public))
    }

    /// The public key with this id.
    pub fn get(&self, kid: &str) -> Option<&[u8; 32]> {
        self.keys.get(kid)
    }

    /// The key ids in the ring, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<_> = self.keys.keys().cloned().collect();
        kids.sort();
        kids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_survives_a_pem_round_trip_with_the_same_kid() {
        let key = SigningKey::generate().expect("generate");
        let back = SigningKey::from_pem(&key.to_pem()).expect("parse");
        assert_eq!(back.kid(), key.kid());
        assert_eq!(back.public_key(), key.public_key());
        assert_eq!(key.kid().len(), 16);
    }

    #[test]
    fn load_or_generate_persists_the_key_and_reuses_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/key.pem");
        let (first, created) = SigningKey::load_or_generate(&path).expect("create");
        assert!(created);
        let (second, created) = SigningKey::load_or_generate(&path).expect("load");
        assert!(!created);
        assert_eq!(first.kid(), second.kid());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o077, 0, "key file must not be readable by others");
        }
    }

    #[test]
    fn a_garbage_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        write_private(&path, b"not a key").expect("write");
        let err = SigningKey::load_or_generate(&path).expect_err("must fail");
        assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_private_key_open_to_other_users_is_refused_and_group_read_is_allowed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        let key = SigningKey::generate().expect("generate");
        write_private(&path, key.to_pem().as_bytes()).expect("write");
        let chmod = |mode| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod")
        };
        for (mode, allowed) in [
            (0o600, true),
            (0o640, true),
            (0o400, true),
            (0o644, false),
            (0o620, false),
            (0o604, false),
        ] {
            chmod(mode);
            let loaded = SigningKey::load_or_generate(&path);
            let mut ring = KeyRing::default();
            let in_ring = ring.insert_pem_file(&path);
            match allowed {
                true => {
                    assert!(loaded.is_ok(), "mode {mode:o}");
                    assert!(in_ring.is_ok(), "mode {mode:o}");
                }
                false => {
                    let err = loaded.expect_err("too open").to_string();
                    assert!(
                        err.contains(&format!("mode {mode:04o}")) && err.contains("chmod 600"),
                        "{err}"
                    );
                    assert!(
                        matches!(in_ring, Err(KeyError::TooOpen { .. })),
                        "mode {mode:o}"
                    );
                }
            }
        }
    }

    #[test]
    fn ring_accepts_public_key_pem_files() {
        let key = SigningKey::generate().expect("generate");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pub.pem");
        // A public key may be readable by anyone.
        std::fs::write(&path, key.public_pem()).expect("write");
        let mut ring = KeyRing::default();
        assert_eq!(ring.insert_pem_file(&path).expect("insert"), key.kid());
        assert_eq!(ring.get(key.kid()), Some(&key.public_key()));
    }
}
