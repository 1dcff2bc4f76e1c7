//! `ssi-dp`: the node daemon.

fn main() {
    eprintln!("ssi-dp: nothing to run yet");
    std::process::exit(2);
}
