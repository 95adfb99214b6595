//! Pipes whose both ends the process holds, with the bytes in them. The bytes are peeked with
//! tee(2) through a copy of the read end (pidfd_getfd), so the target loses nothing; on
//! restore a new pipe of the same capacity is filled with them, and every fd of the pipe is
//! an end of that one pipe again. (Pipes to other processes come with process trees.)

use super::{DumpCtx, DumpError, DumpResult, Fd, FdKind, FdState, RestoreCtx, View};
use crate::image::{section_is, Section, SectionKind};
use crate::proc::FdEntry;
use nix::fcntl::{fcntl, tee, FcntlArg, SpliceFFlags};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd, OwnedFd};

/// Bytes that were in a pipe, unread.
pub const PIPE_DATA: SectionKind = SectionKind::named("pipe_data");

/// A pipe inside the process, with what was in it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pipe {
    /// The pipe's inode number when checkpointed (for humans).
    pub inode: u64,
    /// Its capacity (F_GETPIPE_SZ).
    pub capacity: u32,
    /// Index of the `PIPE_DATA` section with the unread bytes, if any.
    pub data_section: Option<usize>,
}

/// One end of a pipe of the process's table; `pipe` indexes `FdTable::pipes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PipeEnd {
    pub pipe: usize,
    pub write_end: bool,
}

fn is_read_end(e: &FdEntry) -> bool {
    e.flags as i32 & libc::O_ACCMODE == libc::O_RDONLY
}

/// Where the ends of a pipe are in the tree: a process and fd holding each.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ends {
    pub read: Option<(i32, i32)>,
    pub write: Option<(i32, i32)>,
}

impl Ends {
    /// Both ends are the tree's: the pipe can be carried.
    pub fn inside(&self) -> bool {
        self.read.is_some() && self.write.is_some()
    }

    /// Notes fd `e` of process `pid`.
    pub fn add(&mut self, pid: i32, e: &FdEntry) {
        let end = if is_read_end(e) {
            &mut self.read
        } else {
            &mut self.write
        };
        end.get_or_insert((pid, e.fd));
    }
}

/// Every pipe some process outside `tree` holds (by inode), from a scan of every /proc/PID/fd.
fn pipes_held_outside(tree: &std::collections::BTreeSet<i32>) -> std::collections::BTreeSet<u64> {
    let Ok(all) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    let pids = all.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok());
    let mut out = std::collections::BTreeSet::new();
    for p in pids.filter(|p| !tree.contains(p) && *p != std::process::id() as i32) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{p}/fd")) else {
            continue;
        };
        for f in fds.flatten() {
            if let Ok(l) = std::fs::read_link(f.path()) {
                if let Some(ino) = crate::proc::bracketed_inode(&l.to_string_lossy(), "pipe") {
                    out.insert(ino);
                }
            }
        }
    }
    out
}

pub fn dump(ctx: &mut DumpCtx, e: &FdEntry) -> DumpResult {
    let Some(ino) = crate::proc::bracketed_inode(&e.target, "pipe") else {
        return Ok(None);
    };
    let end = |pipe| {
        FdKind::Pipe(PipeEnd {
            pipe,
            write_end: !is_read_end(e),
        })
    };
    if let Some(&pipe) = ctx.shared.pipe_index.get(&ino) {
        return Ok(Some(end(pipe)));
    }
    let ends = ctx
        .shared
        .census
        .pipes
        .get(&ino)
        .copied()
        .unwrap_or_default();
    // Held outside the tree too (a sub-make's jobserver pipe, a parent that leaked both ends
    // into it): carried, it would be cut off from that holder. One scan of every process's
    // fds finds all such pipes.
    let held_outside = ctx
        .shared
        .pipes_outside
        .get_or_insert_with(|| pipes_held_outside(&ctx.shared.census.pids))
        .contains(&ino);
    if held_outside || !ends.inside() {
        // The other end is outside the tree, or closed everywhere (then it stays closed).
        let outside = super::holders_outside("pipe", ino, &ctx.shared.census.pids);
        if !outside.is_empty() {
            return Err(super::unsupported(format!(
                "its other end is held by process {} outside the tree (only pipes inside the \
                 tree are carried)",
                outside.join(", ")
            )));
        }
    }
    let (holder, fd) = ends.read.or(ends.write).unwrap_or((ctx.pid, e.fd));
    let ours = crate::sys::steal_fd(holder, fd).map_err(super::io_error("pidfd_getfd"))?;
    let capacity = pipe_size(&ours).map_err(super::io_error("F_GETPIPE_SZ"))?;
    // Bytes are in it only for a reader to come: peeked through a read end.
    let data = match ends.read {
        Some(_) => peek(&ours).map_err(super::io_error("reading pipe data"))?,
        None => Vec::new(),
    };
    let data_section = if data.is_empty() {
        None
    } else {
        Some(
            ctx.image
                .add_blob(PIPE_DATA, &data)
                .map_err(DumpError::Image)?,
        )
    };
    let pipes = &mut ctx.shared.table.pipes;
    pipes.push(Pipe {
        inode: ino,
        capacity,
        data_section,
    });
    let pipe = pipes.len() - 1;
    ctx.shared.pipe_index.insert(ino, pipe);
    Ok(Some(end(pipe)))
}

fn pipe_size(fd: impl AsFd) -> io::Result<u32> {
    Ok(fcntl(fd.as_fd(), FcntlArg::F_GETPIPE_SZ)? as u32)
}

/// The bytes in the pipe whose read end is `read_end`, without consuming them (tee(2) into a
/// pipe of ours of the same capacity, then read from that).
pub(super) fn peek(read_end: &OwnedFd) -> io::Result<Vec<u8>> {
    let cap = pipe_size(read_end)?;
    let (r, w) = nix::unistd::pipe()?;
    fcntl(&w, FcntlArg::F_SETPIPE_SZ(cap as i32))?;
    let n = match tee(read_end, &w, cap as usize, SpliceFFlags::SPLICE_F_NONBLOCK) {
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN) => 0, // empty
        Err(e) => return Err(e.into()),
    };
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match nix::unistd::read(&r, &mut buf[got..])? {
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            k => got += k,
        }
    }
    Ok(buf)
}

/// A new pipe like `p`, holding `data`: [read end, write end].
pub fn make(p: &Pipe, data: &[u8]) -> io::Result<[OwnedFd; 2]> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK)?;
    // The original capacity, which holds the saved bytes (they were in it).
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(p.capacity as i32));
    // Non-blocking: bytes that do not fit (a capacity this machine refused) fail here, not
    // hang; each fd gets its own flags when placed.
    super::write_all(&w, data)?;
    Ok([r, w])
}

impl FdState for PipeEnd {
    fn what(&self) -> &'static str {
        "the pipe"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()> {
        let ends = ctx
            .shared
            .pipes
            .get(self.pipe)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        super::place_copy(&ends[usize::from(self.write_end)], f)
    }

    fn valid(&self, _f: &Fd, v: &View) -> bool {
        self.pipe < v.shared.pipes.len()
    }

    fn describe(&self, _f: &Fd, v: &View) -> String {
        let bytes = v
            .shared
            .pipes
            .get(self.pipe)
            .and_then(|p| p.data_section)
            .and_then(|i| v.sections.get(i))
            .map_or(0, |s| s.len);
        format!(
            "pipe #{} {} end ({bytes} bytes unread)",
            self.pipe,
            if self.write_end { "write" } else { "read" }
        )
    }
}

/// The table's pipes refer to sections of the right kind, holding no more than fits.
pub fn validate(pipes: &[Pipe], sections: &[Section]) -> Result<(), String> {
    for p in pipes {
        let len = p
            .data_section
            .and_then(|i| sections.get(i))
            .map_or(0, |s| s.len);
        let kind_ok = p
            .data_section
            .is_none_or(|i| section_is(sections, i, &PIPE_DATA));
        if !kind_ok || len > u64::from(p.capacity) || p.capacity > 1 << 30 {
            return Err(format!("bad pipe (inode {})", p.inode));
        }
    }
    Ok(())
}
