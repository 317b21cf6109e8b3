//! trackctl: trackstore's command-line tools. Today the offline commands on a data directory; the HTTP
//! client commands (ingest, order, events, range, tail...) come with the server.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use trackstore_engine::{Engine, EngineOptions};

#[derive(Parser, Debug)]
#[command(name = "trackctl", version, about = "trackstore command-line tools")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check a stopped store offline: every index entry against the log, order states against a
    /// recomputation from the events, gap-free LSNs, decodable values. Exit code 1 on any problem.
    Verify {
        /// The data directory (as given to `trackstore --data`).
        data_dir: PathBuf,
    },
    /// Write a consistent copy of a stopped store to DEST, which `trackstore --data DEST` opens.
    Checkpoint { data_dir: PathBuf, dest: PathBuf },
}

fn open(data_dir: &Path) -> Result<Engine> {
    anyhow::ensure!(
        trackstore_engine::db_path(data_dir).exists(),
        "{} holds no store (no db/ directory)",
        data_dir.display()
    );
    Engine::open(data_dir, EngineOptions::default()).with_context(|| {
        format!(
            "open the store in {} (is a server running on it?)",
            data_dir.display()
        )
    })
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("trackctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Verify { data_dir } => {
            let engine = open(&data_dir)?;
            let report = engine.verify().context("read the store")?;
            println!(
                "checked {} events and {} orders",
                report.events, report.orders
            );
            if report.is_ok() {
                println!("OK: no problem found");
                return Ok(ExitCode::SUCCESS);
            }
            for p in &report.problems {
                println!("PROBLEM: {p}");
            }
            let unlisted = report.problem_count - report.problems.len() as u64;
            if unlisted > 0 {
                println!("... and {unlisted} more");
            }
            println!("FAILED: {} problem(s)", report.problem_count);
            Ok(ExitCode::from(1))
        }
        Cmd::Checkpoint { data_dir, dest } => {
            anyhow::ensure!(
                !trackstore_engine::db_path(&dest).exists(),
                "{} already holds a store",
                dest.display()
            );
            let engine = open(&data_dir)?;
            engine.checkpoint(&dest).context("write the checkpoint")?;
            println!(
                "checkpoint of {} events written to {}",
                engine.stats().events,
                dest.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
