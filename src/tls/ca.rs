//! wharf's own certificate authority, for `[server.tls] auto = true`.
//!
//! The CA lives under `<cache dir>/tls/` (`ca.key` mode 0600, `ca.crt`) and
//! outlives every server certificate: clients trust it once (one file copy per
//! client, see `wharf trust`), and wharf mints short-lived server certificates
//! from it at start-up and again before they expire, without a restart.
//!
//! The CA's name is derived from its public key, so the issuer can be rebuilt
//! from `ca.key` alone with the exact name and key identifier that `ca.crt`
//! carries, without parsing X.509.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use super::TlsError;

/// How long the CA is valid: long, because replacing it means touching every client.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a minted server certificate is valid; renewed at two thirds.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

pub struct Ca {
    key: KeyPair,
    pem: String,
    dir: PathBuf,
}

fn ca_params(key: &KeyPair, not_before: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    let id = hex::encode(&Sha256::digest(key.public_key_raw())[..8]);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "wharf");
    dn.push(DnType::CommonName, format!("wharf CA {id}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = not_before;
    p.not_after = not_before + CA_LIFETIME;
    p
}

fn io(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Io(format!("{}: {e}", path.display()))
}

impl Ca {
    /// Loads the CA from `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Ca, TlsError> {
        let key_path = dir.join("ca.key");
        let crt_path = dir.join("ca.crt");
        if key_path.exists() && crt_path.exists() {
            let mode = fs::metadata(&key_path)
                .map_err(|e| io(&key_path, e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(TlsError::Config(format!(
                    "{} is readable by group or others (mode {:o}); chmod 600 it",
                    key_path.display(),
                    mode & 0o777
                )));
            }
            let key_pem = fs::read_to_string(&key_path).map_err(|e| io(&key_path, e))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| io(&key_path, e))?;
            let pem = fs::read_to_string(&crt_path).map_err(|e| io(&crt_path, e))?;
            return Ok(Ca {
                key,
                pem,
                dir: dir.to_owned(),
            });
        }
        fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io(dir, e))?;
        let key = KeyPair::generate().map_err(|e| TlsError::Cert(e.to_string()))?;
        let cert = ca_params(&key, OffsetDateTime::now_utc() - Duration::from_secs(3600))
            .self_signed(&key)
            .map_err(|e| TlsError::Cert(e.to_string()))?;
        // Key first, private from its first byte; the certificate last, so a
        // crash in between leaves no certificate without its key.
        write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&crt_path, cert.pem().as_bytes(), 0o644)?;
        tracing::info!(ca = %crt_path.display(), "created wharf's certificate authority");
        Ok(Ca {
            key,
            pem: cert.pem(),
            dir: dir.to_owned(),
        })
    }

    /// The CA certificate clients must trust.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Mints a server certificate for `names` (DNS names and IP addresses).
    /// Returns (certificate chain PEM, private key PEM).
    pub fn issue_server(&self, names: &[String]) -> Result<(String, String), TlsError> {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, SERVER_LIFETIME)
    }

    /// Mints a client certificate (for mTLS set-ups and tests).
    pub fn issue_client(
        &self,
        name: &str,
        lifetime: Duration,
    ) -> Result<(String, String), TlsError> {
        self.issue(
            &[name.to_owned()],
            ExtendedKeyUsagePurpose::ClientAuth,
            lifetime,
        )
    }

    fn issue(
        &self,
        names: &[String],
        usage: ExtendedKeyUsagePurpose,
        lifetime: Duration,
    ) -> Result<(String, String), TlsError> {
        let cert_err = |e: rcgen::Error| TlsError::Cert(e.to_string());
        let mut p = CertificateParams::new(names.to_vec()).map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        p.distinguished_name = dn;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![usage];
        p.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        // A little slack for clients whose clocks run behind.
        p.not_before = now - Duration::from_secs(3600);
        p.not_after = now + lifetime;
        let key = KeyPair::generate().map_err(cert_err)?;
        // The not_before of the rebuilt issuer is irrelevant: only its name,
        // key identifier and key sign.
        let issuer = Issuer::new(ca_params(&self.key, now), &self.key);
        let cert = p.signed_by(&key, &issuer).map_err(cert_err)?;
        Ok((format!("{}{}", cert.pem(), self.pem), key.serialize_pem()))
    }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io(path, e))?;
    f.write_all(bytes).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_survives_a_restart_and_keeps_its_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let a = Ca::load_or_create(&tls).unwrap();
        let b = Ca::load_or_create(&tls).unwrap();
        assert_eq!(a.pem(), b.pem(), "the CA is created once");
        let mode = fs::metadata(tls.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::set_permissions(tls.join("ca.key"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Ca::load_or_create(&tls), Err(TlsError::Config(_))));
    }

    #[test]
    fn server_certificates_chain_to_the_stored_ca_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = Ca::load_or_create(dir.path()).unwrap();
        drop(first);
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let (chain, key) = ca
            .issue_server(&["wharf.test".into(), "127.0.0.1".into()])
            .unwrap();
        assert!(chain.ends_with(ca.pem()), "the chain ends with the CA");
        assert!(key.contains("PRIVATE KEY"));
        // Verify with webpki exactly as a rustls client would.
        let verify = super::super::verify_for_tests;
        verify(&chain, ca.pem(), "wharf.test").unwrap();
        verify(&chain, ca.pem(), "127.0.0.1").unwrap();
        assert!(
            verify(&chain, ca.pem(), "other.test").is_err(),
            "only the names asked for"
        );
        let other = tempfile::tempdir().unwrap();
        let stranger = Ca::load_or_create(other.path()).unwrap();
        assert!(
            verify(&chain, stranger.pem(), "wharf.test").is_err(),
            "another CA does not vouch for it"
        );
    }
}
