//! The node's control-plane certificate used as its identity on data connections: the glue
//! between [`control::node_proof::NodeProof`] and the handshake's
//! [`wire::handshake::NodeIdentity`].

use std::sync::Arc;

use control::node_proof::NodeProof;
use wire::handshake::{IdentityError, NodeIdentity};
use wire::NodeId;

/// See the module documentation.
#[derive(Debug)]
pub struct DataIdentity(pub Arc<NodeProof>);

impl NodeIdentity for DataIdentity {
    fn credential(&self) -> &[u8] {
        self.0.credential()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IdentityError> {
        Ok(self.0.sign(msg)?)
    }

    fn verify(
        &self,
        node: NodeId,
        credential: &[u8],
        msg: &[u8],
        signature: &[u8],
    ) -> Result<(), IdentityError> {
        Ok(self.0.verify(node, credential, msg, signature)?)
    }
}
