//! epoll instances: what they watch comes from fdinfo; each watched file is checked to still
//! be the process's fd of the number it was added under (epoll keeps watching a file after
//! that fd is closed). Restored after every other fd, watching the same numbers.
//!
//! An instance several processes share (inherited across fork) has one interest list, whose
//! items are (file, fd number) pairs of whichever process called epoll_ctl: each watch is
//! added again by a process sharing the instance that has the watched file under that
//! number (kcmp KCMP_EPOLL_TFD finds it), once every fd of that process is placed.

use super::RestoreCtx;
use super::{place, placed, unsupported, DumpCtx, DumpResult, Fd, FdKind, FdState, View};
use super::{DumpError, Make, MakeCtx};
use crate::proc::FdEntry;
use nix::sys::epoll::{Epoll as NixEpoll, EpollCreateFlags, EpollEvent, EpollFlags};
use serde::{Deserialize, Serialize};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

pub const TARGET: &str = "anon_inode:[eventpoll]";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Epoll {
    pub watches: Vec<EpollWatch>,
}

/// One file an epoll instance watches: its fd number, the event mask (with EPOLLET,
/// EPOLLONESHOT... as the kernel keeps them) and the user data.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct EpollWatch {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
    /// For an instance several processes share: the process (index in the image) whose fd
    /// `fd` is the watched file, which adds it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<usize>,
}

impl EpollWatch {
    /// Adds it to `ep` again, watching `file` (the placed fd it names).
    pub fn add_to(&self, ep: &NixEpoll, file: BorrowedFd) -> std::io::Result<()> {
        let ev = EpollEvent::new(EpollFlags::from_bits_retain(self.events as i32), self.data);
        Ok(ep.add(file, ev)?)
    }
}

pub fn dump(ctx: &mut DumpCtx, e: &FdEntry) -> DumpResult {
    if e.target != TARGET {
        return Ok(None);
    }
    let pid = ctx.pid;
    let watches = crate::proc::epoll_watches(pid, e.fd)
        .map_err(super::io_error("reading an epoll instance"))?;
    let mut out = Vec::new();
    for (fd, events, data, ino) in watches {
        let link = format!("/proc/{pid}/fd/{fd}");
        if !std::fs::metadata(&link).is_ok_and(|m| m.ino() == ino) {
            return Err(unsupported(format!(
                "it watches a file that is no longer open as fd {fd}"
            )));
        }
        refuse_nested(pid, fd)?;
        out.push(EpollWatch {
            fd,
            events,
            data,
            by: None,
        });
    }
    Ok(Some(FdKind::Epoll(Epoll { watches: out })))
}

fn refuse_nested(pid: i32, fd: i32) -> Result<(), DumpError> {
    let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_default();
    if target == TARGET {
        return Err(unsupported(
            "epoll instances watching other epoll instances are not supported yet",
        ));
    }
    Ok(())
}

/// Records the epoll instance at `e`, which the processes `holders` ((image index, pid) each,
/// in image order) share: each watch names the first of them whose fd of that number is the
/// watched file. A file none of them has under its number cannot be added again (epoll_ctl
/// takes the caller's fd): refused.
pub fn dump_shared(ctx: &DumpCtx, e: &FdEntry, holders: &[(usize, i32)]) -> DumpResult {
    let pid = ctx.pid;
    let watches = crate::proc::epoll_watches(pid, e.fd)
        .map_err(super::io_error("reading an epoll instance"))?;
    let mut out: Vec<EpollWatch> = Vec::new();
    for (fd, events, data, _) in watches {
        // The n-th item added under this number (fdinfo and kcmp walk the items alike).
        let toff = out.iter().filter(|w| w.fd == fd).count() as u32;
        let mut by = None;
        for &(process, holder) in holders {
            if std::fs::symlink_metadata(format!("/proc/{holder}/fd/{fd}")).is_err() {
                continue; // no fd of that number
            }
            let target = crate::sys::is_epoll_target((holder, fd), (pid, e.fd), (fd, toff))
                .map_err(super::io_error("comparing an epoll's watched file (kcmp)"))?;
            if target {
                by = Some((process, holder));
                break;
            }
        }
        let Some((process, holder)) = by else {
            let pids: Vec<String> = holders.iter().map(|h| h.1.to_string()).collect();
            return Err(unsupported(format!(
                "processes {} share this epoll instance, which watches a file none of them \
                 has open as fd {fd} (epoll_ctl could only add it back through that number)",
                pids.join(", ")
            )));
        };
        refuse_nested(holder, fd)?;
        out.push(EpollWatch {
            fd,
            events,
            data,
            by: Some(process),
        });
    }
    Ok(Some(FdKind::Epoll(Epoll { watches: out })))
}

impl FdState for Epoll {
    fn what(&self) -> &'static str {
        "the epoll instance"
    }

    fn after_others(&self) -> bool {
        true
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> std::io::Result<()> {
        let ep = NixEpoll(self.make(f.flags, &ctx.making())?);
        for w in &self.watches {
            w.add_to(&ep, placed(w.fd))?;
        }
        place(ep.0, f)
    }

    /// Every watched fd is another, non-epoll fd of the table (so it exists when this one is
    /// made: placed, or stdio the restorer kept); no watch names another process.
    fn valid(&self, _f: &Fd, v: &View) -> bool {
        self.watches
            .iter()
            .all(|w| w.by.is_none() && watchable(w.fd, v))
    }

    fn describe(&self, _f: &Fd, _v: &View) -> String {
        let fds: Vec<String> = self
            .watches
            .iter()
            .map(|w| match w.by {
                Some(p) => format!("{} (of process #{p})", w.fd),
                None => w.fd.to_string(),
            })
            .collect();
        format!("epoll watching fds {}", fds.join(", "))
    }
}

/// Whether fd `fd` of the process whose table `v` shows can be watched: it is there and is
/// not an epoll instance (its own or one it shares).
pub fn watchable(fd: i32, v: &View) -> bool {
    fd >= 0
        && v.fds.iter().any(|o| {
            o.fd == fd
                && match &o.kind {
                    FdKind::Epoll(_) => false,
                    FdKind::OpenFile(end) => !matches!(
                        v.shared.open_files.get(end.open_file).map(|f| &f.kind),
                        Some(FdKind::Epoll(_)) | None
                    ),
                    _ => true,
                }
        })
}

impl Make for Epoll {
    /// An empty instance: the watches are added by whoever has their fds.
    fn make(&self, _flags: u32, _ctx: &MakeCtx) -> std::io::Result<OwnedFd> {
        Ok(NixEpoll::new(EpollCreateFlags::empty())?.0)
    }
}
