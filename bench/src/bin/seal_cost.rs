//! Micro-benchmark of frame protection (`wire::seal`): the CPU time to seal one frame at the
//! sender and check it at the receiver, for a header-only frame and a 4 KiB page, in each
//! mode (`mac`, `aead`; `aead` includes the copy of the page into a transmit slot that the
//! transports make before encrypting; the copy into a receive slot, the same in every mode,
//! is not counted). One thread, pinned; each sample times `--batch`
//! frames and records the time per frame. Prints HDR percentiles and the CPU used.

use std::time::Instant;

use bench::{current_affinity, header, pin_current_thread, Latency};
use clap::Parser;
use wire::seal::{FrameAuth, FrameKeys, TAG_LEN};
use wire::{HEADER_LEN, PAGE_SIZE};

#[derive(Debug, Parser)]
#[command(about = "CPU cost of sealing and opening one frame, by mode")]
struct Args {
    /// Samples per row.
    #[arg(long, default_value_t = 20_000)]
    samples: usize,
    /// Frames per sample (the time per frame is the sample's time divided by this).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// CPU to run on.
    #[arg(long, default_value_t = 1)]
    cpu: usize,
}

fn row(args: &Args, auth: FrameAuth, page: bool) -> Latency {
    let keys_a = FrameKeys::new(auth, [1; 32], [2; 32]);
    let keys_b = FrameKeys::new(auth, [2; 32], [1; 32]);
    let mut sealer = keys_a.sealer().expect("keys").expect("sealed mode");
    let mut opener = keys_b.opener().expect("keys").expect("sealed mode");
    let hdr = [0x5au8; HEADER_LEN];
    let src: Vec<u8> = (0..PAGE_SIZE).map(|i| i as u8).collect();
    // The received page (a receive slot); in `aead` mode also the transmit slot.
    let mut slot = src.clone();
    let len = if page { PAGE_SIZE } else { 0 };
    let mut lat = Latency::new();
    for i in 0..args.samples + args.samples / 10 {
        let t = Instant::now();
        for _ in 0..args.batch {
            let tag: [u8; TAG_LEN] = if auth == FrameAuth::Aead {
                slot[..len].copy_from_slice(&src[..len]);
                sealer.seal_owned(&hdr, &mut slot[..len]).expect("seal")
            } else {
                sealer.seal_clear(&hdr, &src[..len]).expect("seal")
            };
            assert!(opener.open(&hdr, &tag, &mut slot[..len]), "frame opens");
        }
        if i >= args.samples / 10 {
            lat.record(t.elapsed().as_nanos() as u64 / args.batch as u64);
        }
    }
    lat
}

fn main() {
    let args = Args::parse();
    if let Err(e) = pin_current_thread(args.cpu) {
        eprintln!("seal_cost: cannot pin to CPU {}: {e}", args.cpu);
        std::process::exit(1);
    }
    println!(
        "# seal_cost: seal at the sender + check at the receiver, per frame; one thread on CPU {} (affinity {}); {} samples of {} frames; aead rows include the sender's copy into a transmit slot",
        args.cpu,
        current_affinity(),
        args.samples,
        args.batch
    );
    println!("{}", header());
    for auth in [FrameAuth::Mac, FrameAuth::Aead] {
        for page in [false, true] {
            let name = format!("{auth} {}", if page { "4 KiB page" } else { "header only" });
            println!("{}", row(&args, auth, page).row(&name));
        }
    }
}
