//! `ssi-dp completions SHELL` and `ssi-dp man [DIR]`: shell completion scripts and man pages
//! generated from the command line's own definition ([`super::Cli`], through clap_complete
//! and clap_mangen), so that they list exactly the subcommands and flags this binary takes.
//! docs/operations.md says where to install them.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory};

use super::{exit, Cli};

/// The name the scripts complete and the pages describe.
const BIN: &str = "ssi-dp";

/// Arguments of `ssi-dp completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write the script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Arguments of `ssi-dp man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write ssi-dp.1 and one page per subcommand (ssi-dp-demo.1, ...) into this directory
    /// (created if missing) instead of printing ssi-dp.1 to standard output.
    pub dir: Option<PathBuf>,
}

/// Why the pages or the script could not be written.
#[derive(Debug, thiserror::Error)]
enum DocsError {
    #[error("writing to standard output: {0}")]
    Stdout(io::Error),
    #[error("creating the directory {0}: {1}: pass a directory you can write to")]
    CreateDir(PathBuf, io::Error),
    #[error("writing the man pages into {0}: {1}: pass a directory you can write to")]
    Pages(PathBuf, io::Error),
}

/// The command line's definition as the pages describe it: no `help` subcommand (each page
/// documents --help instead).
fn command() -> clap::Command {
    Cli::command().disable_help_subcommand(true)
}

/// Runs `ssi-dp completions`.
pub fn completions(a: CompletionsArgs) -> i32 {
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), BIN, &mut script);
    if a.shell == clap_complete::Shell::Bash {
        script = fix_bash(&script);
    }
    report(write_stdout(&script))
}

/// clap_complete's bash script (4.6.12 and before) names the case arm of each subcommand of a
/// binary with a hyphen in its name differently from the state its loop computes
/// (`ssi__subcmd__dp__subcmd__leave` against `ssi__dp__subcmd__leave`; clap issue #6421), so
/// no subcommand's flags ever complete. This respells the arms the way the loop does; once
/// clap spells them right it changes nothing.
fn fix_bash(script: &[u8]) -> Vec<u8> {
    let wrong = BIN.replace('-', "__subcmd__");
    let right = BIN.replace('-', "__");
    String::from_utf8_lossy(script)
        .replace(&wrong, &right)
        .into_bytes()
}

/// Runs `ssi-dp man`.
pub fn man(a: ManArgs) -> i32 {
    report(match a.dir {
        None => render().and_then(|page| write_stdout(&page)),
        Some(dir) => write_pages(&dir).and_then(|files| {
            let list: String = files.iter().map(|f| format!("{}\n", f.display())).collect();
            write_stdout(list.as_bytes())
        }),
    })
}

fn report(r: Result<(), DocsError>) -> i32 {
    match r {
        Ok(()) => exit::OK,
        // A closed pipe (`ssi-dp man | head`) is the reader's choice, not a failure.
        Err(DocsError::Stdout(e)) if e.kind() == io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("ssi-dp: {e}");
            exit::FAILED
        }
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), DocsError> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(DocsError::Stdout)
}

/// One page, its footer naming this build (subcommands have no version of their own).
fn page(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .source(format!("{BIN} {}", control::build::VERSION_LINE))
        .manual("ssi-dp manual")
}

/// ssi-dp.1, in roff.
fn render() -> Result<Vec<u8>, DocsError> {
    let mut out = Vec::new();
    page(command())
        .render(&mut out)
        .map_err(DocsError::Stdout)?;
    Ok(out)
}

/// Writes ssi-dp.1 and a page per (nested) subcommand into `dir`; returns their paths.
fn write_pages(dir: &Path) -> Result<Vec<PathBuf>, DocsError> {
    std::fs::create_dir_all(dir).map_err(|e| DocsError::CreateDir(dir.to_owned(), e))?;
    let mut cmd = command();
    cmd.build(); // gives each subcommand its page name, "ssi-dp-demo"
    let mut files = Vec::new();
    write_page(cmd, dir, &mut files).map_err(|e| DocsError::Pages(dir.to_owned(), e))?;
    Ok(files)
}

fn write_page(cmd: clap::Command, dir: &Path, files: &mut Vec<PathBuf>) -> io::Result<()> {
    files.push(page(cmd.clone()).generate_to(dir)?);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub.clone(), dir, files)?;
    }
    Ok(())
}
