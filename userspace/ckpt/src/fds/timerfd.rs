//! timerfds: clock, time left and interval, from fdinfo. Absolute settings come back as the
//! time that was left. Unread expirations cannot be set back as a count: if there were any,
//! the restored timer fires at once (one expiration to read) and goes on from there.

use super::{place, DumpCtx, DumpResult, Fd, FdKind, FdState, Make, MakeCtx, RestoreCtx, View};
use crate::proc::FdEntry;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{
    ClockId, Expiration, TimerFd as NixTimerFd, TimerFlags, TimerSetTimeFlags,
};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::OwnedFd;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimerFd {
    pub clockid: i32,
    /// Nanoseconds until it fires (0: disarmed).
    pub value_ns: u64,
    /// Nanoseconds between expirations (0: once).
    pub interval_ns: u64,
    /// Expirations not read yet.
    pub ticks: u64,
}

pub fn dump(ctx: &mut DumpCtx, e: &FdEntry) -> DumpResult {
    if e.target != "anon_inode:[timerfd]" {
        return Ok(None);
    }
    let field = |name: &str| crate::proc::fdinfo_field(ctx.pid, e.fd, name).ok();
    // "it_value: (SECONDS, NANOSECONDS)", the time left; "it_interval: (...)".
    let ns = |name: &str| {
        let v = field(name)?;
        let (s, n) = v.trim_matches(|c| c == '(' || c == ')').split_once(',')?;
        let (s, n): (u64, u64) = (s.trim().parse().ok()?, n.trim().parse().ok()?);
        s.checked_mul(1_000_000_000)?.checked_add(n)
    };
    let num = |name: &str| field(name)?.parse::<u64>().ok();
    match (
        num("clockid"),
        ns("it_value"),
        ns("it_interval"),
        num("ticks"),
    ) {
        (Some(clockid), Some(value_ns), Some(interval_ns), Some(ticks)) => {
            Ok(Some(FdKind::TimerFd(TimerFd {
                clockid: clockid as i32,
                value_ns,
                interval_ns,
                ticks,
            })))
        }
        _ => Err(super::unsupported(
            "its timer is not readable in /proc/PID/fdinfo",
        )),
    }
}

fn clock(id: i32) -> io::Result<ClockId> {
    Ok(match id {
        libc::CLOCK_REALTIME => ClockId::CLOCK_REALTIME,
        libc::CLOCK_MONOTONIC => ClockId::CLOCK_MONOTONIC,
        libc::CLOCK_BOOTTIME => ClockId::CLOCK_BOOTTIME,
        libc::CLOCK_REALTIME_ALARM => ClockId::CLOCK_REALTIME_ALARM,
        libc::CLOCK_BOOTTIME_ALARM => ClockId::CLOCK_BOOTTIME_ALARM,
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    })
}

fn timespec(ns: u64) -> TimeSpec {
    TimeSpec::new(
        (ns / 1_000_000_000) as libc::time_t,
        (ns % 1_000_000_000) as libc::c_long,
    )
}

impl FdState for TimerFd {
    fn what(&self) -> &'static str {
        "the timerfd"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()> {
        place(self.make(f.flags, &ctx.making())?, f)
    }

    fn describe(&self, _f: &Fd, _v: &View) -> String {
        format!(
            "timerfd (clock {}, fires in {:.3} s, every {:.3} s, {} unread)",
            self.clockid,
            self.value_ns as f64 / 1e9,
            self.interval_ns as f64 / 1e9,
            self.ticks
        )
    }
}

impl Make for TimerFd {
    /// Armed at once with the time that was left; its status flags come when it is placed.
    fn make(&self, _flags: u32, _ctx: &MakeCtx) -> io::Result<OwnedFd> {
        let tfd = NixTimerFd::new(clock(self.clockid)?, TimerFlags::empty())?;
        let first = if self.ticks > 0 { 1 } else { self.value_ns };
        let expiration = match (first, self.interval_ns) {
            (0, _) => None,
            (v, 0) => Some(Expiration::OneShot(timespec(v))),
            (v, i) => Some(Expiration::IntervalDelayed(timespec(v), timespec(i))),
        };
        if let Some(e) = expiration {
            tfd.set(e, TimerSetTimeFlags::empty())?;
        }
        Ok(tfd.into())
    }
}
