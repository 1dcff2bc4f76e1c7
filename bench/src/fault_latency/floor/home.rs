//! The floors' home process (the hidden `floor-home` command): one TCP connection, blocking
//! in read(2) like the helper nodes; answers the complete requests each read brought, in
//! order, with one write ([`super::proto`]).

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpListener;

use super::proto::{self, BATCH, FILL, PAGE, REPLY_PAGES, REQUEST};
use crate::fault_latency::cli::FloorHomeArgs;

/// Runs the home until its peer closes the connection; returns the exit code.
pub fn home_main(a: FloorHomeArgs) -> i32 {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        eprintln!(
            "fault-latency floor-home: PR_SET_PDEATHSIG: {}",
            io::Error::last_os_error()
        );
    }
    if let Err(e) = crate::pin_current_thread(a.cpu) {
        eprintln!("fault-latency floor-home: {e}");
    }
    match serve(&a.bind) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fault-latency floor-home: {e}");
            1
        }
    }
}

fn serve(bind: &str) -> io::Result<()> {
    let l = TcpListener::bind(bind)?;
    println!("port {}", l.local_addr()?.port());
    io::stdout().flush()?;
    let (mut s, _) = l.accept()?;
    s.set_nodelay(true)?;
    let mut reqs = [0u8; BATCH * REQUEST];
    let mut have = 0;
    let mut out = vec![FILL; REPLY_PAGES * PAGE];
    loop {
        let (used, len) = proto::answer(&reqs[..have], &mut out)
            .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
        if used == 0 {
            // No complete request left (the buffer holds whole batches, so there is room).
            match s.read(&mut reqs[have..]) {
                Ok(0) => return Ok(()),
                Ok(n) => have += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        s.write_all(&out[..len])?;
        reqs.copy_within(used..have, 0);
        have -= used;
    }
}
