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
    /// Save a running process tree to an image file. It keeps running unless --kill is given.
    Checkpoint(CheckpointArgs),
    /// Run a program with the interceptor preloaded (inherited by its children), so that its
    /// checkpoints are flushed and consistent and its ids survive restores.
    Run {
        /// The application id (default: PROGRAM-PID).
        #[arg(long)]
        id: Option<String>,
        /// Where applications register (default: $CKPT_RUNTIME_DIR, $XDG_RUNTIME_DIR/ckpt,
        /// /run/ckpt for root, /tmp/ckpt-UID).
        #[arg(long)]
        runtime_dir: Option<PathBuf>,
        /// The program and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// List the applications started with `ckpt run` and their processes.
    List {
        /// The runtime directory (see `ckpt run`).
        #[arg(long)]
        runtime_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recreate a process tree from an image. Prints the root's pid.
    Restore(RestoreArgs),
    /// Show what an image holds (after verifying every checksum).
    Inspect {
        /// The image file.
        image: PathBuf,
        /// Print the whole manifest as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct CheckpointArgs {
    /// The process id: it and every descendant are taken (the tree rooted at it).
    #[arg(required_unless_present = "app", conflicts_with = "app")]
    pid: Option<i32>,
    /// Take every process of an application started with `ckpt run` (with their
    /// descendants), including ones that were reparented.
    #[arg(long)]
    app: Option<String>,
    /// Where `ckpt run` registered the application (see `ckpt run`).
    #[arg(long, requires = "app")]
    runtime_dir: Option<PathBuf>,
    /// The image file to write (default: ckpt-PID.img).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Kill the process (the whole tree) once the image is safely written.
    #[arg(long)]
    kill: bool,
    /// Record TCP connections as closed instead of carrying them: no network lock; after a
    /// restore each is a socket whose peer has reset it (the next read fails with
    /// ECONNRESET, then reads return end of file). Without --kill the original connections
    /// are left alone; with it they end as the processes do.
    #[arg(long)]
    tcp_close: bool,
    /// Write every page while the tree is frozen. By default a checkpoint without --kill
    /// stops the tree only to take a copy-on-write snapshot of each process's private
    /// memory and writes the pages from it while the tree runs on.
    #[arg(long, conflicts_with = "kill")]
    no_snapshot: bool,
    /// Take only the process itself, not its descendants.
    #[arg(long)]
    single: bool,
    /// Compress the image's sections with zstd at LEVEL (1-22, default 3), on every CPU.
    #[arg(long, value_name = "LEVEL", num_args = 0..=1, require_equals = true,
          default_missing_value = "3", value_parser = clap::value_parser!(i32).range(1..=22))]
    compress: Option<i32>,
    /// Print the statistics as JSON.
    #[arg(long)]
    json: bool,
    /// Take the plain path even if the process runs under `ckpt run` (no flushing, ids
    /// not virtualized).
    #[arg(long)]
    plain: bool,
    /// Seconds a single-threaded program may take to flush its stdio buffers (a blocked
    /// output holds it up; it is then saved mid-flush and finishes later).
    #[arg(long, default_value_t = 10.0, value_parser = parse_secs)]
    flush_timeout: f64,
    /// Carry connections to processes outside the tree instead of refusing them. `unix`: a
    /// UNIX stream or seqpacket socket whose peer is outside is connected again to its peer's
    /// name on restore (a new connection: the protocol starts over, bytes queued from the old
    /// one are dropped), or, if the peer is unnamed, comes back with its peer gone (end of
    /// file after what was queued). A datagram socket connected to a named socket outside
    /// (/dev/log) is connected again by default.
    #[arg(long, value_enum, value_name = "KIND")]
    external: Vec<External>,
}

/// What `--external` carries.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum External {
    /// UNIX sockets whose peer is outside the tree.
    Unix,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// The image file.
    image: PathBuf,
    /// Wait for the restored process and exit with its status.
    #[arg(long)]
    wait: bool,
    /// Restore into a new pid namespace (each process with its own pid inside), even if
    /// every pid is free here. A tree whose pids are taken goes there by itself.
    #[arg(long)]
    pidns: bool,
    /// Restore into a new IPC namespace, where the SysV objects (shared memory, semaphore
    /// sets, message queues) are sure to get their ids back; in this one they keep their
    /// keys and get their ids back where no other object has taken them.
    #[arg(long)]
    ipcns: bool,
    /// Restore as root an image that a user other than root and the image's own users owns,
    /// or that group or others may write (refused otherwise: such an image could make root
    /// run anything).
    #[arg(long)]
    trust_image: bool,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("not a number of seconds between 0 and 3600: {s}")),
    }
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("not a number: {s} ({e})"))
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Info {
            pid,
            read,
            len,
            json,
        } => {
            let dev = Device::open(&cli.device)?;
            let report = ckpt::info::info(&dev, pid, read.unwrap_or(0), len)?;
            print_json_or(json, &report, || report.to_string())?;
        }
        Command::Checkpoint(a) => return checkpoint(&cli.device, a),
        Command::Restore(a) => return restore(&cli.device, a),
        Command::Run {
            id,
            runtime_dir,
            command,
        } => {
            let opts = ckpt::run::RunOptions {
                id,
                runtime_dir,
                argv: command,
            };
            match ckpt::run::run(opts) {
                Ok(never) => match never {},
                Err(e) => return Err(e.into()),
            }
        }
        Command::List { runtime_dir, json } => {
            let dir = runtime_dir.unwrap_or_else(ckpt::run::default_runtime_dir);
            let apps = ckpt::list::list(&dir);
            print_json_or(json, &apps, || ckpt::list::text(&apps))?;
        }
        Command::Inspect { image, json } => {
            let img = ckpt::manifest::Image::open(&image)?;
            print_json_or(json, &img.manifest, || ckpt::inspect::summary(&img))?;
        }
    }
    Ok(0)
}

/// Whether fd `fd` of ours is open.
fn fd_is_open(fd: i32) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok()
}

/// Prints `value` as JSON, or the text `text` makes.
fn print_json_or<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        let out = serde_json::to_string_pretty(value).context("encoding JSON")?;
        println!("{out}");
    } else {
        print!("{}", text());
    }
    Ok(())
}

fn checkpoint(device: &std::path::Path, a: CheckpointArgs) -> anyhow::Result<i32> {
    let roots = match (a.pid, &a.app) {
        (Some(pid), _) => vec![pid],
        (None, Some(id)) => {
            let dir = a.runtime_dir.unwrap_or_else(ckpt::run::default_runtime_dir);
            ckpt::list::app_roots(&dir, id).map_err(anyhow::Error::msg)?
        }
        (None, None) => anyhow::bail!("give a process id or --app ID"),
    };
    let pid = roots[0];
    let output = a
        .output
        .unwrap_or_else(|| PathBuf::from(format!("ckpt-{pid}.img")));
    let opts = ckpt::checkpoint::Options {
        pid,
        output: &output,
        kill: a.kill,
        tcp_close: a.tcp_close,
        snapshot: !a.kill && !a.no_snapshot,
        device,
        plain: a.plain,
        single: a.single,
        also: roots[1..].to_vec(),
        flush_timeout: std::time::Duration::from_secs_f64(a.flush_timeout),
        external_unix: a.external.contains(&External::Unix),
        compress: a.compress,
    };
    let stats = ckpt::checkpoint::checkpoint(&opts)?;
    print_json_or(a.json, &stats, || {
        let killed = if a.kill { " (killed)" } else { "" };
        format!(
            "checkpointed process {pid} to {}{killed}\n{}",
            output.display(),
            ckpt::stats::stats_text(&stats)
        )
    })?;
    Ok(0)
}

fn restore(device: &std::path::Path, a: RestoreArgs) -> anyhow::Result<i32> {
    let opts = ckpt::restore::Options {
        pidns: a.pidns,
        ipcns: a.ipcns,
        trust_image: a.trust_image,
    };
    let r = ckpt::restore::restore(&a.image, device, &opts)?;
    if r.processes > 1 {
        eprintln!("ckpt: restored a tree of {} processes", r.processes);
    }
    if let Some(map) = &r.pidns {
        let outside: Vec<String> = map.iter().map(|(o, k)| format!("{o} as {k}")).collect();
        eprintln!(
            "ckpt: restored into a new pid namespace (with their own pids inside; outside: {})",
            outside.join(", ")
        );
    } else if r.pid != r.original_pid {
        eprintln!(
            "ckpt: pid {} was taken; the process was restored as pid {}",
            r.original_pid, r.pid
        );
    }
    println!("{}", r.pid);
    if a.wait {
        use std::io::Write;
        std::io::stdout().flush().ok();
        return Ok(ckpt::restore::wait_exit_status(r.wait_pid)?);
    }
    Ok(0)
}

fn main() -> ExitCode {
    // Started with stdio closed, our own files would land on 0-2 and be taken for the
    // restored process's inherited stdio: fill them with /dev/null first.
    for fd in 0..3 {
        if !fd_is_open(fd) {
            // The lowest free number: this one. Kept open for good.
            let _ = std::fs::File::open("/dev/null").map(std::os::fd::IntoRawFd::into_raw_fd);
        }
    }
    // An image may hold fds up to the hard limit, and a restore holds every process's mapped
    // files and shared objects at once: the soft limit (often 1024) is not enough.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let cli = Cli::parse();
    // A checkpoint works in a child process that undoes everything if this one is killed.
    if matches!(cli.command, Command::Checkpoint(_)) {
        return ExitCode::from(ckpt::worker::run_in_worker(|| report(run(cli))));
    }
    ExitCode::from(report(run(cli)))
}

/// The exit code of a command's result, its error (if any) printed.
fn report(result: anyhow::Result<i32>) -> u8 {
    match result {
        Ok(code) => code.clamp(0, 255) as u8,
        Err(e) => {
            // Most of our errors already name their cause in their own message: print each
            // cause of the chain only once.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("ckpt: {msg}");
            1
        }
    }
}
