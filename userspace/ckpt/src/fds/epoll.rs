//! epoll instances: what they watch comes from fdinfo; each watched file is checked to still
//! be the process's fd of the number it was added under (epoll keeps watching a file after
//! that fd is closed). Restored after every other fd, watching the same numbers.

use super::RestoreCtx;
use super::{place, placed, unsupported, DumpCtx, DumpResult, Fd, FdKind, FdState, View};
use crate::proc::FdEntry;
use nix::sys::epoll::{Epoll as NixEpoll, EpollCreateFlags, EpollEvent, EpollFlags};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;

const TARGET: &str = "anon_inode:[eventpoll]";

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
        let target = std::fs::read_link(&link)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default();
        if target == TARGET {
            return Err(unsupported(
                "epoll instances watching other epoll instances are not supported yet",
            ));
        }
        out.push(EpollWatch { fd, events, data });
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

    fn restore(&self, f: &Fd, _ctx: &mut RestoreCtx) -> std::io::Result<()> {
        let ep = NixEpoll::new(EpollCreateFlags::empty())?;
        for w in &self.watches {
            let ev = EpollEvent::new(EpollFlags::from_bits_retain(w.events as i32), w.data);
            ep.add(placed(w.fd), ev)?;
        }
        place(ep.0, f)
    }

    /// Every watched fd is another, non-epoll fd of the table (so it exists when this one is
    /// made: placed, or stdio the restorer kept).
    fn valid(&self, _f: &Fd, v: &View) -> bool {
        self.watches.iter().all(|w| {
            w.fd >= 0
                && v.fds
                    .iter()
                    .any(|o| o.fd == w.fd && !matches!(o.kind, FdKind::Epoll(_)))
        })
    }

    fn describe(&self, _f: &Fd, _v: &View) -> String {
        let fds: Vec<String> = self.watches.iter().map(|w| w.fd.to_string()).collect();
        format!("epoll watching fds {}", fds.join(", "))
    }
}
