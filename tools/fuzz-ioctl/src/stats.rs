//! Counting what the calls did, checking the replies of those that succeeded, and the recent
//! calls of each thread (printed when the kernel reports something).

use crate::board::Board;
use crate::fixture::PAGE;
use crate::gen::{Call, Check, Kind, Whose};
use ckpt_abi::{CkptDumpPages, CkptQuery, CkptRestoreRun, CkptVersionInfo};
use nix::errno::Errno;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const RECENT: usize = 8;

#[derive(Default)]
pub struct Thread {
    /// (command, errno or 0 for success) -> count.
    counts: BTreeMap<(Kind, i32), u64>,
    /// Time spent in the calls of each command.
    time: BTreeMap<Kind, Duration>,
    /// Calls of each command that got past the module's permission check (`past_check`).
    past: BTreeMap<Kind, u64>,
    /// The same calls, by whose pid they named.
    past_by_whose: BTreeMap<Whose, u64>,
    current: Option<(u64, Instant)>,
    recent: VecDeque<u64>,
    pub bad_replies: u64,
}

impl Thread {
    pub fn begin(&mut self, index: u64) {
        self.current = Some((index, Instant::now()));
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(index);
    }

    pub fn end(&mut self) {
        self.current = None;
    }

    pub fn record(&mut self, call: &Call, r: Result<i32, Errno>, took: Duration) {
        let kind = call.kind;
        *self.time.entry(kind).or_default() += took;
        if past_check(call, r) {
            *self.past.entry(kind).or_default() += 1;
            if let Some(w) = call.whose {
                *self.past_by_whose.entry(w).or_default() += 1;
            }
        }
        let e = r.err().map_or(0, |e| e as i32);
        *self.counts.entry((kind, e)).or_default() += 1;
    }
}

/// Whether `call`, which returned `r`, got past the module's permission check: it reached the
/// check (`Call::gate`: nothing before it could fail) and returned none of the results the
/// module gives up to and at the check for such inputs: EINVAL (a pid <= 0, a kernel thread),
/// ESRCH (no such process, or a zombie), EINTR (killed waiting for the target's exec lock),
/// ENOMEM, and EPERM (the check's refusal). A lower bound: a call failing with one of those
/// after the check is not counted.
pub fn past_check(call: &Call, r: Result<i32, Errno>) -> bool {
    call.gate
        && !matches!(
            r,
            Err(Errno::EINVAL | Errno::ESRCH | Errno::EINTR | Errno::ENOMEM | Errno::EPERM)
        )
}

/// The commands that name a pid, which the permission check guards.
pub const CHECKED: [Kind; 4] = [Kind::Query, Kind::DumpTask, Kind::DumpPages, Kind::Itimers];

/// Prints, per command naming a pid, how many calls got past the permission check and how
/// many it refused, in one line each (the short form's test reads them).
pub fn print_permission(stats: &[Mutex<Thread>]) {
    let (mut past, mut refused): (BTreeMap<Kind, u64>, BTreeMap<Kind, u64>) = Default::default();
    let mut by_whose: BTreeMap<Whose, u64> = BTreeMap::new();
    for s in stats.iter().filter_map(|s| s.lock().ok()) {
        for (k, n) in &s.past {
            *past.entry(*k).or_default() += n;
        }
        for (w, n) in &s.past_by_whose {
            *by_whose.entry(*w).or_default() += n;
        }
        for ((k, e), n) in &s.counts {
            if *e == Errno::EPERM as i32 {
                *refused.entry(*k).or_default() += n;
            }
        }
    }
    let line = |m: &BTreeMap<Kind, u64>| {
        CHECKED
            .iter()
            .map(|k| format!("{k:?} {}", m.get(k).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("fuzz-ioctl: past the permission check: {}", line(&past));
    println!("fuzz-ioctl: refused by it (EPERM): {}", line(&refused));
    // Any kind not listed got none past: a pid traced by another thread or by nobody never
    // should, a junk one only by chance (a random number that is one of ours).
    let whose: Vec<String> = by_whose.iter().map(|(w, n)| format!("{w:?} {n}")).collect();
    println!(
        "fuzz-ioctl: past the permission check, by target: {}",
        whose.join(", ")
    );
}

/// A call running for longer than `limit`, as "THREAD:INDEX".
pub fn stuck_call(stats: &[Mutex<Thread>], limit: Duration) -> Option<String> {
    stats.iter().enumerate().find_map(|(t, s)| {
        let s = s.lock().ok()?;
        let (i, since) = s.current?;
        (since.elapsed() > limit).then(|| format!("{t}:{i}"))
    })
}

fn restore_calls(board: &Board, threads: u32) -> u64 {
    board.restore[..threads as usize]
        .iter()
        .map(|r| {
            r.errno.iter().map(|e| e.load(Relaxed)).sum::<u64>()
                + r.killed.load(Relaxed)
                + r.restored_crashed.load(Relaxed)
                + r.restored_returned.load(Relaxed)
                + r.timed_out.load(Relaxed)
                + r.strange.load(Relaxed)
        })
        .sum()
}

pub fn total_calls(stats: &[Mutex<Thread>], board: &Board, threads: u32) -> u64 {
    let direct: u64 = stats
        .iter()
        .filter_map(|s| s.lock().ok().map(|s| s.counts.values().sum::<u64>()))
        .sum();
    direct + restore_calls(board, threads)
}

pub fn bad_replies(stats: &[Mutex<Thread>]) -> u64 {
    stats
        .iter()
        .filter_map(|s| s.lock().ok().map(|s| s.bad_replies))
        .sum()
}

/// Restore outcomes that fail the run: a child that ignored SIGKILL, or one that ended in a
/// way the fuzzer never makes it end.
pub fn restore_failures(board: &Board, threads: u32) -> u64 {
    board.restore[..threads as usize]
        .iter()
        .map(|r| r.unkillable.load(Relaxed) + r.strange.load(Relaxed))
        .sum()
}

fn errno_name(e: i32) -> String {
    if e == 0 {
        "ok".into()
    } else {
        format!("{:?}", Errno::from_raw(e))
    }
}

pub fn print_calls(stats: &[Mutex<Thread>]) {
    let mut all: BTreeMap<(Kind, i32), u64> = BTreeMap::new();
    let mut time: BTreeMap<Kind, Duration> = BTreeMap::new();
    for s in stats.iter().filter_map(|s| s.lock().ok()) {
        for (k, n) in &s.counts {
            *all.entry(*k).or_default() += n;
        }
        for (k, d) in &s.time {
            *time.entry(*k).or_default() += *d;
        }
    }
    let mut by_kind: BTreeMap<Kind, Vec<String>> = BTreeMap::new();
    for (&(kind, e), n) in &all {
        by_kind
            .entry(kind)
            .or_default()
            .push(format!("{} {n}", errno_name(e)));
    }
    for (kind, outcomes) in by_kind {
        let n: u64 = all
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, n)| n)
            .sum();
        let us = time.get(&kind).map_or(0, |d| d.as_micros() as u64) / n.max(1);
        println!("  {kind:?} ({us} us a call): {}", outcomes.join(", "));
    }
}

pub fn print_restores(board: &Board, threads: u32) {
    let mut errnos = BTreeMap::new();
    let (mut killed, mut crashed, mut returned, mut slow, mut unkillable, mut strange) =
        (0, 0, 0, 0, 0, 0);
    for r in &board.restore[..threads as usize] {
        for (e, n) in r.errno.iter().enumerate() {
            let n = n.load(Relaxed);
            if n > 0 {
                *errnos.entry(e as i32).or_insert(0u64) += n;
            }
        }
        killed += r.killed.load(Relaxed);
        crashed += r.restored_crashed.load(Relaxed);
        returned += r.restored_returned.load(Relaxed);
        slow += r.timed_out.load(Relaxed);
        unkillable += r.unkillable.load(Relaxed);
        strange += r.strange.load(Relaxed);
    }
    let refused: Vec<String> = errnos
        .iter()
        .map(|(e, n)| format!("{} {n}", errno_name(*e)))
        .collect();
    println!(
        "  Restore: refused: {}; killed past the point of no return {killed}; restored {crashed} \
         (then died returning into the new memory) + {returned} (went on); killed at the time \
         limit {slow}; ignoring SIGKILL {unkillable}; ended strangely {strange}",
        refused.join(", ")
    );
}

/// The indexes of each thread's last calls.
pub fn recent(stats: &[Mutex<Thread>]) -> Vec<Vec<u64>> {
    stats
        .iter()
        .map(|s| {
            s.lock()
                .map(|s| s.recent.iter().copied().collect())
                .unwrap_or_default()
        })
        .collect()
}

/// Reads a `T` the kernel wrote at `at` (the thread's scratch, where the call was placed).
fn read_back<T: Copy>(at: u64) -> T {
    // SAFETY: `at` is in the thread's scratch (checks are only made for calls placed there),
    // mapped and big enough; the ABI structs accept any bytes.
    unsafe { std::ptr::read_unaligned(at as *const T) }
}

/// What a successful call promised: the handshake's sizes, a read no longer than asked,
/// runs that fit and add up to the bytes written.
pub fn check_reply(call: &Call, r: Result<i32, Errno>) -> Result<(), String> {
    if r.is_err() {
        return Ok(());
    }
    match call.check {
        Check::None => Ok(()),
        Check::Version(at) => {
            let got: CkptVersionInfo = read_back(at);
            (got == ckpt_abi::ckpt_version_info())
                .then_some(())
                .ok_or(format!("VERSION replied {got:?}"))
        }
        Check::Query { at, read_len } => {
            let q: CkptQuery = read_back(at);
            if q.bytes_read > read_len || (read_len > 0 && q.bytes_read == 0) {
                return Err(format!(
                    "QUERY read {} bytes of {read_len} asked",
                    q.bytes_read
                ));
            }
            Ok(())
        }
        Check::DumpPages { at, max_runs } => check_dump(read_back(at), max_runs),
    }
}

fn check_dump(d: CkptDumpPages, max_runs: u32) -> Result<(), String> {
    if d.run_count > max_runs || !d.bytes_written.is_multiple_of(PAGE) {
        return Err(format!("DUMP_PAGES replied {d:?} for max_runs {max_runs}"));
    }
    let runs = d.runs as *const CkptRestoreRun;
    let total: u64 = (0..d.run_count as usize)
        // SAFETY: the runs went to the thread's output buffer, which holds `max_runs` of them.
        .map(|k| unsafe { std::ptr::read_unaligned(runs.add(k)) }.len)
        .sum();
    if total != d.bytes_written {
        return Err(format!(
            "DUMP_PAGES runs add up to {total} bytes, {} written",
            d.bytes_written
        ));
    }
    Ok(())
}
