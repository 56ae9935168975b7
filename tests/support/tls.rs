//! TLS material for servers the tests start as separate processes (Azurite over https):
//! a CA and a server certificate for 127.0.0.1 made at test time with rcgen ([`mint`], also
//! used by `fake_arm::make_tls`), written out as PEM files, plus a rustls client config
//! that trusts only that CA, for the seeding client in `http`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A test CA and a server certificate for 127.0.0.1 / localhost, as PEM files in `dir`.
#[derive(Debug)]
pub struct TestCerts {
    /// The CA certificate (for `--ca-bundle`).
    pub ca_pem: PathBuf,
    /// The server certificate (leaf, then the CA) and its PKCS#8 key.
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    /// A client config trusting only the CA.
    pub client: Arc<rustls::ClientConfig>,
}

/// A fresh test CA, and a server certificate for 127.0.0.1 / localhost signed by it.
/// Every TLS server the tests start (the fake ARM, Azurite over https) uses one.
#[derive(Debug)]
pub struct Minted {
    pub ca_cert: rcgen::Certificate,
    pub leaf_cert: rcgen::Certificate,
    pub leaf_key: KeyPair,
}

pub fn mint() -> Minted {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "azure2kvm test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    Minted {
        ca_cert,
        leaf_cert,
        leaf_key,
    }
}

impl TestCerts {
    pub fn make(dir: &Path) -> Self {
        let Minted {
            ca_cert,
            leaf_cert,
            leaf_key,
        } = mint();
        let ca_pem = dir.join("test-ca.pem");
        let cert_pem = dir.join("server-cert.pem");
        let key_pem = dir.join("server-key.pem");
        std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
        std::fs::write(&cert_pem, format!("{}{}", leaf_cert.pem(), ca_cert.pem())).unwrap();
        std::fs::write(&key_pem, leaf_key.serialize_pem()).unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            ca_pem,
            cert_pem,
            key_pem,
            client: Arc::new(client),
        }
    }
}
