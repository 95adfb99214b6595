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
    Info(Deferred<InfoArgs>),
    /// Save a running process tree to an image file. It keeps running unless --kill is given.
    Checkpoint(Deferred<CheckpointArgs>),
    /// Run a program with the interceptor preloaded (inherited by its children), so that its
    /// checkpoints are flushed and consistent and its ids survive restores.
    Run(Deferred<RunArgs>),
    /// List the applications started with `ckpt run` and their processes.
    List(Deferred<ListArgs>),
    /// Recreate a process tree from an image. Prints the root's pid.
    Restore(Deferred<RestoreArgs>),
    /// Print the crontab line (or with --systemd the service and timer units) that runs
    /// `ckpt checkpoint ... --dir DIR` at an interval; --install installs it.
    Schedule(Deferred<ScheduleArgs>),
    /// Show what an image holds (after verifying every checksum, of its parent images
    /// too).
    Inspect(Deferred<InspectArgs>),
}

/// A subcommand's arguments, built only when that subcommand is the one given
/// (`clap::Command::defer`). Every command line used to build every subcommand's
/// arguments: in the emulated guest, running that much code once costs 15-20 ms of each
/// ckpt run (its translation, not its work), as much as a tiny process's restore is behind
/// CRIU's.
struct Deferred<T>(T);

impl<T: clap::FromArgMatches> clap::FromArgMatches for Deferred<T> {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(m).map(Deferred)
    }
    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(m)
    }
}

impl<T: clap::Args> clap::Args for Deferred<T> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.defer(T::augment_args)
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        cmd.defer(T::augment_args_for_update)
    }
}

#[derive(clap::Args)]
struct InfoArgs {
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
}

#[derive(clap::Args)]
struct RunArgs {
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
}

#[derive(clap::Args)]
struct ListArgs {
    /// The runtime directory (see `ckpt run`).
    #[arg(long)]
    runtime_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct InspectArgs {
    /// The image file, or a directory of periodic checkpoints (its latest).
    image: PathBuf,
    /// Print the whole manifest as JSON.
    #[arg(long)]
    json: bool,
    /// Check the MAC of the image (and of its parents) with the key in FILE (see
    /// `ckpt checkpoint --key`).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CheckpointArgs {
    /// The process id: it and every descendant are taken (the tree rooted at it).
    #[arg(required_unless_present_any = ["app", "pidfile"], conflicts_with_all = ["app", "pidfile"])]
    pid: Option<i32>,
    /// Read the process id from this file (as a daemon writes it; `ckpt restore --pidfile`
    /// writes the restored one), so that a crontab line keeps working after a restore.
    #[arg(long, conflicts_with = "app")]
    pidfile: Option<PathBuf>,
    /// Take every process of an application started with `ckpt run` (with their
    /// descendants), including ones that were reparented.
    #[arg(long)]
    app: Option<String>,
    /// Where `ckpt run` registered the application (see `ckpt run`).
    #[arg(long, requires = "app")]
    runtime_dir: Option<PathBuf>,
    /// The image file to write (default: ckpt-PID.img).
    #[arg(short, long, conflicts_with = "dir")]
    output: Option<PathBuf>,
    /// Periodic checkpoints (what a crontab line runs): write the image into this directory,
    /// named by the UTC time (ckpt-YYYYMMDDTHHMMSSZ.img), point DIR/latest at it, delete
    /// the images --keep no longer needs, log one line to DIR/ckpt.log. A run that finds
    /// the previous one still going skips (exit 0) and logs that it did.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// With --dir: how many restorable points to keep (images they depend on are kept too).
    #[arg(long, requires = "dir", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    keep: u32,
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
    /// Print the statistics as JSON (no progress bar either).
    #[arg(long)]
    json: bool,
    /// No progress bar. Without this, a checkpoint writing more than 64 MiB of pages shows
    /// one on stderr when stderr is a terminal (bytes written and to write, throughput,
    /// time left).
    #[arg(long)]
    no_progress: bool,
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
    /// Incremental: store only the pages changed since this image, the last checkpoint of
    /// the same process; the others stay in it (and its own parents), which the new image
    /// names. Restoring it needs the whole chain.
    #[arg(long, value_name = "IMAGE", conflicts_with = "dir")]
    parent: Option<PathBuf>,
    /// With --dir: chain each image to the previous one (--parent), storing only the pages
    /// changed since; a full image when the chain is --full-every long, or when the previous
    /// image cannot be the parent (the program was restored since, say).
    #[arg(long, requires = "dir")]
    incremental: bool,
    /// With --incremental: a chain's most images, its full one included.
    #[arg(long, requires = "incremental", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    full_every: u32,
    /// Give the image a MAC (keyed BLAKE3 over every byte) with the key in FILE (at least 16
    /// bytes, readable by its owner only: `head -c 32 /dev/urandom > FILE; chmod 600 FILE`),
    /// for `ckpt restore --key FILE` to refuse an image someone else wrote or changed.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

/// What `--external` carries.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum External {
    /// UNIX sockets whose peer is outside the tree.
    Unix,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// The image file, or a directory of periodic checkpoints (its latest is restored).
    image: PathBuf,
    /// Write the restored root's pid (as seen here) to this file, for the next
    /// `ckpt checkpoint --pidfile`.
    #[arg(long)]
    pidfile: Option<PathBuf>,
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
    /// Check the MAC of the image and of every parent image with the key in FILE (see
    /// `ckpt checkpoint --key`): an image without a MAC, or with another key's, is refused.
    /// Without --key, an image's MAC is not checked (a warning says so). With --lazy, the
    /// whole image is read for its MAC before the program runs.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Start the program before its memory is back: its private memory is placed as it
    /// touches it, and the rest in the background, by a page server that exits once all
    /// is in (see README, "Lazy restore").
    #[arg(long)]
    lazy: bool,
    /// No progress bar. Without this, a restore reading more than 64 MiB of image shows one
    /// on stderr when stderr is a terminal, while it verifies the image (and while it
    /// decompresses a compressed one's pages).
    #[arg(long)]
    no_progress: bool,
}

#[derive(clap::Args)]
struct ScheduleArgs {
    /// How often: 10m, 1h, 1day. Cron runs every N minutes (N dividing 60), every N hours
    /// (N dividing 24) or daily; a systemd timer at any interval.
    #[arg(long, value_parser = humantime::parse_duration)]
    every: std::time::Duration,
    /// A systemd service and timer instead of a crontab line.
    #[arg(long)]
    systemd: bool,
    /// Install it: the line into your crontab (replacing an earlier one of the same name),
    /// or the units (then `systemctl enable --now NAME.timer`).
    #[arg(long)]
    install: bool,
    /// Where --systemd --install writes the units (default: /etc/systemd/system for root,
    /// ~/.config/systemd/user for others).
    #[arg(long, requires = "systemd")]
    unit_dir: Option<PathBuf>,
    /// The schedule's name (default: the --app ID, else the directory's name).
    #[arg(long)]
    name: Option<String>,
    /// `ckpt checkpoint`'s arguments, --dir among them.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    checkpoint: Vec<String>,
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
        Command::Info(Deferred(a)) => {
            let dev = Device::open(&cli.device)?;
            let report = ckpt::info::info(&dev, a.pid, a.read.unwrap_or(0), a.len)?;
            print_json_or(a.json, &report, || report.to_string())?;
        }
        Command::Checkpoint(Deferred(a)) => return checkpoint(&cli.device, a),
        Command::Restore(Deferred(a)) => return restore(&cli.device, a),
        Command::Schedule(Deferred(a)) => return schedule(&cli.device, a),
        Command::Run(Deferred(a)) => {
            let opts = ckpt::run::RunOptions {
                id: a.id,
                runtime_dir: a.runtime_dir,
                argv: a.command,
            };
            match ckpt::run::run(opts) {
                Ok(never) => match never {},
                Err(e) => return Err(e.into()),
            }
        }
        Command::List(Deferred(a)) => {
            let dir = a.runtime_dir.unwrap_or_else(ckpt::run::default_runtime_dir);
            let apps = ckpt::list::list(&dir);
            print_json_or(a.json, &apps, || ckpt::list::text(&apps))?;
        }
        Command::Inspect(Deferred(a)) => {
            let key = load_key(a.key.as_deref())?;
            let chain = ckpt::chain::Chain::open_keyed(&image_or_latest(&a.image)?, key.as_ref())?;
            let img = chain.image();
            print_json_or(a.json, &img.manifest, || ckpt::inspect::summary(&chain))?;
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
    let roots = match (a.pid, &a.app, &a.pidfile) {
        (Some(pid), _, _) => vec![pid],
        (None, Some(id), _) => {
            let dir = a
                .runtime_dir
                .clone()
                .unwrap_or_else(ckpt::run::default_runtime_dir);
            ckpt::list::app_roots(&dir, id).map_err(anyhow::Error::msg)?
        }
        (None, None, Some(file)) => vec![read_pidfile(file)?],
        (None, None, None) => anyhow::bail!("give a process id, --app ID or --pidfile FILE"),
    };
    // Read (and its permissions checked) before any process is stopped.
    let key = load_key(a.key.as_deref())?;
    let take = |output: &std::path::Path, parent: Option<&std::path::Path>| {
        let opts = ckpt::checkpoint::Options {
            pid: roots[0],
            output,
            kill: a.kill,
            tcp_close: a.tcp_close,
            snapshot: !a.kill && !a.no_snapshot,
            device,
            plain: a.plain,
            single: a.single,
            also: roots[1..].to_vec(),
            flush_timeout: std::time::Duration::from_secs_f64(a.flush_timeout),
            external_unix: a.external.contains(&External::Unix),
            parent,
            compress: a.compress,
            key: key.as_ref(),
            progress: !a.json && !a.no_progress,
        };
        ckpt::checkpoint::checkpoint(&opts)
    };
    let pid = roots[0];
    if let Some(dir) = &a.dir {
        let opts = ckpt::periodic::Options {
            dir: dir.clone(),
            keep: a.keep as usize,
            incremental: a.incremental,
            full_every: a.full_every as usize,
        };
        let parent_of = |name: &str| ckpt::periodic::parent_in(dir, name);
        let outcome =
            match ckpt::periodic::run(&opts, &parent_of, |out, parent| Ok(take(out, parent)?)) {
                Err(e) if is_busy(&e) => {
                    eprintln!("ckpt: {e}");
                    return Ok(0);
                }
                r => r?,
            };
        print_json_or(a.json, &outcome, || {
            checkpoint_text(pid, &outcome.image, a.kill, &outcome.stats)
        })?;
        for w in &outcome.warnings {
            eprintln!("ckpt: warning: {w}");
        }
        return Ok(0);
    }
    let output = a
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("ckpt-{pid}.img")));
    let stats = take(&output, a.parent.as_deref())?;
    print_json_or(a.json, &stats, || {
        checkpoint_text(pid, &output, a.kill, &stats)
    })?;
    Ok(0)
}

/// The MAC key in `file`, if one is given (`--key`).
fn load_key(file: Option<&std::path::Path>) -> anyhow::Result<Option<ckpt::image::MacKey>> {
    Ok(file.map(ckpt::image::MacKey::load).transpose()?)
}

/// `path`, or the latest image if it is a directory of periodic checkpoints.
fn image_or_latest(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    match path.is_dir() {
        true => Ok(ckpt::periodic::latest_image(path)?),
        false => Ok(path.to_path_buf()),
    }
}

/// What `ckpt checkpoint` prints of a checkpoint of `pid` into `image`.
fn checkpoint_text(
    pid: i32,
    image: &std::path::Path,
    kill: bool,
    stats: &ckpt::stats::Stats,
) -> String {
    let killed = if kill { " (killed)" } else { "" };
    format!(
        "checkpointed process {pid} to {}{killed}\n{}",
        image.display(),
        ckpt::stats::stats_text(stats)
    )
}

/// Whether a periodic run skipped because the previous one still runs.
fn is_busy(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ckpt::periodic::PeriodicError>(),
        Some(ckpt::periodic::PeriodicError::Busy { .. })
    )
}

/// The pid a pidfile holds (its first line), checked to be a running process.
fn read_pidfile(file: &std::path::Path) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the pidfile {}", file.display()))?;
    let pid: i32 = text
        .lines()
        .next()
        .map(str::trim)
        .and_then(|l| l.parse().ok())
        .filter(|&p| p > 0)
        .with_context(|| format!("the pidfile {} holds no process id", file.display()))?;
    if !ckpt::list::alive(pid) {
        anyhow::bail!(
            "the pidfile {} names process {pid}, which is not running",
            file.display()
        );
    }
    Ok(pid)
}

/// Writes `pid` to `file` atomically (a temporary file renamed over it).
fn write_pidfile(file: &std::path::Path, pid: i32) -> anyhow::Result<()> {
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    let tmp = file.with_file_name(format!(".{name}.{}", std::process::id()));
    std::fs::write(&tmp, format!("{pid}\n"))
        .and_then(|()| std::fs::rename(&tmp, file))
        .with_context(|| format!("writing the pidfile {}", file.display()))
}

/// Options of `ckpt checkpoint` that take a path: made absolute in a schedule.
const PATH_OPTIONS: [&str; 5] = ["--dir", "--pidfile", "--runtime-dir", "--output", "--key"];

/// `args` with the values of [`PATH_OPTIONS`] made absolute (cron runs in the home directory).
fn absolute_paths(args: &[String]) -> anyhow::Result<Vec<String>> {
    let cwd = std::env::current_dir().context("the current directory")?;
    let abs = |v: &str| cwd.join(v).to_string_lossy().into_owned();
    let mut out = Vec::with_capacity(args.len());
    let mut path_next = false;
    for a in args {
        if path_next {
            out.push(abs(a));
            path_next = false;
        } else if let Some((opt, v)) = a.split_once('=').filter(|(o, _)| PATH_OPTIONS.contains(o)) {
            out.push(format!("{opt}={}", abs(v)));
        } else {
            path_next = PATH_OPTIONS.contains(&a.as_str()) || a == "-o";
            out.push(a.clone());
        }
    }
    Ok(out)
}

fn schedule(device: &std::path::Path, a: ScheduleArgs) -> anyhow::Result<i32> {
    use ckpt::schedule as sched;
    let args = absolute_paths(&a.checkpoint)?;
    let parsed = Cli::try_parse_from(
        ["ckpt", "checkpoint"]
            .into_iter()
            .map(String::from)
            .chain(args.clone()),
    )
    .map_err(|e| anyhow::anyhow!("the checkpoint's arguments: {}", e.render()))?;
    let Command::Checkpoint(Deferred(c)) = parsed.command else {
        anyhow::bail!("the checkpoint's arguments do not make a checkpoint");
    };
    let Some(dir) = &c.dir else {
        anyhow::bail!("a schedule writes periodic checkpoints into a directory: give --dir DIR (and --keep N)");
    };
    if let Some(pid) = c.pid {
        eprintln!(
            "ckpt: warning: process {pid} may have another pid after a restore; --app ID or \
             --pidfile FILE (with `ckpt restore --pidfile FILE`) keep finding it"
        );
    }
    let name = a.name.clone().or(c.app.clone()).unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    sched::check_name(&name)?;
    let exe = std::env::current_exe().context("finding ckpt's own path")?;
    let mut argv = vec![exe.to_string_lossy().into_owned()];
    if device != std::path::Path::new(DEFAULT_DEVICE) {
        argv.extend(["--device".into(), device.to_string_lossy().into_owned()]);
    }
    argv.push("checkpoint".into());
    argv.extend(args);
    if a.systemd {
        let unit = format!("ckpt-{name}");
        let (service, timer) = sched::systemd_units(a.every, &argv, &name)?;
        if a.install {
            let dir = a.unit_dir.clone().unwrap_or_else(sched::default_unit_dir);
            sched::install_systemd(&dir, &unit, &service, &timer)?;
            println!(
                "installed {unit}.service and {unit}.timer in {}",
                dir.display()
            );
        } else {
            print!("# {unit}.service\n{service}\n# {unit}.timer\n{timer}");
        }
    } else {
        let line = sched::crontab_line(&sched::cron_fields(a.every)?, &argv, &name)?;
        if a.install {
            sched::install_crontab(&line, &name)?;
            println!("installed in your crontab: {line}");
        } else {
            println!("{line}");
        }
    }
    Ok(0)
}

fn restore(device: &std::path::Path, a: RestoreArgs) -> anyhow::Result<i32> {
    let opts = ckpt::restore::Options {
        pidns: a.pidns,
        ipcns: a.ipcns,
        trust_image: a.trust_image,
        key: load_key(a.key.as_deref())?,
        lazy: a.lazy,
        progress: !a.no_progress,
    };
    let r = match ckpt::restore::restore(&image_or_latest(&a.image)?, device, &opts) {
        Err(ckpt::errors::RestoreError::Child(ckpt::restore::EXIT_VDSO_COLLISION)) => {
            return Err(restore_again());
        }
        r => r?,
    };
    if let Some(file) = &a.pidfile {
        write_pidfile(file, r.pid)?;
    }
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

/// Runs this `ckpt restore` again, as a new process (exec: another address-space layout),
/// after a restore that failed only because ckpt's own memory lay where the image's vDSO
/// goes. Twice at most; returns the error when it may not or cannot.
fn restore_again() -> anyhow::Error {
    const TRIES: &str = "CKPT_RESTORE_VDSO_RETRY";
    let done: u32 = std::env::var(TRIES)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if done >= 2 {
        return anyhow::anyhow!(
            "the image's vDSO lies where ckpt's own memory is, three times; run the restore again"
        );
    }
    eprintln!("ckpt: running the restore again in a new process (a new memory layout)");
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new("/proc/self/exe")
        .args(args)
        .env(TRIES, (done + 1).to_string())
        .exec();
    anyhow::anyhow!("running the restore again: {e}")
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
