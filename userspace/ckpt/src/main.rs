//! The `ckpt` command line.

use anyhow::Context;
use ckpt::device::{Device, DEFAULT_DEVICE};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ckpt",
    version,
    about = "Checkpoint and restore of Linux processes"
)]
struct Cli {
    /// The ckpt device.
    #[arg(long, global = true, env = "CKPT_DEVICE", default_value = DEFAULT_DEVICE)]
    device: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what the kernel module sees of a process: threads, VMAs, mapped bytes, and
    /// optionally bytes of its memory.
    Info {
        /// The process id.
        pid: i32,
        /// Also read memory at this address (decimal or 0x-prefixed hex).
        #[arg(long, value_parser = parse_u64, requires = "len")]
        read: Option<u64>,
        /// How many bytes to read with --read (at most 1 MiB).
        #[arg(long, default_value_t = 0)]
        len: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("not a number: {s} ({e})"))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info {
            pid,
            read,
            len,
            json,
        } => {
            let dev = Device::open(&cli.device)?;
            let report = ckpt::info::info(&dev, pid, read.unwrap_or(0), len)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("encoding JSON")?
                );
            } else {
                print!("{report}");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ckpt: {e:#}");
            ExitCode::FAILURE
        }
    }
}
