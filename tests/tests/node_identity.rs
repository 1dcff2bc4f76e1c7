//! Per-node identity on data connections, against real node processes: nodes given their
//! certificates (`--tls-*`) prove their ids in every data handshake, so a holder of the
//! cluster secret and of one node's certificate and key cannot claim another node's id, and
//! a holder of the secret alone cannot connect at all. Before identities, the secret alone
//! admitted any node id.

use std::sync::Arc;
use std::time::Duration;

use control::node_proof::NodeProof;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use ssi_tests::{
    assert_all_ok, digest_two_16m, launch, scratch_dir, secret_file, wait_all, NodeOpts,
};
use wire::handshake::RejectReason;
use wire::handshake::{self, HandshakeConfig, HandshakeError, IdentityError, NodeIdentity};

const TIMEOUT: Duration = Duration::from_secs(240);

/// A node's certificate and key as a handshake identity (what `ssi-dp` does for a node).
#[derive(Debug)]
struct Stolen(NodeProof);

impl NodeIdentity for Stolen {
    fn credential(&self) -> &[u8] {
        self.0.credential()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IdentityError> {
        Ok(self.0.sign(msg)?)
    }

    fn verify(&self, node: u16, cred: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), IdentityError> {
        Ok(self.0.verify(node, cred, msg, sig)?)
    }
}

fn proof_of(certs: &std::path::Path, node: u16) -> NodeProof {
    let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certs.join("ca.pem"))
        .expect("ca")
        .collect::<Result<_, _>>()
        .expect("ca");
    let cert = CertificateDer::from_pem_file(certs.join(format!("node{node}.pem"))).expect("cert");
    let key = PrivateKeyDer::from_pem_file(certs.join(format!("node{node}.key"))).expect("key");
    NodeProof::new(&ca, cert, &key).expect("proof")
}

#[test]
fn one_nodes_certificate_cannot_claim_another_id() {
    let dir = scratch_dir("identity");
    let certs = dir.join("certs");
    control::tls::generate(&certs, &[0, 1, 2]).expect("certificates");
    let secret = secret_file(&dir, "secret", 7);
    let node = |id: u16| {
        let a: Vec<String> = [
            "--cores",
            &(id % 2).to_string(),
            "--idle",
            "block",
            "--cluster-secret-file",
            &secret.display().to_string(),
            "--tls-ca",
            &certs.join("ca.pem").display().to_string(),
            "--tls-cert",
            &certs.join(format!("node{id}.pem")).display().to_string(),
            "--tls-key",
            &certs.join(format!("node{id}.key")).display().to_string(),
            "--memory",
            "16M",
            "--workload",
            "seqs",
            "--ops",
            "50000",
            "--connect-timeout",
            "60",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        NodeOpts::new(id, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let procs = launch(&[node(0), node(1)]);
    assert!(procs[0].wait_for_output("cluster formed", Duration::from_secs(60)));
    let out0 = procs[0].output();
    assert!(out0.contains("node identity by certificate"), "{out0}");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], procs[0].port));
    let secret_bytes = std::fs::read(&secret).expect("secret");
    let digest = digest_two_16m();

    // Node 2's certificate and key (issued by the cluster CA) and the secret, claiming id 1.
    let mut cfg = HandshakeConfig::new(1, &secret_bytes, digest).expect("config");
    cfg.identity = Some(Arc::new(Stolen(proof_of(&certs, 2))));
    let r = handshake::connect(addr, &cfg, 0, 0);
    assert!(
        matches!(
            r,
            Err(HandshakeError::Rejected(RejectReason::IdentityRefused))
        ),
        "claiming node 1 with node 2's certificate must be refused: {r:?}"
    );

    // The secret and the digest alone (what admitted any id before): refused too.
    let bare = HandshakeConfig::new(1, &secret_bytes, digest).expect("config");
    let r = handshake::connect(addr, &bare, 0, 0);
    assert!(
        matches!(
            r,
            Err(HandshakeError::Rejected(RejectReason::IdentityMismatch))
        ),
        "a peer without a certificate must be refused: {r:?}"
    );

    assert!(
        !procs[0].output().contains("workload seqs"),
        "the cluster finished before the impostors came; the test needs a longer run"
    );
    let r = wait_all(procs, TIMEOUT);
    assert_all_ok(&r);
    let out0 = &r[0].2;
    assert!(out0.contains("0 went backwards, own slots exact"), "{out0}");
    assert!(
        out0.contains("node 1 did not prove its identity"),
        "the refusal must be logged with its reason:\n{out0}"
    );
    // Best effort: a scratch directory left behind is harmless.
    let _ = std::fs::remove_dir_all(&dir);
}
