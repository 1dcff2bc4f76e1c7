//! `ssi-dp inventory check FILE`: everything a node and `ssi-dp up` would check in an
//! inventory before starting, without starting anything — the schema and consistency checks
//! (with the line of an error), each node's memory and cores, and the files it names (the
//! secret long enough, the API token, the CA, certificates and keys readable).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use control::inventory::{Format, Inventory};
use engine::{config, cpulist};

use super::exit;
use super::settings;

/// `ssi-dp inventory` subcommands.
#[derive(Debug, Subcommand)]
pub enum InventoryCmd {
    /// Check an inventory (TOML or YAML, by extension) as a node would before starting:
    /// schema, consistency (ids, addresses, timeouts), sizes and cpulists, and the files it
    /// names. Exit 0: ready; 1: valid but a named file is missing or unusable; 2: invalid.
    Check(CheckArgs),
}

/// `ssi-dp inventory check` options.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The inventory file (*.toml, *.yaml or *.yml).
    file: PathBuf,
}

/// Runs an `inventory` subcommand; returns the exit code.
pub fn run(cmd: InventoryCmd) -> i32 {
    match cmd {
        InventoryCmd::Check(a) => check(&a.file),
    }
}

fn check(file: &Path) -> i32 {
    let inv = match Inventory::load(file) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("ssi-dp inventory: error: {e}");
            return exit::USAGE;
        }
    };
    // Format::of cannot fail here: load already chose the format by the same rule.
    let format = Format::of(file).map(Format::name).unwrap_or("?");
    println!(
        "{}: {format} inventory, {} node(s), frames {}, heartbeat {} ms, suspect {} ms, dead {} ms",
        file.display(),
        inv.nodes.len(),
        inv.cluster.frame_auth,
        inv.cluster.heartbeat_ms,
        inv.cluster.suspect_ms,
        inv.cluster.dead_ms
    );
    let mut invalid = Vec::new();
    for n in &inv.nodes {
        if let Err(e) = config::parse_size(&n.memory) {
            invalid.push(format!("node {}: memory {:?}: {e}", n.id, n.memory));
        }
        if let Err(e) = cpulist::parse(&n.cores) {
            invalid.push(format!("node {}: cores {:?}: {e}", n.id, n.cores));
        }
        println!(
            "  node {}: host {}, listen {}, control {}, api {}, memory {}, cores {}, idle {}",
            n.id,
            n.host,
            n.listen,
            n.control,
            n.api.as_deref().unwrap_or("none"),
            n.memory,
            n.cores,
            n.idle
        );
    }
    if !invalid.is_empty() {
        for i in &invalid {
            eprintln!("ssi-dp inventory: error: {}: {i}", file.display());
        }
        return exit::USAGE;
    }
    let mut missing = 0;
    let mut report = |what: String, path: &Path, result: Result<(), String>| match result {
        Ok(()) => println!("  {what} {}: ok", path.display()),
        Err(why) => {
            missing += 1;
            println!("  {what} {}: {why}", path.display());
        }
    };
    let readable = |p: &Path| std::fs::File::open(p).map(drop).map_err(|e| e.to_string());
    report(
        "secret".into(),
        &inv.cluster.secret_file,
        settings::read_secret(&inv.cluster.secret_file)
            .map(drop)
            .map_err(|e| e.to_string()),
    );
    if let Some(t) = &inv.cluster.api_token_file {
        report("API token".into(), t, readable(t));
    }
    report("CA".into(), &inv.tls.ca, readable(&inv.tls.ca));
    for n in &inv.nodes {
        report(
            format!("node {} certificate", n.id),
            &n.cert,
            readable(&n.cert),
        );
        report(format!("node {} key", n.id), &n.key, readable(&n.key));
    }
    let local: Vec<String> = inv.local_nodes().iter().map(|n| n.id.to_string()).collect();
    println!(
        "  nodes for this host (ssi-dp up): {}",
        if local.is_empty() {
            "none".to_string()
        } else {
            local.join(", ")
        }
    );
    if missing > 0 {
        println!(
            "{}: valid, but {missing} file(s) it names cannot be used: create them (`ssi-dp up \
             --init {}` makes a trial cluster's secret, token and certificates; `ssi-dp certs` \
             makes certificates) or fix the paths",
            file.display(),
            file.display()
        );
        return exit::FAILED;
    }
    println!("{}: ok", file.display());
    exit::OK
}
