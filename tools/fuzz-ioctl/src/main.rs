//! ckpt-fuzz-ioctl: a seeded fuzzer of the /dev/ckpt ioctls. Run as root where the module is
//! loaded (the test guest): `make fuzz` (debug kernel, a million calls) or
//! `tools/guest.sh -- target/debug/ckpt-fuzz-ioctl --seed 1 --seconds 5`.
//!
//! Several threads make random and structure-aware calls of every command (see `gen.rs`)
//! while processes fork, exit and exec in the background (`targets.rs`); RESTORE runs in
//! fork servers' children (`forkserver.rs`). The module reads only processes its calling
//! thread traces, so each thread seizes its own targets (a memory target, a churn of children
//! exiting and exec'ing), and calls on the rest check the refusals; the summary says how many
//! calls of each command got past the permission check. The run fails on any kernel report in the log
//! (`kmsg.rs`), a restore child that ignores SIGKILL, a call that hangs, or a reply that
//! breaks the ABI's promises. A seed gives the same calls again; `--only T:I --verbose`
//! makes one call of it alone.

mod board;
mod corpus;
mod fixture;
mod forkserver;
mod gen;
mod kmsg;
mod rng;
mod stats;
mod targets;

use board::Board;
use clap::Parser;
use fixture::Fixture;
use forkserver::{Limits, Server};
use nix::errno::Errno;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(about = "Fuzz the /dev/ckpt ioctls (as root, with the module loaded)")]
struct Args {
    /// The run's seed (default: from the clock). Printed either way; the same seed makes the
    /// same calls.
    #[arg(long)]
    seed: Option<u64>,
    /// ioctl calls in all, over all threads.
    #[arg(long, default_value_t = 1_000_000)]
    calls: u64,
    /// Stop after this many seconds, even with calls left.
    #[arg(long)]
    seconds: Option<u64>,
    /// Fuzzing threads (each with its own fork server for RESTORE).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=16))]
    threads: u32,
    /// Leave the arrays at the ABI's count limits zeroed: a quick start, for short runs.
    #[arg(long)]
    quick: bool,
    /// Make only call INDEX of thread THREAD of this seed (replays one call).
    #[arg(long, value_name = "THREAD:INDEX")]
    only: Option<String>,
    /// Print every call before making it.
    #[arg(long)]
    verbose: bool,
    #[arg(long, default_value = "/dev/ckpt")]
    device: PathBuf,
    /// Seconds a restore child may run before it is killed.
    #[arg(long, default_value_t = 20)]
    restore_timeout: u64,
    /// Internal: be a process in exec, N times over.
    #[arg(long, hide = true)]
    exec_chain: Option<u32>,
}

/// The raw ioctl: the one place the fuzzer hands the kernel its pointers.
pub fn raw_ioctl(fd: i32, cmd: u32, arg: u64) -> Result<i32, Errno> {
    // SAFETY: every pointer a generated call holds is either into this thread's scratch
    // (which the kernel may write), read-only or unmapped fixture memory, or a kernel or
    // junk address the kernel must refuse; nothing the Rust code owns.
    let r = unsafe { libc::ioctl(fd, cmd as libc::c_ulong, arg) };
    Errno::result(r)
}

fn main() {
    let args = Args::parse();
    if let Some(n) = args.exec_chain {
        targets::exec_chain(n);
    }
    match run(args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("fuzz-ioctl: error: {e}");
            std::process::exit(2);
        }
    }
}

fn clock_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ std::process::id() as u64
}

/// The fuzzer's own tmpfs, in a mount namespace of its own: small, so dumps fill it and see
/// ENOSPC, and gone with the fuzzer.
fn private_dir() -> std::io::Result<PathBuf> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    let dir = std::env::temp_dir().join(format!("ckpt-fuzz.{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=4m,mode=0700"),
    )?;
    Ok(dir)
}

fn remove_private_dir(dir: &Path) {
    let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(dir);
}

fn check_abi(fx: &Fixture) -> std::io::Result<()> {
    let mut info = ckpt_abi::CkptVersionInfo::default();
    raw_ioctl(
        fx.dev,
        ckpt_abi::CKPT_IOC_VERSION,
        &mut info as *mut _ as u64,
    )?;
    if info != ckpt_abi::ckpt_version_info() {
        return Err(std::io::Error::other(format!(
            "the loaded module's ABI {info:?} is not this fuzzer's {:?}: rebuild both",
            ckpt_abi::ckpt_version_info()
        )));
    }
    Ok(())
}

/// Everything the threads share.
pub struct Run {
    args: Args,
    seed: u64,
    fx: Fixture,
    board: &'static Board,
    servers: Vec<Server>,
    stats: Vec<Mutex<stats::Thread>>,
    reports: Arc<Mutex<Vec<String>>>,
    deadline: Option<Instant>,
}

fn run(args: Args) -> std::io::Result<bool> {
    if !nix::unistd::geteuid().is_root() {
        return Err(std::io::Error::other(
            "run as root (it needs /dev/ckpt and a private tmpfs): in the guest, tools/guest.sh",
        ));
    }
    let seed = args.seed.unwrap_or_else(clock_seed);
    println!("fuzz-ioctl: seed {seed}");
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)?;
    let dir = private_dir()?;
    let board = Board::new()?;
    let fx = Fixture::new(&dir, &args.device, args.threads, !args.quick)?;
    check_abi(&fx)?;
    targets::find_kthreads(board);
    // Forked while single-threaded: the memory targets (one per thread) and the fork servers.
    let mem_targets = (0..args.threads as usize)
        .map(|t| targets::spawn_memory_target(board, t))
        .collect::<std::io::Result<Vec<_>>>()?;
    let limits = |verbose| Limits {
        child_time: Duration::from_secs(args.restore_timeout),
        kill_grace: Duration::from_secs(30),
        verbose,
    };
    let servers = (0..args.threads)
        .map(|t| Server::spawn(&fx, board, t, seed, limits(args.verbose)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let run = Run {
        deadline: args
            .seconds
            .map(|s| Instant::now() + Duration::from_secs(s)),
        stats: (0..args.threads).map(|_| Mutex::default()).collect(),
        reports: Arc::default(),
        args,
        seed,
        fx,
        board,
        servers,
    };
    let ok = match run.args.only.clone() {
        Some(only) => run.replay_one(&only)?,
        None => run.fuzz()?,
    };
    for (t, target) in mem_targets.into_iter().enumerate() {
        targets::stop_memory_target(board, t, target);
    }
    let Run { servers, .. } = run;
    servers.into_iter().for_each(Server::stop);
    remove_private_dir(&dir);
    Ok(ok)
}

impl Run {
    fn ctx(&self, thread: u32, describe: bool) -> gen::Ctx<'_> {
        gen::Ctx {
            fx: &self.fx,
            board: self.board,
            thread,
            describe,
        }
    }

    /// Prints each thread's last calls, generated again from the seed (the threads have
    /// stopped, so their scratch is free).
    fn print_recent(&self) {
        for (t, indexes) in stats::recent(&self.stats).into_iter().enumerate() {
            println!("  thread {t}, its last calls:");
            for i in indexes {
                let mut rng = rng::Rng::for_call(self.seed, t as u32, i);
                let kind = gen::choose(&mut rng);
                let call = gen::generate(kind, &mut rng, &self.ctx(t as u32, true));
                let batch = if kind == gen::Kind::Restore {
                    " (in the fork server's batch)"
                } else {
                    ""
                };
                println!("    {t}:{i}{batch}: {}", call.what);
            }
        }
    }

    /// `--only T:I`: makes that one call, printing it and its result.
    fn replay_one(&self, only: &str) -> std::io::Result<bool> {
        let (t, i) = only
            .split_once(':')
            .and_then(|(t, i)| Some((t.parse::<u32>().ok()?, i.parse::<u64>().ok()?)))
            .filter(|&(t, _)| t < self.args.threads)
            .ok_or_else(|| {
                std::io::Error::other(format!("--only wants THREAD:INDEX, got {only:?}"))
            })?;
        self.board.fuzz_tids[t as usize].store(nix::unistd::gettid().as_raw(), Relaxed);
        // This thread stands in for thread t: it traces t's memory target (t's churn is not
        // there in a replay).
        targets::seize_memory_target(self.board, t as usize)?;
        let mut rng = rng::Rng::for_call(self.seed, t, i);
        let kind = gen::choose(&mut rng);
        if kind == gen::Kind::Restore {
            self.servers[t as usize].run(&[i])?;
            stats::print_restores(self.board, self.args.threads);
            return Ok(stats::restore_failures(self.board, self.args.threads) == 0);
        }
        let call = gen::generate(kind, &mut rng, &self.ctx(t, true));
        println!("call {t}:{i}: {}", call.what);
        let r = raw_ioctl(call.fd, call.cmd, call.arg);
        println!("result: {r:?}");
        let checked = stats::check_reply(&call, r);
        if let Err(why) = &checked {
            println!("bad reply: {why}");
        }
        Ok(checked.is_ok())
    }

    fn fuzz(&self) -> std::io::Result<bool> {
        kmsg::watch(self.board, self.reports.clone())?;
        self.board.fuzz_tids[0].store(nix::unistd::gettid().as_raw(), Relaxed);
        let failed = corpus::run(&self.ctx(0, true));
        println!(
            "fuzz-ioctl: {} regression cases, {} failed",
            corpus::CASES.len() + corpus::KILLABLE,
            failed.len()
        );
        for f in &failed {
            println!("fuzz-ioctl: FAILED: {f}");
        }
        if let Ok(mut st) = self.stats[0].lock() {
            st.bad_replies += failed.len() as u64;
        }
        let started = Instant::now();
        std::thread::scope(|s| {
            let churn = s.spawn(|| targets::churn(self.board, self.seed));
            let workers: Vec<_> = (0..self.args.threads)
                .map(|t| s.spawn(move || self.worker(t)))
                .collect();
            self.watch_progress(started, &workers);
            self.board.stop.store(1, Relaxed);
            for w in workers {
                if let Err(e) = w.join().unwrap_or(Ok(())) {
                    eprintln!("fuzz-ioctl: a worker failed: {e}");
                    if let Ok(mut r) = self.reports.lock() {
                        r.push(format!("worker failed: {e}"));
                    }
                }
            }
            let _ = churn.join();
        });
        Ok(self.report(started.elapsed()))
    }

    /// Prints progress every 10 s until the workers finish, and stops the run on a call that
    /// hangs.
    fn watch_progress(
        &self,
        started: Instant,
        workers: &[std::thread::ScopedJoinHandle<'_, std::io::Result<()>>],
    ) {
        let mut last_print = Instant::now();
        while !workers.iter().all(|w| w.is_finished()) {
            std::thread::sleep(Duration::from_millis(200));
            if let Some(stuck) = stats::stuck_call(&self.stats, Duration::from_secs(300)) {
                eprintln!("fuzz-ioctl: FAILED: call {stuck} has not returned for 300 s");
                if let Ok(mut r) = self.reports.lock() {
                    r.push(format!("call {stuck} hangs"));
                }
                self.report(started.elapsed());
                std::process::exit(1);
            }
            if last_print.elapsed() >= Duration::from_secs(10) {
                last_print = Instant::now();
                let n = stats::total_calls(&self.stats, self.board, self.args.threads);
                println!(
                    "fuzz-ioctl: {n} calls after {:.0} s ({:.0}/s)",
                    started.elapsed().as_secs_f64(),
                    n as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }

    /// One fuzzing thread: its share of the calls, RESTORE ones batched to its fork server.
    /// It traces its memory target and its own churn, so its calls on them get past the
    /// module's permission check.
    fn worker(&self, t: u32) -> std::io::Result<()> {
        self.board.fuzz_tids[t as usize].store(nix::unistd::gettid().as_raw(), Relaxed);
        targets::seize_memory_target(self.board, t as usize)?;
        let mut seized = targets::Seized::new(self.board, t as usize, self.seed);
        let ctx = self.ctx(t, self.args.verbose);
        let share = self.args.calls / self.args.threads as u64
            + u64::from((t as u64) < self.args.calls % self.args.threads as u64);
        let mut batch = Vec::with_capacity(forkserver::BATCH);
        for i in 0..share {
            if self.board.stopping() || self.deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let mut rng = rng::Rng::for_call(self.seed, t, i);
            let kind = gen::choose(&mut rng);
            if kind == gen::Kind::Restore {
                batch.push(i);
                if batch.len() == forkserver::BATCH {
                    self.restore_batch(t, &mut batch)?;
                }
                continue;
            }
            if i % 64 == 0 {
                // Room in the dump file again (else every dump ends in ENOSPC).
                ctx.fx.empty_dump_file(t);
            }
            seized.tick();
            let call = gen::generate(kind, &mut rng, &ctx);
            self.make(t, i, &call);
        }
        self.restore_batch(t, &mut batch)
    }

    fn restore_batch(&self, t: u32, batch: &mut Vec<u64>) -> std::io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Ok(mut st) = self.stats[t as usize].lock() {
            for &i in batch.iter() {
                st.begin(i);
            }
        }
        self.servers[t as usize].run(batch)?;
        if let Ok(mut st) = self.stats[t as usize].lock() {
            st.end();
        }
        batch.clear();
        Ok(())
    }

    fn make(&self, t: u32, i: u64, call: &gen::Call) {
        if self.args.verbose {
            println!("call {t}:{i}: {}", call.what);
        }
        if let Ok(mut st) = self.stats[t as usize].lock() {
            st.begin(i);
        }
        let started = Instant::now();
        let r = raw_ioctl(call.fd, call.cmd, call.arg);
        let took = started.elapsed();
        let bad = stats::check_reply(call, r).err();
        if let Ok(mut st) = self.stats[t as usize].lock() {
            st.end();
            st.record(call, r, took);
            if let Some(why) = bad {
                eprintln!("fuzz-ioctl: FAILED: call {t}:{i}: {why} (see it with --only {t}:{i} --verbose)");
                st.bad_replies += 1;
            }
        }
    }

    /// Prints the summary; returns whether the run passed.
    fn report(&self, elapsed: Duration) -> bool {
        let n = stats::total_calls(&self.stats, self.board, self.args.threads);
        stats::print_calls(&self.stats);
        stats::print_restores(self.board, self.args.threads);
        stats::print_permission(&self.stats);
        let reports = self.reports.lock().map(|r| r.clone()).unwrap_or_default();
        let bad = stats::bad_replies(&self.stats)
            + stats::restore_failures(self.board, self.args.threads);
        println!(
            "fuzz-ioctl: seed {}: {n} calls in {:.1} s ({:.0}/s), {} threads",
            self.seed,
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64().max(0.001),
            self.args.threads
        );
        if reports.is_empty() && bad == 0 {
            println!("fuzz-ioctl: passed: no kernel report, no bad reply");
            return true;
        }
        for r in &reports {
            println!("fuzz-ioctl: kernel report: {r}");
        }
        self.print_recent();
        println!(
            "fuzz-ioctl: FAILED ({} kernel report lines, {bad} bad replies or restore failures); \
             replay with --seed {} --threads {}{} (one call: --only THREAD:INDEX --verbose)",
            reports.len(),
            self.seed,
            self.args.threads,
            if self.args.quick { " --quick" } else { "" }
        );
        false
    }
}
