//! Mutual-TLS identities for cluster members.
//!
//! A cluster has one self-signed certificate authority ([`ClusterCa`]); every
//! member (coordinator, node, client) holds a certificate issued by it
//! ([`MemberIdentity`]) whose DNS subject alternative name (and common name)
//! is the member's name, valid both as a server and as a client. Both sides of
//! every connection present their certificate and check the peer's against the
//! cluster CA.
//!
//! Every member certificate also carries its [`CertRole`] as a URI subject
//! alternative name (`inferno:role:coordinator` or `inferno:role:node`):
//! coordinators take raft and peer traffic only from coordinator
//! certificates and node traffic only from node certificates; nodes take
//! inference and federated-learning streams only from coordinator
//! certificates.
//!
//! On disk a CA is `ca.pem` + `ca-key.pem`, and a member is `NAME.pem` +
//! `NAME-key.pem` (plus a copy of `ca.pem`). Key files are written with mode
//! 0600 on Unix.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, DnsName, PrivateKeyDer};

/// The ALPN protocol every Inferno connection negotiates.
pub const ALPN_PROTOCOL: &[u8] = b"inferno/1";

/// File name of the CA certificate.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Why a certificate or TLS configuration could not be made, saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation or signing failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("client verifier configuration failed: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: invalid PEM: {reason}")]
    Pem {
        /// The file concerned.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// A certificate could not be parsed.
    #[error("invalid certificate: {0}")]
    Certificate(String),
    /// The private key does not belong to the certificate.
    #[error("{0}: the private key does not match the certificate")]
    KeyMismatch(PathBuf),
    /// A member name is not a valid DNS name.
    #[error("invalid member name {0:?}: must be a DNS name (letters, digits, '-', '.')")]
    InvalidName(String),
    /// A file exists and overwriting was not allowed.
    #[error("{0} already exists")]
    AlreadyExists(PathBuf),
}

/// What a member certificate allows its holder to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertRole {
    /// A coordinator: raft, peer traffic, and driving nodes.
    Coordinator,
    /// A worker node: heartbeats to coordinators, serving what they send.
    Node,
}

impl CertRole {
    /// The URI subject alternative name that carries the role.
    pub fn uri(self) -> &'static str {
        match self {
            CertRole::Coordinator => "inferno:role:coordinator",
            CertRole::Node => "inferno:role:node",
        }
    }

    /// The role a URI subject alternative name names, if any.
    pub fn from_uri(uri: &str) -> Option<Self> {
        [CertRole::Coordinator, CertRole::Node]
            .into_iter()
            .find(|r| r.uri() == uri)
    }
}

impl std::fmt::Display for CertRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CertRole::Coordinator => "coordinator",
            CertRole::Node => "node",
        })
    }
}

/// The role written in a certificate, `None` if it names none (a
/// certificate issued before roles existed, or not by `inferno certs`).
/// A certificate naming both roles is refused.
pub fn cert_role(cert: &CertificateDer<'_>) -> Result<Option<CertRole>, TlsError> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let mut roles = san.into_iter().flat_map(|ext| {
        ext.value.general_names.iter().filter_map(|n| match n {
            GeneralName::URI(uri) => CertRole::from_uri(uri),
            _ => None,
        })
    });
    let first = roles.next();
    if roles.any(|r| Some(r) != first) {
        return Err(TlsError::Certificate(
            "the certificate names more than one role".into(),
        ));
    }
    Ok(first)
}

/// The crypto provider used everywhere: ring, passed explicitly.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks that `name` is usable as a DNS SAN and as a file name.
pub fn validate_member_name(name: &str) -> Result<(), TlsError> {
    // DNS names are letters, digits, '-' and non-empty '.'-separated labels,
    // so a valid one holds no path separator and is never "." or "..".
    let valid = DnsName::try_from(name).is_ok() && !name.is_empty() && !name.ends_with('.');
    if valid {
        Ok(())
    } else {
        Err(TlsError::InvalidName(name.to_string()))
    }
}

/// The cluster's certificate authority: a self-signed certificate and its key.
#[derive(Clone)]
pub struct ClusterCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Generates a new self-signed CA whose common name is `name`.
    pub fn generate(name: &str) -> Result<Self, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Inferno cluster");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Builds a CA from its PEM certificate and key, checking that they match.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let cert_der = first_cert(cert_pem.as_bytes(), Path::new(CA_CERT_FILE))?;
        let key = KeyPair::from_pem(key_pem)?;
        check_key_matches(&cert_der, &key, Path::new(CA_KEY_FILE))?;
        // Make sure rcgen can sign with it.
        Issuer::from_ca_cert_der(&cert_der, &key)?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            cert_der,
            key_pem: key_pem.to_string(),
        })
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a certificate for `member_name` (DNS SAN and common name) in
    /// `role` (URI SAN), valid for both server and client authentication.
    pub fn issue(&self, member_name: &str, role: CertRole) -> Result<MemberIdentity, TlsError> {
        validate_member_name(member_name)?;
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, ca_key)?;
        let mut params = CertificateParams::new(vec![member_name.to_string()])?;
        params
            .subject_alt_names
            .push(SanType::URI(role.uri().try_into()?));
        params
            .distinguished_name
            .push(DnType::CommonName, member_name);
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(MemberIdentity {
            name: member_name.to_string(),
            role: Some(role),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            ca_cert_pem: self.cert_pem.clone(),
        })
    }

    /// Writes `ca.pem` and `ca-key.pem` (mode 0600) into `dir`, creating it.
    /// Refuses to replace an existing CA unless `overwrite`.
    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<Vec<PathBuf>, TlsError> {
        create_dir(dir)?;
        let cert = dir.join(CA_CERT_FILE);
        let key = dir.join(CA_KEY_FILE);
        if !overwrite {
            for p in [&cert, &key] {
                if p.exists() {
                    return Err(TlsError::AlreadyExists(p.clone()));
                }
            }
        }
        write_file(&key, self.key_pem.as_bytes(), true)?;
        write_file(&cert, self.cert_pem.as_bytes(), false)?;
        Ok(vec![cert, key])
    }

    /// Loads `ca.pem` and `ca-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read_file(&cert_path)?;
        let key_pem = read_file(&key_path)?;
        let cert_der = first_cert(cert_pem.as_bytes(), &cert_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Pem {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        check_key_matches(&cert_der, &key, &key_path)?;
        Issuer::from_ca_cert_der(&cert_der, &key)?;
        Ok(Self {
            cert_pem,
            cert_der,
            key_pem,
        })
    }

    /// A root store trusting only this CA.
    pub fn root_store(&self) -> Result<RootCertStore, TlsError> {
        root_store(&self.cert_der)
    }
}

/// A cluster member's certificate and key, and the CA that issued it.
#[derive(Clone)]
pub struct MemberIdentity {
    name: String,
    role: Option<CertRole>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    ca_cert_pem: String,
}

impl std::fmt::Debug for MemberIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberIdentity")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl MemberIdentity {
    /// The member's name (DNS SAN and common name of its certificate).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The role its certificate names, if any.
    pub fn role(&self) -> Option<CertRole> {
        self.role
    }

    /// The member certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The member certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The certificate of the CA that issued this identity, in PEM.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The CA certificate in DER.
    pub fn ca_cert_der(&self) -> Result<CertificateDer<'static>, TlsError> {
        first_cert(self.ca_cert_pem.as_bytes(), Path::new(CA_CERT_FILE))
    }

    /// The private key in DER, for rustls.
    pub fn key_der(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            path: PathBuf::from(format!("{}-key.pem", self.name)),
            reason: e.to_string(),
        })
    }

    /// Paths of the certificate and key files of member `name` in `dir`.
    pub fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        )
    }

    /// Writes `NAME.pem`, `NAME-key.pem` (mode 0600) and `ca.pem` into `dir`,
    /// creating it. Refuses to replace an existing member certificate or key
    /// unless `overwrite`. An existing `ca.pem` is kept if it is the same CA
    /// and is an error otherwise. Returns the paths written.
    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<Vec<PathBuf>, TlsError> {
        validate_member_name(&self.name)?;
        create_dir(dir)?;
        let (cert, key) = Self::paths(dir, &self.name);
        let ca = dir.join(CA_CERT_FILE);
        if !overwrite {
            for p in [&cert, &key] {
                if p.exists() {
                    return Err(TlsError::AlreadyExists(p.clone()));
                }
            }
        }
        let mut written = Vec::new();
        if ca.exists() {
            let existing = read_file(&ca)?;
            if existing.trim() != self.ca_cert_pem.trim() {
                if !overwrite {
                    return Err(TlsError::AlreadyExists(ca));
                }
                write_file(&ca, self.ca_cert_pem.as_bytes(), false)?;
                written.push(ca);
            }
        } else {
            write_file(&ca, self.ca_cert_pem.as_bytes(), false)?;
            written.push(ca);
        }
        write_file(&key, self.key_pem.as_bytes(), true)?;
        write_file(&cert, self.cert_pem.as_bytes(), false)?;
        written.insert(0, key);
        written.insert(0, cert);
        Ok(written)
    }

    /// Loads member `name` (`NAME.pem`, `NAME-key.pem`, `ca.pem`) from `dir`.
    pub fn load(dir: &Path, name: &str) -> Result<Self, TlsError> {
        validate_member_name(name)?;
        let (cert_path, key_path) = Self::paths(dir, name);
        let ca_path = dir.join(CA_CERT_FILE);
        let cert_pem = read_file(&cert_path)?;
        let key_pem = read_file(&key_path)?;
        let ca_cert_pem = read_file(&ca_path)?;
        let cert_der = first_cert(cert_pem.as_bytes(), &cert_path)?;
        first_cert(ca_cert_pem.as_bytes(), &ca_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Pem {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        check_key_matches(&cert_der, &key, &key_path)?;
        let role = cert_role(&cert_der)?;
        Ok(Self {
            name: name.to_string(),
            role,
            cert_pem,
            cert_der,
            key_pem,
            ca_cert_pem,
        })
    }

    /// A rustls server configuration presenting this identity and requiring
    /// client certificates issued by `ca_cert`. TLS 1.3 only, ALPN
    /// [`ALPN_PROTOCOL`].
    pub fn server_config(
        &self,
        ca_cert: &CertificateDer<'static>,
    ) -> Result<ServerConfig, TlsError> {
        server_config_with(IdentitySlot::new(self)?, ca_cert)
    }

    /// A rustls client configuration presenting this identity and trusting
    /// only servers whose certificate was issued by `ca_cert`. TLS 1.3 only,
    /// ALPN [`ALPN_PROTOCOL`].
    pub fn client_config(
        &self,
        ca_cert: &CertificateDer<'static>,
    ) -> Result<ClientConfig, TlsError> {
        client_config_with(IdentitySlot::new(self)?, ca_cert)
    }

    fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let key = crypto_provider()
            .key_provider
            .load_private_key(self.key_der()?)?;
        Ok(Arc::new(CertifiedKey::new(
            vec![self.cert_der.clone()],
            key,
        )))
    }
}

/// The certificate and key a member presents, replaceable while it runs
/// (certificate rotation): the server and client configurations made with
/// [`server_config_with`] and [`client_config_with`] read it at every
/// handshake, so connections made after [`IdentitySlot::replace`] present
/// the new certificate and existing ones keep theirs.
#[derive(Debug)]
pub struct IdentitySlot {
    name: String,
    current: std::sync::RwLock<Arc<CertifiedKey>>,
}

impl IdentitySlot {
    /// A slot presenting `identity`.
    pub fn new(identity: &MemberIdentity) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(IdentitySlot {
            name: identity.name.clone(),
            current: std::sync::RwLock::new(identity.certified_key()?),
        }))
    }

    /// Presents `identity` from the next handshake on. It must be the same
    /// member (name); another name is refused.
    pub fn replace(&self, identity: &MemberIdentity) -> Result<(), TlsError> {
        if identity.name != self.name {
            return Err(TlsError::Certificate(format!(
                "the new certificate is for {:?}, not {:?}",
                identity.name, self.name
            )));
        }
        let key = identity.certified_key()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl rustls::server::ResolvesServerCert for IdentitySlot {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for IdentitySlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A rustls server configuration presenting what `slot` holds and
/// requiring client certificates issued by `ca_cert`. TLS 1.3 only, ALPN
/// [`ALPN_PROTOCOL`].
pub fn server_config_with(
    slot: Arc<IdentitySlot>,
    ca_cert: &CertificateDer<'static>,
) -> Result<ServerConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(root_store(ca_cert)?),
        provider.clone(),
    )
    .build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    cfg.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    // No session resumption: every connection presents (and checks) the
    // certificates as they are now, so rotation and revocation take
    // effect on the next connection.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(cfg)
}

/// A rustls client configuration presenting what `slot` holds and trusting
/// only servers whose certificate was issued by `ca_cert`. TLS 1.3 only,
/// ALPN [`ALPN_PROTOCOL`].
pub fn client_config_with(
    slot: Arc<IdentitySlot>,
    ca_cert: &CertificateDer<'static>,
) -> Result<ClientConfig, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(ca_cert)?)
        .with_client_cert_resolver(slot);
    cfg.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

/// A root store trusting only `ca_cert`.
pub fn root_store(ca_cert: &CertificateDer<'static>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.clone())?;
    Ok(roots)
}

/// The first certificate of a PEM file.
pub fn read_cert_file(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    let pem = read_file(path)?;
    first_cert(pem.as_bytes(), path)
}

/// A certificate's fingerprint: the lower-case hex SHA-256 of its DER
/// encoding (what a revocation names).
pub fn cert_fingerprint(cert: &CertificateDer<'_>) -> String {
    use sha2::Digest;
    crate::hex::lower_hex(&sha2::Sha256::digest(cert.as_ref()))
}

/// The DNS names in a certificate's subject alternative names.
pub fn cert_dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, TlsError> {
    let parsed =
        webpki::EndEntityCert::try_from(cert).map_err(|e| TlsError::Certificate(e.to_string()))?;
    Ok(parsed.valid_dns_names().map(str::to_string).collect())
}

fn first_cert(pem: &[u8], path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    match CertificateDer::pem_slice_iter(pem).next() {
        Some(Ok(c)) => Ok(c),
        Some(Err(e)) => Err(TlsError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        None => Err(TlsError::Pem {
            path: path.to_path_buf(),
            reason: "no certificate found".into(),
        }),
    }
}

fn check_key_matches(
    cert: &CertificateDer<'_>,
    key: &KeyPair,
    key_path: &Path,
) -> Result<(), TlsError> {
    let parsed =
        webpki::EndEntityCert::try_from(cert).map_err(|e| TlsError::Certificate(e.to_string()))?;
    if parsed.subject_public_key_info().as_ref() != key.subject_public_key_info().as_slice() {
        return Err(TlsError::KeyMismatch(key_path.to_path_buf()));
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn read_file(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `data` to `path`, replacing it; `secret` files get mode 0600 (Unix).
fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        if secret {
            opts.mode(0o600);
        }
    }
    let mut f = opts.open(path).map_err(io)?;
    #[cfg(unix)]
    if secret {
        // The mode above only applies to new files.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_is_in_the_certificate_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("test-ca").unwrap();
        for (name, role) in [("c-1", CertRole::Coordinator), ("n-1", CertRole::Node)] {
            let m = ca.issue(name, role).unwrap();
            assert_eq!(m.role(), Some(role));
            assert_eq!(cert_role(m.cert_der()).unwrap(), Some(role));
            // The role is a URI, not a DNS name peers could connect to.
            assert_eq!(cert_dns_names(m.cert_der()).unwrap(), vec![name]);
            m.save(dir.path(), false).unwrap();
            assert_eq!(
                MemberIdentity::load(dir.path(), name).unwrap().role(),
                Some(role)
            );
        }
        assert_eq!(CertRole::from_uri("inferno:role:admin"), None);
        assert_eq!(cert_role(ca.cert_der()).unwrap(), None);
    }

    #[test]
    fn issued_cert_has_san_and_is_signed_by_ca() {
        let ca = ClusterCa::generate("test-ca").unwrap();
        let m = ca.issue("node-1.cluster", CertRole::Node).unwrap();
        assert_eq!(m.name(), "node-1.cluster");
        assert_eq!(
            cert_dns_names(m.cert_der()).unwrap(),
            vec!["node-1.cluster"]
        );
        // rustls accepts the pair in both roles.
        m.server_config(ca.cert_der()).unwrap();
        m.client_config(ca.cert_der()).unwrap();
        // webpki verifies the chain for both client and server auth.
        let ee = webpki::EndEntityCert::try_from(m.cert_der()).unwrap();
        let anchor = webpki::anchor_from_trusted_cert(ca.cert_der()).unwrap();
        let now = rustls_pki_types::UnixTime::now();
        for usage in [
            webpki::KeyUsage::server_auth(),
            webpki::KeyUsage::client_auth(),
        ] {
            ee.verify_for_usage(
                crypto_provider().signature_verification_algorithms.all,
                std::slice::from_ref(&anchor),
                &[],
                now,
                usage,
                None,
                None,
            )
            .unwrap();
        }
    }

    #[test]
    fn invalid_names_refused() {
        let ca = ClusterCa::generate("test-ca").unwrap();
        for bad in ["", "../x", "a/b", "..", "a b", "x."] {
            assert!(
                matches!(ca.issue(bad, CertRole::Node), Err(TlsError::InvalidName(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn save_load_round_trip_and_key_modes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("test-ca").unwrap();
        let written = ca.save(dir.path(), false).unwrap();
        assert_eq!(written.len(), 2);
        assert!(matches!(
            ca.save(dir.path(), false),
            Err(TlsError::AlreadyExists(_))
        ));
        let loaded = ClusterCa::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_der(), ca.cert_der());

        // A CA loaded from disk issues certificates that chain to the original.
        let m = loaded.issue("node-2", CertRole::Node).unwrap();
        let member_dir = dir.path().join("node-2");
        m.save(&member_dir, false).unwrap();
        let back = MemberIdentity::load(&member_dir, "node-2").unwrap();
        assert_eq!(back.cert_der(), m.cert_der());
        assert_eq!(back.ca_cert_der().unwrap(), *ca.cert_der());
        back.client_config(ca.cert_der()).unwrap();

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [
                dir.path().join(CA_KEY_FILE),
                member_dir.join("node-2-key.pem"),
            ] {
                let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", key.display());
            }
        }
    }

    #[test]
    fn mismatched_key_refused_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let a = ClusterCa::generate("a").unwrap();
        let b = ClusterCa::generate("b").unwrap();
        a.save(dir.path(), false).unwrap();
        fs::write(dir.path().join(CA_KEY_FILE), &b.key_pem).unwrap();
        assert!(matches!(
            ClusterCa::load(dir.path()),
            Err(TlsError::KeyMismatch(_))
        ));
    }
}
