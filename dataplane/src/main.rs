//! `ssi-dp`: the node daemon (see `ssi-dp --help`).

fn main() {
    std::process::exit(dataplane::cli::main());
}
