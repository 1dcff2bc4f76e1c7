//! Fuzzes both sides of the mesh handshake with a hostile peer: the input's first byte picks
//! the side (server accepting a connection, or client that dialled), the rest is everything
//! the peer sends before it closes. Each side must end in a typed error or a result, never a
//! panic, within its deadline. Runs over real loopback sockets, as in a node.

#![no_main]

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use wire::handshake::{accept_stream, connect_stream, HandshakeConfig};

fn listener() -> &'static TcpListener {
    static L: OnceLock<TcpListener> = OnceLock::new();
    L.get_or_init(|| TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener"))
}

fn config() -> HandshakeConfig {
    let mut cfg = HandshakeConfig::new(1, b"0123456789abcdef-fuzz", [7; 32])
        .expect("a valid handshake configuration");
    cfg.timeout = Duration::from_millis(200);
    cfg
}

fuzz_target!(|data: &[u8]| {
    let Some((&side, peer_bytes)) = data.split_first() else {
        return;
    };
    let l = listener();
    let Ok(dialled) = TcpStream::connect(l.local_addr().expect("listener address")) else {
        return;
    };
    let Ok((accepted, _)) = l.accept() else {
        return;
    };
    let cfg = config();
    // The hostile peer writes its bytes and closes its sending side, so that our side reads
    // them and then end-of-stream (never waits for the deadline on a short input).
    let (ours, mut theirs) = if side & 1 == 0 {
        (accepted, dialled)
    } else {
        (dialled, accepted)
    };
    let _ = theirs.write_all(peer_bytes);
    let _ = theirs.shutdown(Shutdown::Write);
    let result = if side & 1 == 0 {
        accept_stream(ours, &cfg)
    } else {
        connect_stream(ours, &cfg, 0, 0)
    };
    // The peer cannot know the secret's MAC: only an error is possible.
    assert!(
        result.is_err(),
        "a peer without the secret was authenticated"
    );
});
