//! Who a verified client certificate says the client is: its subject's
//! common name by default, or the first SAN of a configured kind
//! (`[access] client_certificate_user`), so `[upstream.access] users` can
//! tell nodes or teams apart. Reads only certificates the TLS layer already
//! verified against `client_ca_file`; never verifies one itself. A
//! certificate that names nobody the configured way authenticates as
//! [`CERT_USER`].

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The user name a verified client certificate authenticates as when it
/// names none (no CN, or not the configured SAN).
pub const CERT_USER: &str = "tls-client";

/// Which part of a client certificate is the user name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CertIdentity {
    /// The subject's CN.
    #[default]
    CommonName,
    /// The first `DNSName` SAN.
    SanDns,
    /// The first `rfc822Name` (email) SAN.
    SanEmail,
    /// The first URI SAN (SPIFFE IDs, for instance).
    SanUri,
    /// Every certificate is [`CERT_USER`] (wharf before 0.2: only "has a
    /// certificate from the client CA" matters).
    Fixed,
}

impl std::str::FromStr for CertIdentity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "cn" => CertIdentity::CommonName,
            "san-dns" => CertIdentity::SanDns,
            "san-email" => CertIdentity::SanEmail,
            "san-uri" => CertIdentity::SanUri,
            "fixed" => CertIdentity::Fixed,
            _ => {
                return Err(format!(
                    "{s:?}: expected cn, san-dns, san-email, san-uri or fixed"
                ))
            }
        })
    }
}

/// Longest user name taken from a certificate (a CN is at most 64).
const MAX_USER: usize = 256;

/// Characters a user name may have: no control characters, and no
/// invisible or direction-changing ones (bidi overrides, zero-width), so a
/// name reads in logs and `users` lists as what it is.
fn plain(c: char) -> bool {
    !c.is_control()
        && !matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// The user a verified end-entity certificate (DER) names.
pub fn certificate_user(der: &[u8], from: CertIdentity) -> String {
    named(der, from)
        .filter(|u| !u.is_empty() && u.len() <= MAX_USER && u.chars().all(plain))
        .unwrap_or_else(|| CERT_USER.to_owned())
}

fn named(der: &[u8], from: CertIdentity) -> Option<String> {
    if from == CertIdentity::Fixed {
        return None;
    }
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    if from == CertIdentity::CommonName {
        let cn = cert.subject().iter_common_name().next()?;
        return cn.as_str().ok().map(str::to_owned);
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value
        .general_names
        .iter()
        .find_map(|n| match (from, n) {
            (CertIdentity::SanDns, GeneralName::DNSName(s))
            | (CertIdentity::SanEmail, GeneralName::RFC822Name(s))
            | (CertIdentity::SanUri, GeneralName::URI(s)) => Some((*s).to_owned()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: Option<&str>, sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        p.subject_alt_names = sans;
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn users_come_from_the_configured_field() {
        let der = cert(
            Some("node-a"),
            vec![
                rcgen::SanType::DnsName("node-a.pool-1.example".try_into().unwrap()),
                rcgen::SanType::Rfc822Name("team-b@example.com".try_into().unwrap()),
                rcgen::SanType::URI("spiffe://example/ns/ci".try_into().unwrap()),
            ],
        );
        assert_eq!(certificate_user(&der, CertIdentity::CommonName), "node-a");
        assert_eq!(
            certificate_user(&der, CertIdentity::SanDns),
            "node-a.pool-1.example"
        );
        assert_eq!(
            certificate_user(&der, CertIdentity::SanEmail),
            "team-b@example.com"
        );
        assert_eq!(
            certificate_user(&der, CertIdentity::SanUri),
            "spiffe://example/ns/ci"
        );
        assert_eq!(certificate_user(&der, CertIdentity::Fixed), CERT_USER);
    }

    #[test]
    fn a_certificate_naming_nobody_is_the_generic_user() {
        let der = cert(None, vec![]);
        assert_eq!(certificate_user(&der, CertIdentity::CommonName), CERT_USER);
        assert_eq!(certificate_user(&der, CertIdentity::SanUri), CERT_USER);
        assert_eq!(
            certificate_user(b"not DER", CertIdentity::CommonName),
            CERT_USER
        );
    }
}
