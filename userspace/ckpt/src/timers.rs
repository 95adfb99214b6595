//! A process's timers: its POSIX timers (timer_create) and its three itimers (ITIMER_REAL,
//! which alarm() also sets, ITIMER_VIRTUAL, ITIMER_PROF).
//!
//! Checkpoint: /proc/PID/timers lists the POSIX timers (id, clock, signal and sigev_value,
//! notification and its thread) but not their time left, and nothing outside the process
//! shows its itimers: a frozen thread is lent (`inject::Borrowed`) to run timer_gettime,
//! timer_getoverrun and getitimer, and put back as it was; not when the process has no POSIX
//! timer and the module reports no itimer armed (most programs).
//!
//! Restore, injected into the restored process before its credentials drop: each POSIX timer
//! made again with its id (PR_TIMER_CREATE_RESTORE_IDS, or on kernels without it by creating
//! and deleting until the kernel's counter reaches the id), then every timer armed with the
//! time that was left, relative: the time the process was down does not count, as for a
//! process that was stopped. Glibc's SIGEV_THREAD timers are kernel timers that signal
//! glibc's helper thread (SIGEV_THREAD_ID): carried like any other, the thread with them.
//! Not carried: the overrun count (recorded; no call sets it), a CPU-time clock of another
//! process or thread (refused), absolute settings (they come back relative).

use crate::errors::{checkpoint_io, restore_io, CheckpointError, RestoreError};
use crate::freeze::Frozen;
use crate::inject::{Borrowed, Injector};
use serde::{Deserialize, Serialize};
use std::io;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Timers {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub posix: Vec<PosixTimer>,
    /// ITIMER_REAL (and alarm), ITIMER_VIRTUAL, ITIMER_PROF; absent when disarmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real: Option<ITimer>,
    #[serde(default, rename = "virtual", skip_serializing_if = "Option::is_none")]
    pub virt: Option<ITimer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prof: Option<ITimer>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ITimer {
    /// Microseconds until it fires.
    pub value_us: u64,
    /// Microseconds between expirations (0: once).
    pub interval_us: u64,
}

impl ITimer {
    /// The value to give setitimer. A periodic ITIMER_REAL read after it fired and before its
    /// SIGALRM was taken reads 0 left (the kernel arms it again as the signal is taken, and
    /// the image has the signal pending): setitimer would take 0 as "disarm", so it is armed
    /// for one interval, when it would have fired next.
    pub fn value_to_arm(&self) -> u64 {
        match self.value_us {
            0 => self.interval_us,
            v => v,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PosixTimer {
    /// The timer id the program holds (timer_t).
    pub id: i32,
    pub clock: i32,
    /// sigev_notify as the kernel keeps it: SIGEV_SIGNAL (0), SIGEV_NONE (1), SIGEV_THREAD
    /// (2, which the kernel treats as a signal), SIGEV_SIGNAL | SIGEV_THREAD_ID (4).
    pub notify: i32,
    pub signo: i32,
    /// sigev_value (sival_ptr; sival_int is its low half).
    pub value: u64,
    /// SIGEV_THREAD_ID: the thread signalled (its tid in the image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<i32>,
    /// Nanoseconds until it fires (0: disarmed).
    pub value_ns: u64,
    /// Nanoseconds between expirations (0: once).
    pub interval_ns: u64,
    /// Expirations missed before the last signal was delivered (timer_getoverrun); recorded,
    /// not set again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub overrun: i32,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD: i32 = 2;
const SIGEV_THREAD_ID: i32 = 4;
/// PR_TIMER_CREATE_RESTORE_IDS (Linux 6.15): timer_create takes the id it is given.
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
/// The clocks timer_create accepts (CPU-time clocks of other processes are refused at dump).
const CLOCKS: [i32; 8] = [
    libc::CLOCK_REALTIME,
    libc::CLOCK_MONOTONIC,
    libc::CLOCK_PROCESS_CPUTIME_ID,
    libc::CLOCK_THREAD_CPUTIME_ID,
    libc::CLOCK_BOOTTIME,
    libc::CLOCK_REALTIME_ALARM,
    libc::CLOCK_BOOTTIME_ALARM,
    libc::CLOCK_TAI,
];

impl Timers {
    pub fn is_empty(&self) -> bool {
        self.posix.is_empty() && self.real.is_none() && self.virt.is_none() && self.prof.is_none()
    }

    fn itimers(&self) -> [(i32, Option<ITimer>); 3] {
        [
            (libc::ITIMER_REAL, self.real),
            (libc::ITIMER_VIRTUAL, self.virt),
            (libc::ITIMER_PROF, self.prof),
        ]
    }

    /// Ids unique, clocks and notifications the kernel takes, each signalled thread one of
    /// the process's (`tids`, the image's).
    pub fn validate(&self, tids: &[i32]) -> Result<(), String> {
        let mut ids = std::collections::BTreeSet::new();
        for t in &self.posix {
            let bad = |why: &str| Err(format!("POSIX timer {}: {why}", t.id));
            if t.id < 0 || !ids.insert(t.id) {
                return bad("bad or duplicate id");
            }
            if !CLOCKS.contains(&t.clock) {
                return bad("unknown clock");
            }
            if ![SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD, SIGEV_THREAD_ID].contains(&t.notify) {
                return bad("unknown notification");
            }
            if t.notify != SIGEV_NONE && !(1..=64).contains(&t.signo) {
                return bad("bad signal number");
            }
            let thread_ok = match t.thread {
                Some(tid) => t.notify == SIGEV_THREAD_ID && tids.contains(&tid),
                None => t.notify != SIGEV_THREAD_ID,
            };
            if !thread_ok {
                return bad("its thread is not one of the process's");
            }
        }
        Ok(())
    }

    /// One line per timer, for `ckpt inspect`.
    pub fn describe(&self) -> Vec<String> {
        let s = |ns: u64| ns as f64 / 1e9;
        let mut out: Vec<String> = self
            .posix
            .iter()
            .map(|t| {
                let to = match (t.notify, t.thread) {
                    (SIGEV_NONE, _) => "no notification".to_owned(),
                    (_, Some(tid)) => format!("signal {} to thread {tid}", t.signo),
                    _ => format!("signal {}", t.signo),
                };
                format!(
                    "POSIX timer {} (clock {}, {to}, value {:#x}): fires in {:.3} s, every {:.3} s",
                    t.id,
                    t.clock,
                    t.value,
                    s(t.value_ns),
                    s(t.interval_ns)
                )
            })
            .collect();
        for (name, it) in ["real", "virtual", "prof"].iter().zip(self.itimers()) {
            if let (_, Some(it)) = it {
                out.push(format!(
                    "itimer {name}: fires in {:.3} s, every {:.3} s",
                    s(it.value_us * 1000),
                    s(it.interval_us * 1000)
                ));
            }
        }
        out
    }
}

/// A POSIX timer as /proc/PID/timers lists it (the kernel's pid of its thread).
#[derive(Debug, PartialEq)]
struct Listed {
    id: i32,
    signo: i32,
    value: u64,
    notify: i32,
    target: i32,
    clock: i32,
}

/// Parses /proc/PID/timers: "ID: N", "signal: SIG/VALUE(hex)", "notify: KIND/pid.N" or
/// "KIND/tid.N", "ClockID: N" per timer.
fn parse_listing(text: &str) -> Option<Vec<Listed>> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(first) = lines.next() {
        let id = first.strip_prefix("ID:")?.trim().parse().ok()?;
        let (signo, value) = lines
            .next()?
            .strip_prefix("signal:")?
            .trim()
            .split_once('/')?;
        let (kind, target) = lines
            .next()?
            .strip_prefix("notify:")?
            .trim()
            .split_once('/')?;
        let clock = lines
            .next()?
            .strip_prefix("ClockID:")?
            .trim()
            .parse()
            .ok()?;
        let (to, target) = target.split_once('.')?;
        let notify = match (kind, to) {
            ("signal", "pid") => SIGEV_SIGNAL,
            ("none", _) => SIGEV_NONE,
            ("thread", "pid") => SIGEV_THREAD,
            ("signal", "tid") => SIGEV_THREAD_ID,
            _ => return None,
        };
        out.push(Listed {
            id,
            signo: signo.parse().ok()?,
            value: u64::from_str_radix(value.trim_start_matches("0x"), 16).ok()?,
            notify,
            target: target.parse().ok()?,
            clock,
        });
    }
    Some(out)
}

/// Reads the timers of frozen process `frozen`; `to_virtual` turns a kernel tid into the one
/// the image records.
/// The timers of the frozen process; `itimers_armed`: which of its itimers are armed
/// (`Device::itimers_armed`). With no POSIX timer and no itimer armed there is nothing to read
/// and no thread is lent: that saves the lend's ptrace stops (about 30 ms in the test guest)
/// of the freeze of most programs.
pub fn dump(
    frozen: &Frozen,
    itimers_armed: u32,
    to_virtual: impl Fn(i32) -> i32,
) -> Result<Timers, CheckpointError> {
    let pid = frozen.pid;
    let unsupported = |why: String| CheckpointError::Unsupported { pid, why };
    let text = std::fs::read_to_string(format!("/proc/{pid}/timers"))
        .map_err(checkpoint_io(pid, "reading /proc/PID/timers"))?;
    let mut listed = parse_listing(&text)
        .ok_or_else(|| unsupported(format!("/proc/{pid}/timers is not understood: {text:?}")))?;
    // /proc lists the newest first; the image keeps them by id.
    listed.sort_by_key(|l| l.id);
    for l in &listed {
        if !CLOCKS.contains(&l.clock) {
            return Err(unsupported(format!(
                "POSIX timer {} runs on clock {} (another process's or thread's CPU time)",
                l.id, l.clock
            )));
        }
        if l.notify == SIGEV_THREAD_ID && !frozen.tids.contains(&l.target) {
            return Err(unsupported(format!(
                "POSIX timer {} signals thread {}, which is not one of the process's",
                l.id, l.target
            )));
        }
    }
    if listed.is_empty() && itimers_armed == 0 {
        return Ok(Timers::default());
    }
    let mut lent = borrow(frozen)?;
    let read = read_all(&mut lent, &listed, &to_virtual);
    let back = lent.give_back();
    let timers = read.map_err(checkpoint_io(pid, "reading its timers (injected calls)"))?;
    back.map_err(checkpoint_io(
        pid,
        "putting a thread back after reading its timers",
    ))?;
    Ok(timers)
}

/// The first thread that can be lent (a main thread that has exited cannot).
fn borrow(frozen: &Frozen) -> Result<Borrowed, CheckpointError> {
    let mut last = io::Error::other("no thread");
    for &tid in &frozen.tids {
        match Borrowed::take(frozen.pid, tid) {
            Ok(b) => return Ok(b),
            Err(e) => last = e,
        }
    }
    Err(checkpoint_io(
        frozen.pid,
        "lending a thread to read its timers",
    )(last))
}

fn read_all(
    lent: &mut Borrowed,
    listed: &[Listed],
    to_virtual: &impl Fn(i32) -> i32,
) -> io::Result<Timers> {
    let mut timers = Timers::default();
    let at = lent.scratch();
    for (which, slot) in [
        (libc::ITIMER_REAL, &mut timers.real),
        (libc::ITIMER_VIRTUAL, &mut timers.virt),
        (libc::ITIMER_PROF, &mut timers.prof),
    ] {
        call(lent, libc::SYS_getitimer, [which as u64, at, 0, 0, 0, 0])?;
        // struct itimerval: interval then value, each (seconds, microseconds).
        let [isec, iusec, vsec, vusec] = words(&lent.peek(at, 32)?);
        let it = ITimer {
            value_us: vsec.saturating_mul(1_000_000).saturating_add(vusec),
            interval_us: isec.saturating_mul(1_000_000).saturating_add(iusec),
        };
        *slot = (it.value_us != 0 || it.interval_us != 0).then_some(it);
    }
    for l in listed {
        let id = l.id as u64;
        call(lent, libc::SYS_timer_gettime, [id, at, 0, 0, 0, 0])?;
        // struct itimerspec: interval then value, each (seconds, nanoseconds).
        let [isec, insec, vsec, vnsec] = words(&lent.peek(at, 32)?);
        let overrun = call(lent, libc::SYS_timer_getoverrun, [id, 0, 0, 0, 0, 0])?;
        timers.posix.push(PosixTimer {
            id: l.id,
            clock: l.clock,
            notify: l.notify,
            signo: l.signo,
            value: l.value,
            thread: (l.notify == SIGEV_THREAD_ID).then(|| to_virtual(l.target)),
            value_ns: vsec.saturating_mul(1_000_000_000).saturating_add(vnsec),
            interval_ns: isec.saturating_mul(1_000_000_000).saturating_add(insec),
            overrun: overrun as i32,
        });
    }
    Ok(timers)
}

/// An injected call in a lent thread; -errno becomes an error.
fn call(lent: &mut Borrowed, nr: i64, args: [u64; 6]) -> io::Result<i64> {
    let r = lent.syscall(nr, args)?;
    if r < 0 {
        return Err(io::Error::from_raw_os_error(-r as i32));
    }
    Ok(r)
}

fn words(b: &[u8]) -> [u64; 4] {
    let w = |i: usize| {
        b.get(i * 8..i * 8 + 8)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    [w(0), w(1), w(2), w(3)]
}

fn bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// In restored process `pid` at a ptrace stop, its threads made (`tids`: the kernel tids as
/// the process sees them, in image order of `image_tids`): makes its POSIX timers again with
/// their ids, then arms every timer. `scratch`: memory of the process free for arguments.
pub fn restore(
    inj: &Injector,
    pid: i32,
    timers: &Timers,
    (image_tids, tids): (&[i32], &[i32]),
    scratch: u64,
) -> Result<(), RestoreError> {
    let mut posix: Vec<&PosixTimer> = timers.posix.iter().collect();
    // In order: without PR_TIMER_CREATE_RESTORE_IDS ids only go up.
    posix.sort_by_key(|t| t.id);
    if !posix.is_empty() {
        let on = crate::thread::call(
            inj,
            pid,
            "PR_TIMER_CREATE_RESTORE_IDS",
            libc::SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0],
        );
        let with_ids = match on {
            Ok(_) => true,
            Err(RestoreError::Io { ref source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) =>
            {
                false
            }
            Err(e) => return Err(e),
        };
        let made = make_all(inj, pid, &posix, (image_tids, tids), (scratch, with_ids));
        if with_ids {
            // Always off again: else the program's own timer_create would read its id
            // argument as a request.
            crate::thread::call(
                inj,
                pid,
                "PR_TIMER_CREATE_RESTORE_IDS off",
                libc::SYS_prctl,
                [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0],
            )?;
        }
        made?;
    }
    arm(inj, pid, timers, &posix, scratch)
}

/// Makes each POSIX timer (sorted by id) with its id.
fn make_all(
    inj: &Injector,
    pid: i32,
    posix: &[&PosixTimer],
    (image_tids, tids): (&[i32], &[i32]),
    (scratch, with_ids): (u64, bool),
) -> Result<(), RestoreError> {
    let what = |t: &PosixTimer| format!("making POSIX timer {} again", t.id);
    for t in posix {
        let tid = match t.thread {
            Some(v) => image_tids
                .iter()
                .position(|&i| i == v)
                .and_then(|i| tids.get(i).copied())
                .unwrap_or(0),
            None => 0,
        };
        // struct sigevent: value, signo, notify, thread id, padding to 64 bytes.
        let mut sev = vec![0u8; 64];
        sev[..8].copy_from_slice(&t.value.to_le_bytes());
        sev[8..12].copy_from_slice(&t.signo.to_le_bytes());
        sev[12..16].copy_from_slice(&t.notify.to_le_bytes());
        sev[16..20].copy_from_slice(&tid.to_le_bytes());
        let id_at = scratch + 64;
        inj.poke(scratch, &sev).map_err(restore_io(what(t)))?;
        let create = || -> io::Result<i32> {
            inj.poke(id_at, &t.id.to_le_bytes())?;
            let args = [t.clock as u64, scratch, id_at, 0, 0, 0];
            let (r, _) = inj.syscall(pid, libc::SYS_timer_create, args)?;
            if r < 0 {
                return Err(io::Error::from_raw_os_error(-r as i32));
            }
            let got = inj.peek(id_at, 4)?;
            Ok(i32::from_le_bytes([got[0], got[1], got[2], got[3]]))
        };
        let delete = |id: i32| -> io::Result<()> {
            let (r, _) = inj.syscall(pid, libc::SYS_timer_delete, [id as u64, 0, 0, 0, 0, 0])?;
            match r {
                0 => Ok(()),
                r => Err(io::Error::from_raw_os_error(-r as i32)),
            }
        };
        let got = if with_ids {
            create()
        } else {
            create_until(t.id, create, delete)
        };
        match got {
            Ok(id) if id == t.id => {}
            Ok(id) => {
                return Err(restore_io(what(t))(io::Error::other(format!(
                    "the kernel gave id {id}"
                ))))
            }
            Err(e) => return Err(restore_io(what(t))(e)),
        }
    }
    Ok(())
}

/// Without PR_TIMER_CREATE_RESTORE_IDS the kernel hands out ids in increasing order: creates
/// timers and deletes them until it gives `want` (as CRIU did). A process that went through
/// very many timers has ids too high to reach this way: given up after 65536 tries.
fn create_until(
    want: i32,
    mut create: impl FnMut() -> io::Result<i32>,
    mut delete: impl FnMut(i32) -> io::Result<()>,
) -> io::Result<i32> {
    for _ in 0..65536 {
        let id = create()?;
        if id >= want {
            return Ok(id);
        }
        delete(id)?;
    }
    Err(io::Error::other(format!(
        "timer id {want} is out of reach on this kernel (no PR_TIMER_CREATE_RESTORE_IDS)"
    )))
}

/// Arms the POSIX timers (`posix`, already made) and the itimers with the time that was left.
fn arm(
    inj: &Injector,
    pid: i32,
    timers: &Timers,
    posix: &[&PosixTimer],
    scratch: u64,
) -> Result<(), RestoreError> {
    let split = |v: u64, unit: u64| [v / unit, v % unit];
    for t in posix {
        // A disarmed timer keeps the interval it was last set with.
        if t.value_ns == 0 && t.interval_ns == 0 {
            continue;
        }
        let [isec, insec] = split(t.interval_ns, 1_000_000_000);
        let [vsec, vnsec] = split(t.value_ns, 1_000_000_000);
        inj.poke(scratch, &bytes(&[isec, insec, vsec, vnsec]))
            .map_err(restore_io("writing timer_settime's arguments"))?;
        let args = [t.id as u64, 0, scratch, 0, 0, 0];
        crate::thread::call(inj, pid, "timer_settime", libc::SYS_timer_settime, args)?;
    }
    for (which, it) in timers.itimers() {
        let Some(it) = it else { continue };
        let [isec, iusec] = split(it.interval_us, 1_000_000);
        let [vsec, vusec] = split(it.value_to_arm(), 1_000_000);
        inj.poke(scratch, &bytes(&[isec, iusec, vsec, vusec]))
            .map_err(restore_io("writing setitimer's arguments"))?;
        let args = [which as u64, scratch, 0, 0, 0, 0];
        crate::thread::call(inj, pid, "setitimer", libc::SYS_setitimer, args)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_periodic_itimer_read_between_firing_and_its_signal_is_armed_for_an_interval() {
        let it = |value_us, interval_us| ITimer {
            value_us,
            interval_us,
        };
        assert_eq!(it(0, 100_000).value_to_arm(), 100_000);
        assert_eq!(it(53_000, 100_000).value_to_arm(), 53_000);
        assert_eq!(it(9_000_000, 0).value_to_arm(), 9_000_000);
    }

    #[test]
    fn the_proc_listing_is_parsed() {
        let text = "ID: 0\nsignal: 10/0000000000001234\nnotify: signal/pid.77\nClockID: 1\n\
                    ID: 3\nsignal: 34/00007f0000001000\nnotify: signal/tid.78\nClockID: 0\n\
                    ID: 4\nsignal: 14/0000000000000000\nnotify: none/pid.77\nClockID: 7\n";
        let l = parse_listing(text).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(
            l[1],
            Listed {
                id: 3,
                signo: 34,
                value: 0x7f00_0000_1000,
                notify: SIGEV_THREAD_ID,
                target: 78,
                clock: 0
            }
        );
        assert_eq!((l[0].notify, l[0].value), (SIGEV_SIGNAL, 0x1234));
        assert_eq!((l[2].notify, l[2].clock), (SIGEV_NONE, 7));
        assert_eq!(parse_listing("").unwrap(), vec![]);
        assert!(parse_listing("ID: 1\nsignal: 10/0\n").is_none());
    }

    fn timer(id: i32, notify: i32, thread: Option<i32>) -> PosixTimer {
        PosixTimer {
            id,
            clock: libc::CLOCK_MONOTONIC,
            notify,
            signo: 10,
            value: 0,
            thread,
            value_ns: 1,
            interval_ns: 0,
            overrun: 0,
        }
    }

    #[test]
    fn bad_timers_are_refused() {
        let good = Timers {
            posix: vec![
                timer(0, SIGEV_SIGNAL, None),
                timer(2, SIGEV_THREAD_ID, Some(8)),
            ],
            ..Timers::default()
        };
        assert_eq!(good.validate(&[7, 8]), Ok(()));
        let spoil: [fn(&mut Timers); 6] = [
            |t| t.posix[1].id = 0,
            |t| t.posix[0].id = -1,
            |t| t.posix[0].clock = -6,
            |t| t.posix[0].notify = 3,
            |t| t.posix[1].thread = Some(9),
            |t| t.posix[0].signo = 65,
        ];
        for (i, f) in spoil.iter().enumerate() {
            let mut t = good.clone();
            f(&mut t);
            assert!(t.validate(&[7, 8]).is_err(), "case {i} was accepted");
        }
        assert!(Timers::default().is_empty());
        assert_eq!(serde_json::to_string(&Timers::default()).unwrap(), "{}");
    }

    /// The fallback for kernels without PR_TIMER_CREATE_RESTORE_IDS, on this process's own
    /// timers: the kernel's counter is driven up to the id wanted.
    #[test]
    fn ids_are_reached_by_creating_and_deleting() {
        let create = || -> io::Result<i32> {
            let mut id: libc::c_int = 0;
            // SAFETY: sigevent is plain data; all zeroes is a valid value.
            let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
            sev.sigev_notify = libc::SIGEV_NONE;
            // SAFETY: raw timer_create with a valid sigevent and id buffer (the kernel's
            // timer_t is an int; glibc's is not).
            let r = unsafe {
                libc::syscall(
                    libc::SYS_timer_create,
                    libc::CLOCK_MONOTONIC,
                    &sev as *const libc::sigevent,
                    &mut id as *mut libc::c_int,
                )
            };
            crate::sys::check(r)?;
            Ok(id)
        };
        let delete = |id: i32| -> io::Result<()> {
            // SAFETY: plain syscall on a timer of ours.
            crate::sys::check(unsafe { libc::syscall(libc::SYS_timer_delete, id) }).map(drop)
        };
        let start = create().unwrap();
        delete(start).unwrap();
        let want = start + 40;
        assert_eq!(create_until(want, create, delete).unwrap(), want);
        delete(want).unwrap();
    }
}
