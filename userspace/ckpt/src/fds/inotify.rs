//! inotify instances with their watches, each back at its watch descriptor.
//!
//! fdinfo lists every watch (wd, mask, the watched inode and its file handle); the object is
//! found by path (`notify.rs`). The kernel numbers an instance's watches with a cyclic idr
//! starting at 1: a wd is never given twice in a row, even once freed. So a watch gets its
//! original wd by adding it and, while the kernel gives a lower one, removing it and adding
//! it again (as CRIU does). Each removal queues an IN_IGNORED event, so the queue is emptied
//! once the watches are in place: events the watched objects get while the restore runs are
//! lost, as are those between the checkpoint and the restore. Events queued and unread at
//! the checkpoint are not carried (a warning says how many bytes): a queue cannot be read
//! without consuming it.

use super::notify::{self, Watched};
use super::{place, DumpCtx, DumpError, DumpResult, Fd, FdKind, FdState, RestoreCtx, View};
use crate::proc::FdEntry;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify as NixInotify};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inotify {
    /// In wd order.
    pub watches: Vec<InotifyWatch>,
    /// Bytes of events queued and unread at the checkpoint (not carried).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InotifyWatch {
    pub wd: i32,
    /// The mask as inotify_add_watch takes it (events, IN_ONESHOT, IN_EXCL_UNLINK).
    pub mask: u32,
    pub object: Watched,
}

pub(crate) fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub fn dump(ctx: &mut DumpCtx, e: &FdEntry) -> DumpResult {
    if e.target != "anon_inode:inotify" {
        return Ok(None);
    }
    let info = std::fs::read_to_string(format!("/proc/{}/fdinfo/{}", ctx.pid, e.fd))
        .map_err(super::io_error("reading its fdinfo"))?;
    let mut watches = Vec::new();
    for line in info.lines().filter_map(|l| l.strip_prefix("inotify ")) {
        let f = notify::fields(line);
        let wd: i32 = notify::hex(&f, "wd")?;
        let mask: u32 = notify::hex(&f, "mask")?;
        let object = notify::watched(&f, ctx.pid).map_err(|e| about_watch(wd, e))?;
        watches.push(InotifyWatch { wd, mask, object });
    }
    watches.sort_by_key(|w| w.wd);
    let dropped = notify::unread_events(ctx.pid, e.fd, "an inotify instance")?;
    Ok(Some(FdKind::Inotify(Inotify { watches, dropped })))
}

fn about_watch(wd: i32, e: DumpError) -> DumpError {
    match e {
        DumpError::Unsupported(why) => DumpError::Unsupported(format!("its watch {wd}: {why}")),
        other => other,
    }
}

/// Add-and-remove rounds allowed per instance to reach the wds (a program that added and
/// removed a million watches is not carried).
const MAX_ROUNDS: u32 = 1 << 20;

impl FdState for Inotify {
    fn what(&self) -> &'static str {
        "the inotify instance"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()> {
        // Non-blocking while made, so that the queue can be emptied; `place` sets the flags
        // the fd had.
        let ino = NixInotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let mut rounds = 0;
        for w in &self.watches {
            add_at_wd(&ino, w, ctx, &mut rounds).map_err(|e| notify::watching(&w.object, e))?;
        }
        drain(&ino);
        place(ino.into(), f)
    }

    fn valid(&self, _f: &Fd, _v: &View) -> bool {
        let increasing = self.watches.windows(2).all(|w| w[0].wd < w[1].wd);
        let objects: BTreeSet<(u32, u64)> = self
            .watches
            .iter()
            .map(|w| (w.object.sdev, w.object.ino))
            .collect();
        increasing
            && objects.len() == self.watches.len()
            && self
                .watches
                .iter()
                .all(|w| w.wd > 0 && w.mask & libc::IN_ALL_EVENTS != 0 && notify::valid(&w.object))
    }

    fn describe(&self, _f: &Fd, _v: &View) -> String {
        let watches: Vec<String> = self
            .watches
            .iter()
            .map(|w| format!("wd {} {} mask {:#x}", w.wd, w.object.describe(), w.mask))
            .collect();
        let dropped = if self.dropped > 0 {
            format!("; {} bytes of events dropped", self.dropped)
        } else {
            String::new()
        };
        format!("inotify ({}{dropped})", watches.join(", "))
    }
}

/// Adds watch `w` so that it gets its wd: a lower wd is removed and the watch added again
/// (the idr moves on). IN_MASK_CREATE makes an object already watched by this instance (a
/// path that now leads to another watch's object) an error instead of changing that watch.
fn add_at_wd(
    ino: &NixInotify,
    w: &InotifyWatch,
    ctx: &RestoreCtx,
    rounds: &mut u32,
) -> io::Result<()> {
    let mut flags = AddWatchFlags::from_bits_retain(w.mask | libc::IN_MASK_CREATE);
    if w.object.symlink {
        flags |= AddWatchFlags::IN_DONT_FOLLOW;
    }
    loop {
        let wd = notify::as_user_or_root(ctx, || ino.add_watch(w.object.path.as_str(), flags))?;
        let got = wd.as_raw();
        if got == w.wd {
            return Ok(());
        }
        ino.rm_watch(wd)?;
        *rounds += 1;
        if got > w.wd || *rounds > MAX_ROUNDS {
            return Err(io::Error::other(format!(
                "could not get watch descriptor {} back (the kernel gave {got})",
                w.wd
            )));
        }
        // Keep the IN_IGNORED events of the removals from overflowing the queue.
        if rounds.is_multiple_of(1024) {
            drain(ino);
        }
    }
}

/// Reads and discards every queued event (the fd is non-blocking).
fn drain(ino: &NixInotify) {
    while ino.read_events().is_ok_and(|v| !v.is_empty()) {}
}
