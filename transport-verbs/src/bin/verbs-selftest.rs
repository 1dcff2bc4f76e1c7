//! `verbs-selftest [DEVICE]`: exercises the verbs handles on a real device (soft-RoCE `rxe0`
//! in the lab VM by default) with two RC queue pairs of one process connected to each other
//! through a sealed endpoint exchange over TCP (`endpoint::exchange`, as two nodes do):
//! a 4 KiB SEND into a posted receive, a one-sided RDMA READ and RDMA WRITE of a page, a
//! window of sends deeper than one completion poll, 200 timed transfers of a page by each of
//! SEND, RDMA READ and RDMA WRITE (p50/p99/max), and an RDMA READ with a wrong rkey, which
//! must complete with an error. Every byte moved is checked but the timed ones'. Prints one `ok ...` line per
//! step and exits 0, or prints what failed and exits 1.
//!
//! `verbs-selftest DEVICE --serve PORT` and `verbs-selftest DEVICE --connect HOST:PORT` run
//! the two sides in two processes (or on two hosts), one queue pair each. Both modes run in
//! the lab: `tests/tests/lab_rdma.rs`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use transport_verbs::endpoint::{exchange, EndpointMsg};
use transport_verbs::ffi::{
    IbvQpCap, IbvRecvWr, IbvSendWr, IbvSge, IbvWc, IBV_ACCESS_LOCAL_WRITE, IBV_ACCESS_REMOTE_READ,
    IBV_ACCESS_REMOTE_WRITE, IBV_LINK_LAYER_ETHERNET, IBV_SEND_SIGNALED, IBV_WC_RDMA_READ,
    IBV_WC_RECV, IBV_WC_SUCCESS, IBV_WR_RDMA_READ, IBV_WR_RDMA_WRITE, IBV_WR_SEND,
};
use transport_verbs::verbs::{Cq, Endpoint, Mr, Qp, Verbs};
use wire::seal::{FrameAuth, FrameKeys};

const PAGE: usize = 4096;
/// Pages in each side's buffer.
const PAGES: usize = 64;
/// Sends in flight in the window step (more than one poll of 16 completions returns).
const WINDOW: usize = 48;
/// Transfers timed of each kind.
const TIMED: usize = 200;
const PORT: u8 = 1;

/// A page-aligned anonymous buffer.
struct Buf {
    ptr: *mut u8,
    len: usize,
}

impl Buf {
    fn new(len: usize) -> Result<Self, String> {
        // SAFETY: a fresh private anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Self { ptr: p.cast(), len })
    }

    fn page(&self, i: usize) -> &[u8] {
        assert!((i + 1) * PAGE <= self.len);
        // SAFETY: in bounds of the mapping; read only after the completion of any request
        // that wrote it.
        unsafe { std::slice::from_raw_parts(self.ptr.add(i * PAGE), PAGE) }
    }

    fn page_mut(&mut self, i: usize) -> &mut [u8] {
        assert!((i + 1) * PAGE <= self.len);
        // SAFETY: in bounds; written only while no request that uses the page is posted.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * PAGE), PAGE) }
    }

    fn addr(&self, i: usize) -> u64 {
        self.ptr as u64 + (i * PAGE) as u64
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the regions registered over it were dropped first.
        if unsafe { libc::munmap(self.ptr.cast(), self.len) } != 0 {
            eprintln!("munmap: {}", std::io::Error::last_os_error());
        }
    }
}

fn fill(p: &mut [u8], seed: u64) {
    for (i, b) in p.iter_mut().enumerate() {
        *b = (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8;
    }
}

fn expect_page(p: &[u8], seed: u64, what: &str) -> Result<(), String> {
    let mut want = vec![0u8; PAGE];
    fill(&mut want, seed);
    match p.iter().zip(&want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(at) => Err(format!(
            "{what}: byte {at} is {} where {} was written",
            p[at], want[at]
        )),
    }
}

/// Polls `cq` until `n` completions arrived (or 20 s passed) and returns them.
fn wait(cq: &Cq, n: usize, what: &str) -> Result<Vec<IbvWc>, String> {
    let mut got = Vec::with_capacity(n);
    let mut wc = [IbvWc::default(); 16];
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < n {
        let k = cq.poll(&mut wc).map_err(|e| format!("{what}: {e}"))?;
        got.extend_from_slice(&wc[..k]);
        if k == 0 {
            if Instant::now() > deadline {
                return Err(format!(
                    "{what}: {} of {n} completions after 20 s",
                    got.len()
                ));
            }
            std::thread::yield_now();
        }
    }
    Ok(got)
}

fn sge(buf: &Buf, mr: &Mr, page: usize) -> IbvSge {
    IbvSge {
        addr: buf.addr(page),
        length: PAGE as u32,
        lkey: mr.lkey(),
    }
}

fn post_recv(qp: &mut Qp, sg: &mut IbvSge, id: u64) -> Result<(), String> {
    let mut wr = IbvRecvWr {
        wr_id: id,
        sg_list: sg,
        num_sge: 1,
        ..Default::default()
    };
    // SAFETY: the element names a registered page that outlives the request (the buffers
    // live until the end of `run`, after every completion was polled).
    unsafe { qp.post_recv(&mut wr) }.map_err(|e| e.to_string())
}

/// A signaled work request of one element.
fn signaled(wr_id: u64, sg: &mut IbvSge, opcode: u32) -> IbvSendWr {
    IbvSendWr {
        wr_id,
        sg_list: sg,
        num_sge: 1,
        opcode,
        send_flags: IBV_SEND_SIGNALED,
        ..Default::default()
    }
}

fn post_send(qp: &mut Qp, wr: &mut IbvSendWr) -> Result<(), String> {
    // SAFETY: as in `post_recv`; remote addresses and rkeys are the peer buffer's own.
    unsafe { qp.post_send(wr) }.map_err(|e| e.to_string())
}

fn run(device: &str) -> Result<(), String> {
    let verbs = Verbs::load().map_err(|e| e.to_string())?;
    let devices = verbs.devices().map_err(|e| e.to_string())?;
    println!("devices: {}", devices.join(", "));
    let ctx = verbs.open(device).map_err(|e| e.to_string())?;
    let port = ctx.active_port(PORT).map_err(|e| e.to_string())?;
    let roce = port.link_layer == IBV_LINK_LAYER_ETHERNET;
    let (gid_index, gid) = ctx.pick_gid(PORT, &port).map_err(|e| e.to_string())?;
    println!(
        "ok open {device}: port {PORT} active, mtu code {}, link layer {}, lid {}, gid[{gid_index}] {:02x?}",
        port.active_mtu,
        if roce { "ethernet (RoCE)" } else { "infiniband" },
        port.lid,
        gid.raw
    );
    let pd = ctx.alloc_pd().map_err(|e| e.to_string())?;
    let access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE;
    let (mut a_buf, mut b_buf) = (Buf::new(PAGES * PAGE)?, Buf::new(PAGES * PAGE)?);
    // SAFETY: the buffers outlive the regions (dropped in reverse order of declaration).
    let a_mr = unsafe { pd.reg_mr(a_buf.ptr, a_buf.len, access) }.map_err(|e| e.to_string())?;
    // SAFETY: as above.
    let b_mr = unsafe { pd.reg_mr(b_buf.ptr, b_buf.len, access) }.map_err(|e| e.to_string())?;
    let (a_cq, b_cq) = (
        ctx.create_cq(256, None).map_err(|e| e.to_string())?,
        ctx.create_cq(256, None).map_err(|e| e.to_string())?,
    );
    let cap = IbvQpCap {
        max_send_wr: 128,
        max_recv_wr: 128,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline_data: 0,
    };
    let mut a = pd
        .create_rc_qp(&a_cq, &a_cq, cap)
        .map_err(|e| e.to_string())?;
    let mut b = pd
        .create_rc_qp(&b_cq, &b_cq, cap)
        .map_err(|e| e.to_string())?;
    // Each side tells the other its queue pair and readable buffer over a TCP connection,
    // sealed with a pair of frame keys (as two nodes do after their handshake), and connects
    // to what it was told: the rkey and address used below are the exchanged ones.
    let msg = |qp: &Qp, psn, mr: &Mr, buf: &Buf| EndpointMsg {
        mtu: port.active_mtu as u8,
        qpn: qp.qpn(),
        psn,
        lid: port.lid,
        gid: gid.raw,
        rx_slots: 128,
        rx_slot_size: PAGE as u32,
        rkey: mr.rkey(),
        addr: buf.addr(0),
        len: buf.len as u64,
    };
    let (a_msg, b_msg) = (
        msg(&a, 0x1234, &a_mr, &a_buf),
        msg(&b, 0x5678, &b_mr, &b_buf),
    );
    let (ka, kb) = (
        FrameKeys::new(FrameAuth::Mac, [7; 32], [9; 32]),
        FrameKeys::new(FrameAuth::Mac, [9; 32], [7; 32]),
    );
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (b_told, a_told) = std::thread::scope(|sc| {
        let server = sc.spawn(|| -> Result<EndpointMsg, String> {
            let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
            exchange(&mut s, &kb, &b_msg, Duration::from_secs(10)).map_err(|e| e.to_string())
        });
        let client = (|| -> Result<EndpointMsg, String> {
            let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            exchange(&mut c, &ka, &a_msg, Duration::from_secs(10)).map_err(|e| e.to_string())
        })();
        (
            client,
            server.join().expect("the exchange thread does not panic"),
        )
    });
    // `b_told`: what A learnt about B; `a_told`: what B learnt about A.
    let (b_told, a_told) = (b_told?, a_told?);
    if b_told != b_msg || a_told != a_msg {
        return Err("the exchanged queue-pair messages differ from what was sent".into());
    }
    for (qp, peer, my_psn) in [(&mut a, b_told, a_msg.psn), (&mut b, a_told, b_msg.psn)] {
        let ep = Endpoint {
            qpn: peer.qpn,
            psn: peer.psn,
            gid: peer.gid,
            lid: peer.lid,
        };
        qp.to_init(PORT, access).map_err(|e| e.to_string())?;
        qp.to_rtr(&ep, PORT, u32::from(peer.mtu), gid_index, roce)
            .map_err(|e| e.to_string())?;
        qp.to_rts(my_psn).map_err(|e| e.to_string())?;
    }
    println!(
        "ok connected qp {} <-> qp {} over a sealed TCP exchange (granted send {} / recv {})",
        a.qpn(),
        b.qpn(),
        a.cap().max_send_wr,
        a.cap().max_recv_wr
    );
    // B's buffer as A was told it.
    let remote = |page: usize| b_told.addr + (page * PAGE) as u64;

    // 1. SEND a page into a posted receive.
    fill(a_buf.page_mut(0), 1);
    let mut rsg = sge(&b_buf, &b_mr, 0);
    post_recv(&mut b, &mut rsg, 100)?;
    let mut ssg = sge(&a_buf, &a_mr, 0);
    let mut wr = signaled(1, &mut ssg, IBV_WR_SEND);
    let t = Instant::now();
    post_send(&mut a, &mut wr)?;
    let sc = wait(&a_cq, 1, "send completion")?;
    let rc = wait(&b_cq, 1, "receive completion")?;
    let us = t.elapsed().as_micros();
    if sc[0].status != IBV_WC_SUCCESS || rc[0].status != IBV_WC_SUCCESS {
        return Err(format!(
            "send: status {} / receive status {}",
            sc[0].status, rc[0].status
        ));
    }
    if rc[0].opcode & IBV_WC_RECV == 0 || rc[0].byte_len != PAGE as u32 || rc[0].wr_id != 100 {
        return Err(format!("receive completion {:?}", rc[0]));
    }
    expect_page(b_buf.page(0), 1, "received page")?;
    println!("ok send/recv 4096 bytes in {us} us (TCG: correctness, not speed)");

    // 2. RDMA READ a page of B's buffer into A's.
    fill(b_buf.page_mut(1), 2);
    let mut lsg = sge(&a_buf, &a_mr, 1);
    let mut wr = signaled(2, &mut lsg, IBV_WR_RDMA_READ);
    wr.set_rdma(remote(1), b_told.rkey);
    post_send(&mut a, &mut wr)?;
    let c = wait(&a_cq, 1, "read completion")?;
    if c[0].status != IBV_WC_SUCCESS || c[0].opcode != IBV_WC_RDMA_READ {
        return Err(format!("rdma read completion {:?}", c[0]));
    }
    expect_page(a_buf.page(1), 2, "page read")?;
    println!("ok rdma read 4096 bytes");

    // 3. RDMA WRITE a page of A's buffer into B's.
    fill(a_buf.page_mut(2), 3);
    let mut lsg = sge(&a_buf, &a_mr, 2);
    let mut wr = signaled(3, &mut lsg, IBV_WR_RDMA_WRITE);
    wr.set_rdma(remote(2), b_told.rkey);
    post_send(&mut a, &mut wr)?;
    let c = wait(&a_cq, 1, "write completion")?;
    if c[0].status != IBV_WC_SUCCESS {
        return Err(format!("rdma write completion {:?}", c[0]));
    }
    expect_page(b_buf.page(2), 3, "page written")?;
    println!("ok rdma write 4096 bytes");

    // 4. A window of WINDOW sends, each into its own posted receive.
    let mut rsgs: Vec<IbvSge> = (0..WINDOW)
        .map(|i| sge(&b_buf, &b_mr, 8 + i % 48))
        .collect();
    for (i, s) in rsgs.iter_mut().enumerate() {
        post_recv(&mut b, s, 1000 + i as u64)?;
    }
    let mut ssgs: Vec<IbvSge> = (0..WINDOW)
        .map(|i| sge(&a_buf, &a_mr, 8 + i % 48))
        .collect();
    for (i, s) in ssgs.iter_mut().enumerate() {
        fill(a_buf.page_mut(8 + i % 48), 10 + i as u64);
        let mut wr = signaled(1000 + i as u64, s, IBV_WR_SEND);
        post_send(&mut a, &mut wr)?;
    }
    let sends = wait(&a_cq, WINDOW, "window sends")?;
    let recvs = wait(&b_cq, WINDOW, "window receives")?;
    if let Some(bad) = sends
        .iter()
        .chain(&recvs)
        .find(|c| c.status != IBV_WC_SUCCESS)
    {
        return Err(format!("window completion {bad:?}"));
    }
    // An RC queue pair delivers in order: receive i holds send i.
    for (i, r) in recvs.iter().enumerate() {
        if r.wr_id != 1000 + i as u64 {
            return Err(format!("receive {i} completed as {}", r.wr_id));
        }
        expect_page(b_buf.page(8 + i % 48), 10 + i as u64, "window page")?;
    }
    println!("ok window of {WINDOW} sends, received in order");

    // Timings: one page at a time, from the post to the completion that says the page is
    // where it goes (for a SEND, the receiver's). Each way is what a page payload could use.
    for (what, op) in [
        ("send", IBV_WR_SEND),
        ("rdma read", IBV_WR_RDMA_READ),
        ("rdma write", IBV_WR_RDMA_WRITE),
    ] {
        let mut us = Vec::with_capacity(TIMED);
        for i in 0..TIMED {
            let page = 4 + i % 4;
            let mut lsg = sge(&a_buf, &a_mr, page);
            let mut wr = signaled(2000 + i as u64, &mut lsg, op);
            let t = Instant::now();
            if op == IBV_WR_SEND {
                let mut rsg = sge(&b_buf, &b_mr, page);
                post_recv(&mut b, &mut rsg, 2000 + i as u64)?;
                post_send(&mut a, &mut wr)?;
                let r = wait(&b_cq, 1, "timed receive")?;
                let c = wait(&a_cq, 1, "timed send")?;
                if r[0].status != IBV_WC_SUCCESS || c[0].status != IBV_WC_SUCCESS {
                    return Err(format!("timed {what}: {:?} / {:?}", c[0], r[0]));
                }
            } else {
                wr.set_rdma(remote(page), b_told.rkey);
                post_send(&mut a, &mut wr)?;
                let c = wait(&a_cq, 1, "timed transfer")?;
                if c[0].status != IBV_WC_SUCCESS {
                    return Err(format!("timed {what}: {:?}", c[0]));
                }
            }
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        us.sort_by(f64::total_cmp);
        let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
        println!(
            "ok timed {what} of 4096 bytes x {TIMED}: p50 {:.0} us, p99 {:.0} us, max {:.0} us \
             (one at a time, polled; on soft-RoCE under TCG: correctness, not speed)",
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }

    // 5. A wrong rkey: the read must fail with an error completion, not move data.
    fill(b_buf.page_mut(3), 4);
    a_buf.page_mut(3).fill(0);
    let mut lsg = sge(&a_buf, &a_mr, 3);
    let mut wr = signaled(5, &mut lsg, IBV_WR_RDMA_READ);
    wr.set_rdma(remote(3), b_told.rkey ^ 0x00ff_ff00);
    post_send(&mut a, &mut wr)?;
    let c = wait(&a_cq, 1, "bad-rkey completion")?;
    if c[0].status == IBV_WC_SUCCESS {
        return Err("an RDMA READ with a wrong rkey succeeded".into());
    }
    if a_buf.page(3).iter().any(|&x| x != 0) {
        return Err("the refused read wrote into the local page".into());
    }
    println!(
        "ok wrong rkey refused: completion status {} (vendor error {})",
        c[0].status, c[0].vendor_err
    );
    drop((a, b));
    drop((a_mr, b_mr));
    Ok(())
}

/// One side of the two-process mode.
enum Role {
    Serve(u16),
    Connect(String),
}

/// Two processes, one queue pair each, connected through the sealed exchange over a TCP
/// connection between them (as two nodes): the client SENDs a page into the server's posted
/// receive, RDMA READs a page the server wrote, and RDMA WRITEs a page into the server's
/// buffer; both check every byte (the server learns over TCP when the write is done).
fn run_two(device: &str, role: Role) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let verbs = Verbs::load().map_err(|x| e(&x))?;
    let ctx = verbs.open(device).map_err(|x| e(&x))?;
    let port = ctx.active_port(PORT).map_err(|x| e(&x))?;
    let roce = port.link_layer == IBV_LINK_LAYER_ETHERNET;
    let (gid_index, gid) = ctx.pick_gid(PORT, &port).map_err(|x| e(&x))?;
    let pd = ctx.alloc_pd().map_err(|x| e(&x))?;
    let access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE;
    let mut buf = Buf::new(PAGES * PAGE)?;
    // SAFETY: the buffer outlives the region (declared before it, so dropped after).
    let mr = unsafe { pd.reg_mr(buf.ptr, buf.len, access) }.map_err(|x| e(&x))?;
    let cq = ctx.create_cq(64, None).map_err(|x| e(&x))?;
    let cap = IbvQpCap {
        max_send_wr: 16,
        max_recv_wr: 16,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline_data: 0,
    };
    let mut qp = pd.create_rc_qp(&cq, &cq, cap).map_err(|x| e(&x))?;
    let serving = matches!(role, Role::Serve(_));
    let (mine, theirs) = ([7u8; 32], [9u8; 32]);
    let keys = if serving {
        FrameKeys::new(FrameAuth::Mac, mine, theirs)
    } else {
        FrameKeys::new(FrameAuth::Mac, theirs, mine)
    };
    let mut stream = match &role {
        Role::Serve(p) => {
            let l = TcpListener::bind(("0.0.0.0", *p)).map_err(|x| e(&x))?;
            println!("serving on port {p}");
            l.accept().map_err(|x| e(&x))?.0
        }
        // The server may still be starting (another host, another VM): retry for 30 s.
        Role::Connect(addr) => {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match TcpStream::connect(addr.as_str()) {
                    Ok(c) => break c,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(200))
                    }
                    Err(x) => return Err(format!("connecting to {addr}: {x}")),
                }
            }
        }
    };
    // The server's page 1 is what the client will read.
    if serving {
        fill(buf.page_mut(1), 2);
    }
    let ours = EndpointMsg {
        mtu: port.active_mtu as u8,
        qpn: qp.qpn(),
        psn: if serving { 0x77 } else { 0x99 },
        lid: port.lid,
        gid: gid.raw,
        rx_slots: 16,
        rx_slot_size: PAGE as u32,
        rkey: mr.rkey(),
        addr: buf.addr(0),
        len: buf.len as u64,
    };
    let peer = exchange(&mut stream, &keys, &ours, Duration::from_secs(10)).map_err(|x| e(&x))?;
    let ep = Endpoint {
        qpn: peer.qpn,
        psn: peer.psn,
        gid: peer.gid,
        lid: peer.lid,
    };
    qp.to_init(PORT, access).map_err(|x| e(&x))?;
    // Receives can be posted from INIT on; the server's waits for the client's page 0 (a
    // SEND that comes earlier is retried by the client's side, rnr_retry 7).
    let mut rsg = sge(&buf, &mr, 0);
    if serving {
        post_recv(&mut qp, &mut rsg, 100)?;
    }
    qp.to_rtr(&ep, PORT, u32::from(peer.mtu), gid_index, roce)
        .map_err(|x| e(&x))?;
    qp.to_rts(ours.psn).map_err(|x| e(&x))?;
    println!("ok connected qp {} to the peer's qp {}", qp.qpn(), peer.qpn);
    let mut flag = [0u8; 1];
    if serving {
        let c = wait(&cq, 1, "receive")?;
        if c[0].status != IBV_WC_SUCCESS || c[0].byte_len != PAGE as u32 {
            return Err(format!("receive completion {:?}", c[0]));
        }
        expect_page(buf.page(0), 1, "page sent by the client")?;
        println!("ok received the client's page");
        stream.read_exact(&mut flag).map_err(|x| e(&x))?;
        expect_page(buf.page(2), 3, "page written by the client")?;
        println!("ok the client's RDMA WRITE landed");
        stream.write_all(b"k").map_err(|x| e(&x))?;
    } else {
        fill(buf.page_mut(0), 1);
        let mut ssg = sge(&buf, &mr, 0);
        let mut wr = signaled(1, &mut ssg, IBV_WR_SEND);
        post_send(&mut qp, &mut wr)?;
        let mut lsg = sge(&buf, &mr, 1);
        let mut rd = signaled(2, &mut lsg, IBV_WR_RDMA_READ);
        rd.set_rdma(peer.addr + PAGE as u64, peer.rkey);
        post_send(&mut qp, &mut rd)?;
        fill(buf.page_mut(2), 3);
        let mut wsg = sge(&buf, &mr, 2);
        let mut wrt = signaled(3, &mut wsg, IBV_WR_RDMA_WRITE);
        wrt.set_rdma(peer.addr + 2 * PAGE as u64, peer.rkey);
        post_send(&mut qp, &mut wrt)?;
        let c = wait(&cq, 3, "send, read and write")?;
        if let Some(bad) = c.iter().find(|c| c.status != IBV_WC_SUCCESS) {
            return Err(format!("completion {bad:?}"));
        }
        expect_page(buf.page(1), 2, "page read from the server")?;
        println!("ok sent a page, read the server's page, wrote into its buffer");
        stream.write_all(b"d").map_err(|x| e(&x))?;
        stream.read_exact(&mut flag).map_err(|x| e(&x))?;
        println!("ok the server checked the written page");
    }
    drop(qp);
    drop(mr);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let device = args.first().cloned().unwrap_or_else(|| "rxe0".into());
    let result = match args.get(1).map(String::as_str) {
        None => run(&device),
        Some("--serve") => match args.get(2).and_then(|p| p.parse().ok()) {
            Some(p) => run_two(&device, Role::Serve(p)),
            None => Err("--serve needs a port".into()),
        },
        Some("--connect") => match args.get(2) {
            Some(a) => run_two(&device, Role::Connect(a.clone())),
            None => Err("--connect needs HOST:PORT".into()),
        },
        Some(other) => Err(format!(
            "unknown argument {other:?}: verbs-selftest [DEVICE] [--serve PORT | --connect HOST:PORT]"
        )),
    };
    match result {
        Ok(()) => {
            println!("verbs-selftest: all passed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("verbs-selftest: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
