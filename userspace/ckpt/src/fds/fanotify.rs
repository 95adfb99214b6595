//! fanotify instances with their inode, mount and filesystem marks.
//!
//! fdinfo gives the instance's fanotify_init flags and event-file flags, then one line per
//! mark: an inode (found by path as inotify's are, `notify.rs`), a mount (by its id, found in
//! this mount namespace) or a filesystem (any mount of its device), each with its flags, mask
//! and ignore mask. Restore: fanotify_init with those flags (it needs CAP_SYS_ADMIN: the
//! restorer still has every capability while it makes fds; its filesystem ids are the
//! process's user's, which fanotify_init does not look at), and fanotify_mark for each mark,
//! as the process's user with root as the fallback. Marks on a mount namespace are refused.
//! Unread events are not carried (a warning says how many bytes); permission events read and
//! not yet answered are the original's to answer (with --kill, the kernel allows them).

use super::notify::{self, Watched};
use super::{place, unsupported, DumpCtx, DumpError, DumpResult, Fd, FdKind, FdState};
use super::{RestoreCtx, View};
use crate::proc::FdEntry;
use nix::fcntl::AT_FDCWD;
use nix::sys::fanotify::{EventFFlags, Fanotify as NixFanotify, InitFlags, MarkFlags, MaskFlags};
use serde::{Deserialize, Serialize};
use std::io;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fanotify {
    /// fanotify_init's flags (class, FAN_REPORT_*, FAN_UNLIMITED_*).
    pub flags: u32,
    /// fanotify_init's event_f_flags: the open flags of the files events carry.
    pub event_flags: u32,
    pub marks: Vec<FanotifyMark>,
    /// Bytes of events queued and unread at the checkpoint (not carried).
    #[serde(default, skip_serializing_if = "super::inotify::is_zero")]
    pub dropped: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FanotifyMark {
    pub on: MarkOn,
    /// The mark's flags as fdinfo shows them (FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_EVICTABLE,
    /// FAN_MARK_IGNORE).
    pub flags: u32,
    pub mask: u64,
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub ignored_mask: u64,
}

fn is_zero64(n: &u64) -> bool {
    *n == 0
}

/// What a mark is on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum MarkOn {
    Inode(Watched),
    /// A mount, by where it is mounted.
    Mount {
        path: String,
    },
    /// A whole filesystem, by a mount of it.
    Filesystem {
        path: String,
    },
}

pub fn dump(ctx: &mut DumpCtx, e: &FdEntry) -> DumpResult {
    if e.target != "anon_inode:[fanotify]" {
        return Ok(None);
    }
    let info = std::fs::read_to_string(format!("/proc/{}/fdinfo/{}", ctx.pid, e.fd))
        .map_err(super::io_error("reading its fdinfo"))?;
    let mut header = None;
    let mut marks = Vec::new();
    for line in info.lines().filter_map(|l| l.strip_prefix("fanotify ")) {
        let f = notify::fields(line);
        if line.starts_with("flags:") {
            header = Some((notify::hex(&f, "flags")?, notify::hex(&f, "event-flags")?));
        } else {
            marks.push(mark(&f, ctx.pid)?);
        }
    }
    // fdinfo lists the newest mark first: recorded (and added again) oldest first, so that
    // the restored instance lists them as the original did.
    marks.reverse();
    let (flags, event_flags) =
        header.ok_or_else(|| unsupported("its fdinfo shows no fanotify flags"))?;
    let dropped = notify::unread_events(ctx.pid, e.fd, "a fanotify instance")?;
    Ok(Some(FdKind::Fanotify(Fanotify {
        flags,
        event_flags,
        marks,
        dropped,
    })))
}

/// One mark line of fdinfo.
fn mark(f: &[(&str, &str)], pid: i32) -> Result<FanotifyMark, DumpError> {
    let on = if notify::field(f, "ino").is_some() {
        MarkOn::Inode(notify::watched(f, pid)?)
    } else if let Some(id) = notify::field(f, "mnt_id") {
        let id = u32::from_str_radix(id, 16).map_err(|_| unsupported("a bad mnt_id"))?;
        let path = notify::mount_point(id).ok_or_else(|| {
            unsupported(format!(
                "it marks mount {id}, not in ckpt's mount namespace"
            ))
        })?;
        MarkOn::Mount { path: utf8(path)? }
    } else if notify::field(f, "mnt_ns").is_some() {
        return Err(unsupported("marks on a mount namespace are not carried"));
    } else {
        let sdev: u32 = notify::hex(f, "sdev")?;
        let path = notify::mount_of_dev(sdev).ok_or_else(|| {
            unsupported(format!(
                "it marks filesystem {sdev:#x}, mounted nowhere here"
            ))
        })?;
        MarkOn::Filesystem { path: utf8(path)? }
    };
    Ok(FanotifyMark {
        on,
        flags: notify::hex(f, "mflags")?,
        mask: notify::hex(f, "mask")?,
        ignored_mask: notify::hex(f, "ignored_mask")?,
    })
}

fn utf8(p: std::path::PathBuf) -> Result<String, DumpError> {
    p.into_os_string()
        .into_string()
        .map_err(|p| unsupported(format!("the marked mount {p:?} is not UTF-8")))
}

impl FdState for Fanotify {
    fn what(&self) -> &'static str {
        "the fanotify instance"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()> {
        let fan = NixFanotify::init(
            InitFlags::from_bits_retain(self.flags),
            EventFFlags::from_bits_retain(self.event_flags),
        )?;
        for m in &self.marks {
            mark_again(&fan, m, ctx)?;
        }
        place(fan.into(), f)
    }

    fn valid(&self, _f: &Fd, _v: &View) -> bool {
        self.marks.iter().all(|m| match &m.on {
            MarkOn::Inode(w) => notify::valid(w),
            MarkOn::Mount { path } | MarkOn::Filesystem { path } => path.starts_with('/'),
        })
    }

    fn describe(&self, _f: &Fd, _v: &View) -> String {
        let marks: Vec<String> = self.marks.iter().map(FanotifyMark::describe).collect();
        let dropped = if self.dropped > 0 {
            format!("; {} bytes of events dropped", self.dropped)
        } else {
            String::new()
        };
        format!(
            "fanotify (flags {:#x}, event flags {:#x}; {}{dropped})",
            self.flags,
            self.event_flags,
            marks.join(", ")
        )
    }
}

impl FanotifyMark {
    fn describe(&self) -> String {
        let on = match &self.on {
            MarkOn::Inode(w) => w.describe(),
            MarkOn::Mount { path } => format!("mount {path}"),
            MarkOn::Filesystem { path } => format!("filesystem of {path}"),
        };
        let ignored = if self.ignored_mask != 0 {
            format!(" ignoring {:#x}", self.ignored_mask)
        } else {
            String::new()
        };
        format!("{on} mask {:#x}{ignored}", self.mask)
    }
}

/// Adds mark `m` again: its mask, then its ignore mask (new style, FAN_MARK_IGNORE, or the
/// old FAN_MARK_IGNORED_MASK, as it was added).
fn mark_again(fan: &NixFanotify, m: &FanotifyMark, ctx: &RestoreCtx) -> io::Result<()> {
    let (kind, path) = match &m.on {
        MarkOn::Inode(w) if w.symlink => (MarkFlags::FAN_MARK_DONT_FOLLOW, &w.path),
        MarkOn::Inode(w) => (MarkFlags::FAN_MARK_INODE, &w.path),
        MarkOn::Mount { path } => (MarkFlags::FAN_MARK_MOUNT, path),
        MarkOn::Filesystem { path } => (MarkFlags::FAN_MARK_FILESYSTEM, path),
    };
    let flags = MarkFlags::from_bits_retain(m.flags);
    let base = MarkFlags::FAN_MARK_ADD | kind | (flags & MarkFlags::FAN_MARK_EVICTABLE);
    let add = |how: MarkFlags, mask: u64| {
        notify::as_user_or_root(ctx, || {
            fan.mark(
                how,
                MaskFlags::from_bits_retain(mask),
                AT_FDCWD,
                Some(path.as_str()),
            )
        })
        .map_err(|e| io::Error::new(e.kind(), format!("marking {path}: {e}")))
    };
    if m.mask != 0 {
        add(base, m.mask)?;
    }
    if m.ignored_mask != 0 {
        let style = if flags.contains(MarkFlags::FAN_MARK_IGNORE) {
            MarkFlags::FAN_MARK_IGNORE
        } else {
            MarkFlags::FAN_MARK_IGNORED_MASK
        };
        let surv = flags & MarkFlags::FAN_MARK_IGNORED_SURV_MODIFY;
        add(base | style | surv, m.ignored_mask)?;
    }
    Ok(())
}
