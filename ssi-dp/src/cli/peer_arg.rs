//! The `--peer ID@HOST:PORT[,mem=SIZE][,control=HOST:PORT]` flag value.

use engine::config::{node_id, parse_size, ConfigError};
use thiserror::Error;

/// Why a `--peer` value was refused.
#[derive(Debug, Error)]
pub enum PeerArgError {
    /// Not of the form the flag takes.
    #[error("bad --peer {0:?}: use ID@HOST:PORT or ID@HOST:PORT,mem=SIZE (e.g. 1@127.0.0.1:7001)")]
    Malformed(String),
    /// The id or a size in it is out of range.
    #[error("bad --peer {value:?}: {source}")]
    Value {
        /// The flag value.
        value: String,
        /// What is wrong with it.
        #[source]
        source: ConfigError,
    },
}

/// A parsed `--peer` value before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerArg {
    /// The peer's node id.
    pub id: u16,
    /// `HOST:PORT` as written.
    pub addr: String,
    /// The peer's contribution when it differs from this node's `--memory`.
    pub memory: Option<u64>,
    /// The peer's control-plane address, when the control plane runs.
    pub control: Option<String>,
}

/// Parses `ID@HOST:PORT[,mem=SIZE][,control=HOST:PORT]`.
pub fn parse_peer(s: &str) -> Result<PeerArg, PeerArgError> {
    let bad = || PeerArgError::Malformed(s.to_string());
    let value = |source| PeerArgError::Value {
        value: s.to_string(),
        source,
    };
    let (id, rest) = s.split_once('@').ok_or_else(bad)?;
    let id: u32 = id.trim().parse().map_err(|_| bad())?;
    let id = node_id(id).map_err(value)?;
    let mut parts = rest.split(',');
    let addr = parts.next().unwrap_or_default();
    let (mut memory, mut control) = (None, None);
    for opt in parts {
        if let Some(size) = opt.strip_prefix("mem=") {
            memory = Some(parse_size(size).map_err(value)?);
        } else if let Some(c) = opt.strip_prefix("control=") {
            if !c.contains(':') {
                return Err(bad());
            }
            control = Some(c.to_string());
        } else {
            return Err(bad());
        }
    }
    if addr.is_empty() || !addr.contains(':') {
        return Err(bad());
    }
    Ok(PeerArg {
        id,
        addr: addr.to_string(),
        memory,
        control,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers() {
        assert_eq!(
            parse_peer("2@127.0.0.1:7002").unwrap(),
            PeerArg {
                id: 2,
                addr: "127.0.0.1:7002".into(),
                memory: None,
                control: None
            }
        );
        assert_eq!(parse_peer("3@host:1,mem=1G").unwrap().memory, Some(1 << 30));
        let p = parse_peer("3@host:1,control=host:2,mem=4K").unwrap();
        assert_eq!(
            (p.control.as_deref(), p.memory),
            (Some("host:2"), Some(4096))
        );
        assert!(parse_peer("3@host:1,control=nope").is_err());
        for bad in ["2", "x@h:1", "2@", "2@host", "2@h:1,size=1G", "64@h:1"] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_peer("64@h:1"),
            Err(PeerArgError::Value {
                source: ConfigError::NodeIdRange(64),
                ..
            })
        ));
    }
}
