//! eventfds with their counter (and semaphore mode), from fdinfo.

use super::{fdinfo_number, place, DumpCtx, DumpResult, Fd, FdKind, FdState, Make, MakeCtx};
use super::{RestoreCtx, View};
use crate::proc::FdEntry;
use nix::sys::eventfd::{EfdFlags, EventFd as NixEventFd};
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventFd {
    pub count: u64,
    pub semaphore: bool,
}

pub fn dump(ctx: &mut DumpCtx, e: &FdEntry) -> DumpResult {
    if e.target != "anon_inode:[eventfd]" {
        return Ok(None);
    }
    let count = fdinfo_number(ctx.pid, e.fd, "eventfd-count", 16)
        .ok_or_else(|| super::unsupported("its state is not readable in /proc/PID/fdinfo"))?;
    let semaphore = fdinfo_number(ctx.pid, e.fd, "eventfd-semaphore", 10) == Some(1);
    Ok(Some(FdKind::EventFd(EventFd { count, semaphore })))
}

impl FdState for EventFd {
    fn what(&self) -> &'static str {
        "the eventfd"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> std::io::Result<()> {
        place(self.make(f.flags, &ctx.making())?, f)
    }

    fn describe(&self, _f: &Fd, _v: &View) -> String {
        format!(
            "eventfd (count {}{})",
            self.count,
            if self.semaphore { ", semaphore" } else { "" }
        )
    }
}

impl Make for EventFd {
    /// Its status flags come when it is placed.
    fn make(&self, _flags: u32, _ctx: &MakeCtx) -> std::io::Result<OwnedFd> {
        let flags = if self.semaphore {
            EfdFlags::EFD_SEMAPHORE
        } else {
            EfdFlags::empty()
        };
        // The counter is any 64-bit value: written after creation.
        let efd = NixEventFd::from_flags(flags)?;
        if self.count > 0 {
            efd.write(self.count)?;
        }
        Ok(efd.into())
    }
}
