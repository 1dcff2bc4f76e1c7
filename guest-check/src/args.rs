//! The command line, parsed by hand (no crates): options, their limits, and the messages for
//! bad usage.

use crate::cpulist;
use crate::sys::MAX_CPUS;

/// One-line usage, printed with every usage error and for `--help`.
pub const USAGE: &str = "usage: ssi-guest-check --expect-cpus N [--expect-node ID=CPULIST]... \
                         [--rounds R] [--measure N] [--timeout SECS] [--status-port] \
                         [--poweroff]";

/// Most rounds accepted (keeps every sum the checks make far from overflow).
const MAX_ROUNDS: u64 = 10_000_000;
/// Most samples per measurement accepted.
const MAX_SAMPLES: u64 = 100_000;
/// Longest watchdog timeout accepted, in seconds (a day).
const MAX_TIMEOUT_S: u64 = 86_400;

/// What to check and how to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opts {
    /// Online CPUs the guest must see.
    pub expect_cpus: usize,
    /// NUMA nodes that must exist, with exactly these CPUs; when any are given, exactly
    /// these nodes must exist.
    pub expect_nodes: Vec<(u32, Vec<usize>)>,
    /// Size of the work.
    pub rounds: u64,
    /// Samples per measurement after the checks (IPI round trips, timer lateness); 0 = none.
    pub measure: u64,
    /// Seconds before the watchdog fails the run.
    pub timeout_s: u64,
    /// Write the status to I/O port 0x513 after the verdict.
    pub status_port: bool,
    /// Power the machine off at the end.
    pub poweroff: bool,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the checks.
    Run(Opts),
    /// Print the usage and exit.
    Help,
}

/// Parses the arguments after the program name. Options take their value as the next
/// argument or after `=` (`--rounds 50`, `--rounds=50`).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut it = args.into_iter();
    let mut expect_cpus = None;
    let mut opts = Opts {
        expect_cpus: 0,
        expect_nodes: Vec::new(),
        rounds: 2000,
        measure: 0,
        timeout_s: 600,
        status_port: false,
        poweroff: false,
    };
    while let Some(arg) = it.next() {
        let (flag, mut inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let mut value = || {
            inline
                .take()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--expect-cpus" => {
                expect_cpus = Some(number(&flag, &value()?, 1, MAX_CPUS as u64)? as usize)
            }
            "--expect-node" => {
                let (id, cpus) = node(&value()?)?;
                if opts.expect_nodes.iter().any(|(n, _)| *n == id) {
                    return Err(format!("--expect-node {id} is given twice"));
                }
                opts.expect_nodes.push((id, cpus));
            }
            "--rounds" => opts.rounds = number(&flag, &value()?, 1, MAX_ROUNDS)?,
            "--measure" => opts.measure = number(&flag, &value()?, 1, MAX_SAMPLES)?,
            "--timeout" => opts.timeout_s = number(&flag, &value()?, 1, MAX_TIMEOUT_S)?,
            "--status-port" | "--poweroff" | "--help" | "-h" if inline.is_some() => {
                return Err(format!("{flag} takes no value"))
            }
            "--status-port" => opts.status_port = true,
            "--poweroff" => opts.poweroff = true,
            "--help" | "-h" => return Ok(Command::Help),
            _ => return Err(format!("unknown argument `{flag}`")),
        }
    }
    opts.expect_cpus = expect_cpus.ok_or("--expect-cpus N is required")?;
    opts.expect_nodes.sort_unstable();
    Ok(Command::Run(opts))
}

/// A whole number in `min..=max`.
fn number(flag: &str, text: &str, min: u64, max: u64) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{flag} {n} is out of range ({min} to {max})")),
        Err(_) => Err(format!("{flag} wants a whole number, got `{text}`")),
    }
}

/// An `--expect-node` value: `ID=CPULIST` (an empty list is a node without CPUs).
fn node(text: &str) -> Result<(u32, Vec<usize>), String> {
    let (id, list) = text
        .split_once('=')
        .ok_or_else(|| format!("--expect-node wants ID=CPULIST (like 0=0,2), got `{text}`"))?;
    let id = id
        .parse::<u32>()
        .map_err(|_| format!("--expect-node: `{id}` is not a node number"))?;
    let cpus = cpulist::parse(list).map_err(|e| format!("--expect-node {id}: {e}"))?;
    Ok((id, cpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Command, String> {
        parse(line.split_whitespace().map(String::from))
    }

    #[test]
    fn parses_a_full_command_line() {
        let got = parse_str(
            "--expect-cpus 4 --expect-node 1=1,3 --expect-node=0=0,2 --rounds=50 --timeout 30 \
             --measure 20 --status-port --poweroff",
        );
        assert_eq!(
            got,
            Ok(Command::Run(Opts {
                expect_cpus: 4,
                expect_nodes: vec![(0, vec![0, 2]), (1, vec![1, 3])],
                rounds: 50,
                measure: 20,
                timeout_s: 30,
                status_port: true,
                poweroff: true,
            }))
        );
        let Ok(Command::Run(defaults)) = parse_str("--expect-cpus 1") else {
            panic!("minimal command line refused");
        };
        assert_eq!(
            (defaults.rounds, defaults.measure, defaults.timeout_s),
            (2000, 0, 600)
        );
        assert_eq!(parse_str("--help"), Ok(Command::Help));
    }

    #[test]
    fn rejects_bad_usage_with_a_reason() {
        let cases = [
            ("", "--expect-cpus N is required"),
            ("--rounds 5", "--expect-cpus N is required"),
            ("--expect-cpus", "--expect-cpus needs a value"),
            ("--expect-cpus four", "wants a whole number"),
            ("--expect-cpus 0", "out of range"),
            ("--expect-cpus 2 --rounds 0", "out of range"),
            ("--expect-cpus 2 --timeout 0", "out of range"),
            ("--expect-cpus 2 --measure 0", "out of range"),
            ("--expect-cpus 2 --expect-node 0", "wants ID=CPULIST"),
            ("--expect-cpus 2 --expect-node x=0", "not a node number"),
            ("--expect-cpus 2 --expect-node 0=2-1", "backwards"),
            (
                "--expect-cpus 2 --expect-node 0=0 --expect-node 0=1",
                "given twice",
            ),
            ("--expect-cpus 2 --poweroff=yes", "takes no value"),
            ("--expect-cpus 2 --verbose", "unknown argument `--verbose`"),
        ];
        for (line, want) in cases {
            match parse_str(line) {
                Err(e) => assert!(e.contains(want), "`{line}`: got `{e}`, wanted `{want}`"),
                Ok(c) => panic!("`{line}` was accepted: {c:?}"),
            }
        }
    }
}
