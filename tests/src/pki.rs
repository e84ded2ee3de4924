//! Certificates for tests, made with `rcgen` at test time: a CA, server certificates it issues
//! (valid, expired, for another name), and writing them where `rallyd` reads them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A server certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// The certificate, leaf only.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
    /// The SHA-256 of the certificate's DER, in hex.
    pub sha256: String,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From yesterday for a year.
    Current,
    /// It expired yesterday.
    Expired,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str], validity: Validity) -> ServerCert {
        let key = KeyPair::generate().expect("server key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("server params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        match validity {
            Validity::Current => {
                params.not_before = now - day;
                params.not_after = now + day * 365;
            }
            Validity::Expired => {
                params.not_before = now - day * 30;
                params.not_after = now - day;
            }
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        use sha2::Digest as _;
        let sha256 = hex::encode(sha2::Sha256::digest(cert.der()));
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            sha256,
        }
    }
}

/// Where `rallyd` reads its certificate: `tls.crt` and `tls.key` in a folder.
pub struct TlsFolder {
    /// The certificate chain file.
    pub cert: PathBuf,
    /// The key file.
    pub key: PathBuf,
}

impl TlsFolder {
    /// The files in `dir` (not written yet).
    pub fn new(dir: &Path) -> Self {
        Self {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }

    /// Writes `cert` into the folder as a renewal does: each file written aside, then renamed
    /// over the old one (mode 0600).
    pub fn install(&self, cert: &ServerCert) {
        replace(&self.cert, cert.cert_pem.as_bytes());
        replace(&self.key, cert.key_pem.as_bytes());
    }

    /// The `rallyd` flags that serve these files.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert-file".into(),
            self.cert.display().to_string(),
            "--tls-key-file".into(),
            self.key.display().to_string(),
        ]
    }
}

fn replace(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let aside = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&aside)
        .expect("open a certificate file");
    file.write_all(bytes).expect("write a certificate file");
    file.sync_all().expect("sync a certificate file");
    std::fs::rename(&aside, path).expect("rename a certificate file");
}
