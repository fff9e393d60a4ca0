//! Test certificates made with rcgen: a CA, leaves it signs, and PEM files in a temp
//! directory, for the TLS, WebSocket-over-TLS and bridge tests.

use super::*;

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A self-signed CA that signs test leaves.
pub struct TestCa {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

impl TestCa {
    /// A CA whose common name is `name`.
    pub fn new(name: &str) -> TestCa {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("self-signed");
        TestCa { cert, key }
    }

    /// A leaf for the subject alternative names `sans`, with common name `cn` when
    /// given, signed by this CA; valid only in 2020 when `expired`. (cert PEM, key PEM).
    pub fn leaf(&self, sans: &[&str], cn: Option<&str>, expired: bool) -> (String, String) {
        let sans = sans.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut p = CertificateParams::new(sans).expect("params");
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 2, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `text` to `dir/name`; returns the path as text (for config keys and flags).
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.to_str().expect("UTF-8 path").to_string()
}
