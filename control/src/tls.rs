//! Mutual TLS for control connections (rustls with the `ring` provider).
//!
//! Every node holds a certificate signed by the cluster CA and valid for the DNS name
//! `node-<id>.ssi-dp`. A client checks that the server's certificate is valid for the node it
//! dialled; a server requires a client certificate signed by the CA and then checks that it is
//! valid for the node id the client claims in its first message. A peer without such a
//! certificate never gets past the handshake.
//!
//! [`generate`] writes a CA and node certificates (rcgen), for tests and for operators
//! (`ssi-dp certs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::ClientConfig;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;

use crate::inventory::node_name;
use crate::node_proof::NodeProof;

/// Why TLS could not be set up or a peer's identity is not what it claims.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot load {what} from {path}: {why}; create the cluster's certificates with `ssi-dp certs`")]
    Load {
        /// What was being loaded.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// rustls refused the configuration (e.g. the key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The peer's certificate is not valid for the node it claims to be.
    #[error("the peer claims to be node {claimed} but its certificate is not valid for {name}")]
    Identity {
        /// The id it claimed.
        claimed: u16,
        /// The name checked.
        name: String,
    },
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// Generating certificates failed.
    #[error("generating certificates: {0}")]
    Generate(String),
    /// A node identity could not be proved or checked outside TLS (data connections).
    #[error("node identity: {0}")]
    Proof(String),
}

/// A node's TLS identity: configurations for both ends of a control connection.
#[derive(Clone)]
pub struct TlsIdentity {
    /// This node's id (its certificate is valid for `node-<id>.ssi-dp`).
    pub node: u16,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    proof: Arc<NodeProof>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("node", &self.node)
            .finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsIdentity {
    /// Loads node `node`'s certificate and key and the cluster CA.
    pub fn load(node: u16, ca: &Path, cert: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
        let load = |what, path: &Path, why: String| TlsError::Load {
            what,
            path: path.to_path_buf(),
            why,
        };
        let ca_certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .map_err(|e| load("the CA certificate", ca, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| load("the CA certificate", ca, e.to_string()))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| load("the node certificate", cert, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| load("the node certificate", cert, e.to_string()))?;
        if ca_certs.is_empty() || chain.is_empty() {
            return Err(load(
                "certificates",
                if ca_certs.is_empty() { ca } else { cert },
                "no certificate in the file".into(),
            ));
        }
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| load("the node key", key, e.to_string()))?;
        Self::from_der(node, ca_certs, chain, key_der)
    }

    /// Builds the identity from DER material.
    pub fn from_der(
        node: u16,
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<TlsIdentity, TlsError> {
        let cfg = |e: rustls::Error| TlsError::Config(e.to_string());
        let proof = Arc::new(NodeProof::new(&ca, chain[0].clone(), &key)?);
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c).map_err(cfg)?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(cfg)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(cfg)?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(cfg)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(cfg)?;
        Ok(TlsIdentity {
            node,
            server: Arc::new(server),
            client: Arc::new(client),
            proof,
        })
    }

    /// The same certificate and key, for proving this node's identity on data connections.
    pub fn proof(&self) -> Arc<NodeProof> {
        self.proof.clone()
    }

    /// A server-side connection (the peer must present a certificate signed by the CA).
    pub fn server(&self) -> Result<rustls::ServerConnection, TlsError> {
        rustls::ServerConnection::new(self.server.clone())
            .map_err(|e| TlsError::Config(e.to_string()))
    }

    /// A client-side connection to node `peer` (its certificate must be valid for
    /// `node-<peer>.ssi-dp`).
    pub fn client(&self, peer: u16) -> Result<rustls::ClientConnection, TlsError> {
        let name =
            ServerName::try_from(node_name(peer)).map_err(|e| TlsError::Config(e.to_string()))?;
        rustls::ClientConnection::new(self.client.clone(), name)
            .map_err(|e| TlsError::Config(e.to_string()))
    }
}

/// Checks that the client certificate presented on `conn` is valid for node `claimed`
/// (its chain was already verified against the CA during the handshake).
pub fn check_peer(conn: &rustls::ServerConnection, claimed: u16) -> Result<(), TlsError> {
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(TlsError::NoCertificate)?;
    let name = node_name(claimed);
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| TlsError::Config(e.to_string()))?;
    let server_name =
        ServerName::try_from(name.as_str()).map_err(|e| TlsError::Config(e.to_string()))?;
    ee.verify_is_valid_for_subject_name(&server_name)
        .map_err(|_| TlsError::Identity { claimed, name })
}

/// Files written by [`generate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// `(node, certificate, key)`.
    pub nodes: Vec<(u16, PathBuf, PathBuf)>,
}

/// Writes a new CA (`ca.pem`; its key is not kept) and, for every node, `node<id>.pem` and
/// `node<id>.key` valid for `node-<id>.ssi-dp`, into `dir`. Refuses to overwrite.
pub fn generate(dir: &Path, nodes: &[u16]) -> Result<GeneratedFiles, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let g = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let io = |p: &Path, e: std::io::Error| TlsError::Generate(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let ca_path = dir.join("ca.pem");
    let mut all = vec![ca_path.clone()];
    for &n in nodes {
        all.push(dir.join(format!("node{n}.pem")));
        all.push(dir.join(format!("node{n}.key")));
    }
    if let Some(p) = all.iter().find(|p| p.exists()) {
        return Err(TlsError::Generate(format!(
            "{} exists; remove it to generate new certificates",
            p.display()
        )));
    }
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(g)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ssi-dp cluster CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(g)?).map_err(g)?;
    std::fs::write(&ca_path, ca.pem()).map_err(|e| io(&ca_path, e))?;
    let mut out = GeneratedFiles {
        ca: ca_path,
        nodes: Vec::new(),
    };
    for &n in nodes {
        let key = KeyPair::generate().map_err(g)?;
        let mut p = CertificateParams::new(vec![node_name(n)]).map_err(g)?;
        p.distinguished_name.push(DnType::CommonName, node_name(n));
        let cert = p.signed_by(&key, &ca).map_err(g)?;
        let (cp, kp) = (
            dir.join(format!("node{n}.pem")),
            dir.join(format!("node{n}.key")),
        );
        std::fs::write(&cp, cert.pem()).map_err(|e| io(&cp, e))?;
        write_private(&kp, key.serialize_pem().as_bytes()).map_err(|e| io(&kp, e))?;
        out.nodes.push((n, cp, kp));
    }
    Ok(out)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ssi-dp-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// How one end of a test handshake failed.
    #[derive(Debug, Error)]
    enum HandshakeError {
        /// The TLS stream failed (a refused certificate surfaces here).
        #[error(transparent)]
        Io(#[from] std::io::Error),
        /// The peer's certificate is not valid for the id it claimed.
        #[error(transparent)]
        Tls(#[from] TlsError),
    }

    fn identity(files: &GeneratedFiles, n: u16) -> TlsIdentity {
        let (_, c, k) = files.nodes.iter().find(|x| x.0 == n).unwrap();
        TlsIdentity::load(n, &files.ca, c, k).unwrap()
    }

    /// Runs a handshake: `client` dials as `dial` expecting node `expect`; returns what the
    /// server saw (the client's claimed id checked) and the client's result.
    fn handshake(
        server: TlsIdentity,
        client: TlsIdentity,
        expect: u16,
        claim: u16,
    ) -> (Result<(), HandshakeError>, Result<(), HandshakeError>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut tls = rustls::StreamOwned::new(server.server().unwrap(), s);
            let mut b = [0u8; 2];
            tls.read_exact(&mut b)?;
            let claimed = u16::from_le_bytes(b);
            Ok(check_peer(&tls.conn, claimed)?)
        });
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let conn = client.client(expect).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, s);
        let c = tls
            .write_all(&claim.to_le_bytes())
            .and_then(|_| tls.flush())
            .map_err(HandshakeError::from);
        let srv = t.join().unwrap();
        (srv, c)
    }

    #[test]
    fn mutual_tls_proves_node_ids() {
        let d = dir("ok");
        let files = generate(&d, &[0, 1, 2]).unwrap();
        assert!(generate(&d, &[0]).is_err(), "never overwrites");
        // Node 1 dials node 0 and claims to be node 1: both sides accept.
        let (s, c) = handshake(identity(&files, 0), identity(&files, 1), 0, 1);
        assert!(s.is_ok() && c.is_ok(), "{s:?} {c:?}");
        // Node 1 claiming to be node 2 is caught by the server.
        let (s, _) = handshake(identity(&files, 0), identity(&files, 1), 0, 2);
        assert!(s
            .unwrap_err()
            .to_string()
            .contains("not valid for node-2.ssi-dp"));
        // Dialling node 2 but reaching node 0's certificate fails on the client.
        let (_, c) = handshake(identity(&files, 0), identity(&files, 1), 2, 1);
        assert!(c.is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused() {
        let (d1, d2) = (dir("ca1"), dir("ca2"));
        let a = generate(&d1, &[0]).unwrap();
        let b = generate(&d2, &[1]).unwrap();
        let (s, _) = handshake(identity(&a, 0), identity(&b, 1), 0, 1);
        assert!(s.is_err(), "a foreign client certificate must be refused");
        let _ = std::fs::remove_dir_all(&d1);
        let _ = std::fs::remove_dir_all(&d2);
    }

    #[test]
    fn missing_files_say_how_to_create_them() {
        let e = TlsIdentity::load(
            0,
            Path::new("/nonexistent/ca.pem"),
            Path::new("/x"),
            Path::new("/y"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("ssi-dp certs"), "{e}");
    }
}
