//! Writes a Linux guest initramfs whose init runs the guest checker with the given arguments,
//! for running a guest by hand (in the lab, or on a host with hardware KVM):
//!
//! `cargo run -p ssi-tests --example guest_initramfs -- OUT.cpio --expect-cpus 4 --expect-node 0=0,2 --expect-node 1=1,3`

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next() else {
        eprintln!("usage: guest_initramfs OUT.cpio CHECKER-ARGS...");
        std::process::exit(2);
    };
    let checker_args = args.collect::<Vec<_>>().join(" ");
    let image = ssi_tests::initramfs::write_linux_initramfs(&checker_args);
    if let Err(e) = std::fs::copy(&image, &out) {
        eprintln!("cannot write {out}: {e}");
        std::process::exit(1);
    }
    println!("{out}: init runs ssi-guest-check {checker_args} --status-port --poweroff");
}
