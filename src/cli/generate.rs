//! `smtp-relay generate man|completions`: man pages and shell completions made from the clap
//! definitions themselves, so they can never drift from the CLI. Packaging runs it at build
//! time; nothing here touches the configuration or the state directory.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{CommandFactory, Subcommand};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Write one man page per command (smtp-relay.1, smtp-relay-project.1, …) into a directory.
    Man {
        /// Directory to write the pages to (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions { shell: Shell },
}

pub fn run(cmd: &GenerateCommand) -> anyhow::Result<()> {
    match cmd {
        GenerateCommand::Man { out } => man_pages(out),
        GenerateCommand::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "smtp-relay", &mut script);
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            match out.write_all(&script).and_then(|()| out.flush()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => other.context("cannot write the completion script"),
            }
        }
    }
}

fn man_pages(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    clap_mangen::generate_to(Cli::command(), out)
        .with_context(|| format!("cannot write man pages to {}", out.display()))?;
    Ok(())
}
