//! signalfds with the signals they take, from fdinfo.

use super::{fdinfo_number, place, DumpCtx, DumpResult, Fd, FdKind, FdState, Make, MakeCtx};
use super::{RestoreCtx, View};
use crate::proc::FdEntry;
use nix::sys::signal::SigSet;
use nix::sys::signalfd::{SfdFlags, SignalFd as NixSignalFd};
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignalFd {
    /// A mask, bit n-1 for signal n.
    pub mask: u64,
}

pub fn dump(ctx: &mut DumpCtx, e: &FdEntry) -> DumpResult {
    if e.target != "anon_inode:[signalfd]" {
        return Ok(None);
    }
    let mask = fdinfo_number(ctx.pid, e.fd, "sigmask", 16)
        .ok_or_else(|| super::unsupported("its state is not readable in /proc/PID/fdinfo"))?;
    Ok(Some(FdKind::SignalFd(SignalFd { mask })))
}

/// The signal set of a mask (bit n-1 for signal n), real-time signals included (nix's
/// `Signal` names only the classic ones, hence libc's sigaddset).
fn sigset_of(mask: u64) -> SigSet {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before any other use;
    // sigaddset only writes inside it.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for n in 1..=64 {
            if mask & (1u64 << (n - 1)) != 0 {
                libc::sigaddset(&mut set, n);
            }
        }
        SigSet::from_sigset_t_unchecked(set)
    }
}

impl FdState for SignalFd {
    fn what(&self) -> &'static str {
        "the signalfd"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> std::io::Result<()> {
        place(self.make(f.flags, &ctx.making())?, f)
    }

    fn describe(&self, _f: &Fd, _v: &View) -> String {
        format!("signalfd (signals {:#x})", self.mask)
    }
}

impl Make for SignalFd {
    /// Its status flags come when it is placed. (Whoever reads it reads its own signals.)
    fn make(&self, _flags: u32, _ctx: &MakeCtx) -> std::io::Result<OwnedFd> {
        Ok(NixSignalFd::with_flags(&sigset_of(self.mask), SfdFlags::empty())?.into())
    }
}
