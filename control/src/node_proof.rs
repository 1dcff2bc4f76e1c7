//! A node's identity proved outside TLS, with the same certificate and key as its control
//! connections: the data plane's handshake sends the node's certificate and its signature
//! over the handshake transcript (see `wire::handshake`), and checks the peer's the same way:
//! the certificate must chain to the cluster CA and be valid for `node-<id>.ssi-dp` of the
//! node id claimed, and the signature must verify with the certificate's key.
//!
//! Keys: ECDSA (P-256, P-384) and Ed25519, which `ssi-dp certs` makes (P-256). RSA keys are
//! refused at load with that reason.

use std::sync::Arc;

use rustls::pki_types::UnixTime;
use rustls::sign::SigningKey;
use rustls::SignatureScheme;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor};

use crate::inventory::node_name;
use crate::tls::TlsError;

/// Signature schemes a node may sign with, in order of preference.
const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP384_SHA384,
];

/// Our certificate and key, and the cluster CA to check peers against.
pub struct NodeProof {
    cert: CertificateDer<'static>,
    key: Arc<dyn SigningKey>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl std::fmt::Debug for NodeProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeProof")
            .field("cert_len", &self.cert.len())
            .field("anchors", &self.anchors.len())
            .finish_non_exhaustive()
    }
}

fn bad(why: impl std::fmt::Display) -> TlsError {
    TlsError::Proof(why.to_string())
}

impl NodeProof {
    /// From the cluster CA certificates, our end-entity certificate and its key.
    pub fn new(
        ca: &[CertificateDer<'static>],
        cert: CertificateDer<'static>,
        key: &PrivateKeyDer<'_>,
    ) -> Result<NodeProof, TlsError> {
        let key = rustls::crypto::ring::sign::any_supported_type(key).map_err(bad)?;
        if key.choose_scheme(SCHEMES).is_none() {
            return Err(bad(
                "the node key must be ECDSA (P-256 or P-384) or Ed25519 to prove the node's \
                 identity on data connections; make the certificates with `ssi-dp certs`",
            ));
        }
        let anchors = ca
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("the CA certificate is not usable: {e}")))?;
        Ok(NodeProof { cert, key, anchors })
    }

    /// Our certificate (DER).
    pub fn credential(&self) -> &[u8] {
        &self.cert
    }

    /// Our signature over `msg`: the scheme (big-endian u16) then the signature.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, TlsError> {
        let signer = self
            .key
            .choose_scheme(SCHEMES)
            .ok_or_else(|| bad("no usable signature scheme for the node key"))?;
        let sig = signer.sign(msg).map_err(bad)?;
        let mut out = u16::from(signer.scheme()).to_be_bytes().to_vec();
        out.extend_from_slice(&sig);
        Ok(out)
    }

    /// Checks that `credential` chains to the cluster CA and is valid for node `node`, and
    /// that `signature` (as [`NodeProof::sign`] makes it) is its key's over `msg`.
    pub fn verify(
        &self,
        node: u16,
        credential: &[u8],
        msg: &[u8],
        signature: &[u8],
    ) -> Result<(), TlsError> {
        let (scheme, sig) = match signature {
            [a, b, rest @ ..] => (SignatureScheme::from(u16::from_be_bytes([*a, *b])), rest),
            _ => return Err(bad("the signature is too short")),
        };
        let alg = match scheme {
            SignatureScheme::ECDSA_NISTP256_SHA256 => webpki::ring::ECDSA_P256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384 => webpki::ring::ECDSA_P384_SHA384,
            SignatureScheme::ED25519 => webpki::ring::ED25519,
            other => return Err(bad(format!("signature scheme {other:?} is not accepted"))),
        };
        let der = CertificateDer::from(credential);
        let ee = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| bad(format!("the certificate does not parse: {e}")))?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &[],
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            bad(format!(
                "the certificate is not signed by the cluster CA: {e}"
            ))
        })?;
        let name = node_name(node);
        let server_name = ServerName::try_from(name.as_str()).map_err(bad)?;
        ee.verify_is_valid_for_subject_name(&server_name)
            .map_err(|_| TlsError::Identity {
                claimed: node,
                name: name.clone(),
            })?;
        ee.verify_signature(alg, msg, sig)
            .map_err(|e| bad(format!("the signature does not verify: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::generate;
    use rustls_pki_types::pem::PemObject;

    fn load(dir: &std::path::Path, n: u16) -> NodeProof {
        let ca: Vec<_> = CertificateDer::pem_file_iter(dir.join("ca.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let cert = CertificateDer::from_pem_file(dir.join(format!("node{n}.pem"))).unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join(format!("node{n}.key"))).unwrap();
        NodeProof::new(&ca, cert, &key).unwrap()
    }

    #[test]
    fn a_node_proves_its_own_id_and_no_other() {
        let dir = std::env::temp_dir().join(format!("ssi-dp-proof-{}", std::process::id()));
        // A stale directory from an earlier run would make `generate` refuse.
        let _ = std::fs::remove_dir_all(&dir);
        generate(&dir, &[0, 1, 2]).unwrap();
        let (p0, p1) = (load(&dir, 0), load(&dir, 1));
        let msg = b"transcript";
        let sig = p1.sign(msg).unwrap();
        p0.verify(1, p1.credential(), msg, &sig)
            .expect("node 1's own proof");
        let e = p0.verify(2, p1.credential(), msg, &sig).unwrap_err();
        assert!(matches!(e, TlsError::Identity { claimed: 2, .. }), "{e}");
        let e = p0.verify(1, p1.credential(), b"another", &sig).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        // A certificate from another CA, even for the right name, is refused.
        let other = dir.join("other");
        generate(&other, &[1]).unwrap();
        let stranger = load(&other, 1);
        let sig = stranger.sign(msg).unwrap();
        let e = p0.verify(1, stranger.credential(), msg, &sig).unwrap_err();
        assert!(e.to_string().contains("cluster CA"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
