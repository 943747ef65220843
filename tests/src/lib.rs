//! Shared helpers for the workspace's cross-crate tests, the load generator and `testcert`.

use std::path::Path;

/// A certificate authority made for one test run, and certificates it issued: PEM files for
/// the relay's `--tls-cert`/`--tls-key`, and the CA for the clients to trust.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA's certificate, PEM.
    pub ca_pem: String,
}

impl TestCa {
    /// A new CA, with a key made now.
    ///
    /// # Errors
    /// When rcgen cannot make the key or the certificate.
    pub fn new() -> Result<Self, rcgen::Error> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "SignalR Relay test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate()?;
        let ca_pem = params.self_signed(&key)?.pem();
        Ok(Self {
            issuer: rcgen::Issuer::new(params, key),
            ca_pem,
        })
    }

    /// A server certificate for `names` (host names and IP addresses), and its private key,
    /// both PEM.
    ///
    /// # Errors
    /// When rcgen cannot make the key or the certificate.
    pub fn server_cert(&self, names: &[&str]) -> Result<(String, String), rcgen::Error> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "SignalR Relay test server");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Writes `ca.pem`, and a server certificate for loopback (`cert.pem`, `key.pem`) into
    /// `dir`, and a second one (`next-cert.pem`, `next-key.pem`) for a renewal.
    ///
    /// # Errors
    /// When a file cannot be written or a certificate made.
    pub fn write_to(&self, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let names = ["localhost", "127.0.0.1", "127.0.0.2"];
        std::fs::write(dir.join("ca.pem"), &self.ca_pem)?;
        for prefix in ["", "next-"] {
            let (cert, key) = self.server_cert(&names)?;
            std::fs::write(dir.join(format!("{prefix}cert.pem")), cert)?;
            std::fs::write(dir.join(format!("{prefix}key.pem")), key)?;
        }
        Ok(())
    }
}
