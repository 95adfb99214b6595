//! Pseudo-terminals whose master the tree holds (a program under tmux, screen or script):
//! recorded once with their index, the slave's settings (termios, window size, owner and
//! mode) and the master's packet mode and lock; made again by ckpt before the restorers fork
//! (the same /dev/pts index when it is free), the master's holders taking it as a shared
//! object, every slave fd a new open of the new slave. A session whose controlling terminal
//! it is gets it back (`Ctty`), with its foreground process group.
//!
//! The bytes written to one side and not yet read on the other come along (`pty_data.rs`).
//! A slave whose master is outside the tree (the caller's terminal, an ssh session) is a
//! plain terminal, reopened by path (`file.rs`).

use super::pty_data::{self, Queue, Queued};
use super::{DumpCtx, DumpError, DumpResult, Fd, FdKind, FdState, RestoreCtx, View};
use crate::image::Section;
use crate::proc::FdEntry;
use crate::sys;
use nix::sys::termios::{tcgetattr, tcsetattr, SetArg, Termios};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// The pty master device, and the majors of pty slaves (index = (major-136)*256 + minor).
const PTMX: (u32, u32) = (5, 2);
const SLAVE_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;

/// A pty pair of the tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pty {
    /// N of /dev/pts/N when checkpointed.
    pub index: u32,
    /// The slave's settings; None while the pty was still locked (no slave opened yet).
    pub termios: Option<TermiosState>,
    /// Rows, columns, x and y pixels.
    pub window: [u16; 4],
    pub packet_mode: bool,
    pub locked: bool,
    /// The slave device's owner and permission bits (grantpt's work).
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// What it held, unread, each way (absent: nothing, or an image from before this was
    /// carried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<Queued>,
}

/// `struct termios`, field by field.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TermiosState {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    pub cc: Vec<u8>,
    pub ispeed: u32,
    pub ospeed: u32,
}

/// A master (`slave: false`) or slave fd of `Shared::ptys[pty]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PtyEnd {
    pub pty: usize,
    pub slave: bool,
}

/// The controlling terminal of the session a process leads: a pty of the tree.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ctty {
    pub pty: usize,
    /// The terminal's foreground process group.
    pub foreground: i32,
}

/// The pty index a device number names, if it is a pty slave.
pub fn slave_index(rdev: u64) -> Option<u32> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    SLAVE_MAJORS
        .contains(&major)
        .then(|| (major - SLAVE_MAJORS.start()) * 256 + minor)
}

/// For the census: the index of the pty whose master fd `e` of `pid` is, if it is one.
pub fn master_index(pid: i32, e: &FdEntry) -> Option<u32> {
    let meta = std::fs::metadata(format!("/proc/{pid}/fd/{}", e.fd)).ok()?;
    if (libc::major(meta.rdev()), libc::minor(meta.rdev())) != PTMX {
        return None;
    }
    let master = sys::steal_fd(pid, e.fd).ok()?;
    sys::pty_index(&master).ok()
}

pub fn dump(ctx: &mut DumpCtx, e: &FdEntry) -> DumpResult {
    if !e.target.starts_with("/dev/") {
        return Ok(None);
    }
    let Ok(meta) = std::fs::metadata(format!("/proc/{}/fd/{}", ctx.pid, e.fd)) else {
        return Ok(None);
    };
    if !std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()) {
        return Ok(None);
    }
    let rdev = meta.rdev();
    let (index, slave) = if (libc::major(rdev), libc::minor(rdev)) == PTMX {
        let master = sys::steal_fd(ctx.pid, e.fd).map_err(super::io_error("pidfd_getfd"))?;
        (
            sys::pty_index(&master).map_err(super::io_error("TIOCGPTN"))?,
            false,
        )
    } else {
        match slave_index(rdev) {
            // A terminal whose master is not the tree's: reopened by path.
            Some(i) if ctx.shared.census.pty_masters.contains_key(&i) => (i, true),
            _ => return Ok(None),
        }
    };
    let pty = match ctx.shared.pty_index.get(&index) {
        Some(&i) => i,
        None => record(ctx, index)?,
    };
    Ok(Some(FdKind::Pty(PtyEnd { pty, slave })))
}

/// Records pty `index` through its master (held by a process of the tree, from the census).
fn record(ctx: &mut DumpCtx, index: u32) -> Result<usize, DumpError> {
    let &(pid, fd) = ctx.shared.census.pty_masters.get(&index).ok_or_else(|| {
        super::unsupported(format!(
            "the master of /dev/pts/{index} was not found in the tree"
        ))
    })?;
    let master = sys::steal_fd(pid, fd).map_err(super::io_error("pidfd_getfd"))?;
    let locked = sys::pty_locked(&master).map_err(super::io_error("TIOCGPTLCK"))?;
    let packet_mode = sys::pty_packet_mode(&master).map_err(super::io_error("TIOCGPKT"))?;
    // A locked pty's slave cannot be opened: no settings, and no bytes can be read from it.
    let (termios, queued) = if locked {
        (None, None)
    } else {
        let slave = sys::pty_peer(&master).map_err(super::io_error("TIOCGPTPEER"))?;
        let t = tcgetattr(&slave).map_err(|e| super::io_error("tcgetattr")(e.into()))?;
        let queued = pty_data::carry(ctx.image, index, (&master, &slave), &t, packet_mode)?;
        (Some(TermiosState::from(&t)), queued)
    };
    let node = std::fs::metadata(format!("/dev/pts/{index}"));
    let (uid, gid, mode) = node.map_or((0, 0, 0o620), |m| (m.uid(), m.gid(), m.mode() & 0o7777));
    ctx.shared.table.ptys.push(Pty {
        index,
        termios,
        window: sys::window_size(&master).map_err(super::io_error("TIOCGWINSZ"))?,
        packet_mode,
        locked,
        uid,
        gid,
        mode,
        queued,
    });
    let i = ctx.shared.table.ptys.len() - 1;
    ctx.shared.pty_index.insert(index, i);
    Ok(i)
}

impl From<&Termios> for TermiosState {
    fn from(t: &Termios) -> Self {
        let raw: libc::termios = t.clone().into();
        TermiosState {
            iflag: raw.c_iflag,
            oflag: raw.c_oflag,
            cflag: raw.c_cflag,
            lflag: raw.c_lflag,
            line: raw.c_line,
            cc: raw.c_cc.to_vec(),
            ispeed: raw.c_ispeed,
            ospeed: raw.c_ospeed,
        }
    }
}

impl TermiosState {
    fn to_termios(&self) -> Termios {
        // SAFETY: termios is plain data; every field is set below.
        let mut raw: libc::termios = unsafe { std::mem::zeroed() };
        raw.c_iflag = self.iflag;
        raw.c_oflag = self.oflag;
        raw.c_cflag = self.cflag;
        raw.c_lflag = self.lflag;
        raw.c_line = self.line;
        for (dst, &src) in raw.c_cc.iter_mut().zip(&self.cc) {
            *dst = src;
        }
        raw.c_ispeed = self.ispeed;
        raw.c_ospeed = self.ospeed;
        Termios::from(raw)
    }
}

/// A made pty: its master, and its slave (None while locked) held open until every restorer
/// has opened its own.
pub struct PtyFds {
    pub master: OwnedFd,
    pub slave: Option<OwnedFd>,
}

/// Makes pty `p` again: a master with the same index if it is free, the slave's settings and
/// owner, the master's modes, then the bytes it held (`data`: its section's).
pub fn make(p: &Pty, data: &[u8]) -> io::Result<PtyFds> {
    let master = open_master(p.index)?;
    sys::set_pty_locked(&master, false)?;
    let slave = match &p.termios {
        Some(t) => {
            let slave = sys::pty_peer(&master)?;
            tcsetattr(&slave, SetArg::TCSANOW, &t.to_termios())?;
            nix::unistd::fchown(&slave, Some(p.uid.into()), Some(p.gid.into()))?;
            std::fs::File::from(slave.try_clone()?)
                .set_permissions(std::fs::Permissions::from_mode(p.mode & 0o777))?;
            Some(slave)
        }
        None => None,
    };
    sys::set_window_size(&master, p.window)?;
    sys::set_pty_packet_mode(&master, p.packet_mode)?;
    // After packet mode: the status byte the master had not read is made again.
    if let (Some(q), Some(t)) = (&p.queued, &p.termios) {
        let q = Queue::from_image(q, data)?;
        pty_data::refill(&master, &t.to_termios(), p.packet_mode, &q)?;
    }
    sys::set_pty_locked(&master, p.locked)?;
    Ok(PtyFds { master, slave })
}

/// Opens /dev/ptmx until it gives index `want` (the kernel hands out the lowest free one), or
/// another if `want` is taken.
fn open_master(want: u32) -> io::Result<OwnedFd> {
    let open = || -> io::Result<OwnedFd> {
        let flags =
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC;
        Ok(nix::fcntl::open(
            "/dev/ptmx",
            flags,
            nix::sys::stat::Mode::empty(),
        )?)
    };
    let mut extra = Vec::new();
    let first = open()?;
    let mut index = sys::pty_index(&first)?;
    let mut got = first;
    // Indices below `want` in use by others come first; a bounded number of tries.
    while index < want && extra.len() < 64 {
        let next = open()?;
        index = sys::pty_index(&next)?;
        extra.push(std::mem::replace(&mut got, next));
    }
    if index != want {
        eprintln!("ckpt: /dev/pts/{want} is taken here: the terminal is /dev/pts/{index} now");
        // The lowest one opened, the others closed.
        if let Some(lowest) = extra.into_iter().next() {
            return Ok(lowest);
        }
    }
    Ok(got)
}

impl FdState for PtyEnd {
    fn what(&self) -> &'static str {
        if self.slave {
            "the terminal"
        } else {
            "the pty master"
        }
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()> {
        let made = ctx
            .shared
            .ptys
            .get(self.pty)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        if !self.slave {
            return super::place_copy(&made.master, f);
        }
        let slave = made
            .slave
            .as_ref()
            .ok_or_else(|| io::Error::other("the terminal's slave was locked"))?;
        // A new open of the slave, as the process's user, never taking it as a controlling
        // terminal (a session leader got its own already).
        use nix::fcntl::OFlag;
        let flags = (OFlag::from_bits_retain(f.flags as i32) - (OFlag::O_CREAT | OFlag::O_TRUNC))
            | OFlag::O_NOCTTY;
        let path = format!("/proc/self/fd/{}", slave.as_raw_fd());
        let fd = (ctx.reopen)(std::path::Path::new(&path), flags)?;
        super::place(fd, f)
    }

    fn valid(&self, _f: &Fd, v: &View) -> bool {
        v.shared
            .ptys
            .get(self.pty)
            .is_some_and(|p| !self.slave || p.termios.is_some())
    }

    fn describe(&self, _f: &Fd, v: &View) -> String {
        let p = v.shared.ptys.get(self.pty);
        let index = p.map_or(0, |p| p.index);
        if self.slave {
            return format!("terminal /dev/pts/{index} (of pty {})", self.pty);
        }
        let queued = p
            .and_then(|p| p.queued.as_ref())
            .map_or(String::new(), |q| {
                format!(
                    ", {} bytes queued to the master, {} to the program",
                    q.output,
                    q.input_bytes()
                )
            });
        format!("pty master of /dev/pts/{index} (pty {}){queued}", self.pty)
    }
}

/// In a session leader's restorer, once it leads its session: its controlling terminal.
pub fn take_as_controlling(c: &Ctty, ptys: &[PtyFds]) -> io::Result<()> {
    let slave = ptys
        .get(c.pty)
        .and_then(|p| p.slave.as_ref())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    sys::set_controlling_terminal(slave)
}

/// Once every process group of the tree exists: the terminal's foreground group.
pub fn set_foreground(c: &Ctty, ptys: &[PtyFds]) -> io::Result<()> {
    let slave = ptys
        .get(c.pty)
        .and_then(|p| p.slave.as_ref())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    nix::unistd::tcsetpgrp(slave.as_fd(), nix::unistd::Pid::from_raw(c.foreground))?;
    Ok(())
}

/// Ptys have sane settings, and bytes in flight only with a slave's settings, in a section of
/// their kind (image data is never trusted).
pub fn validate(ptys: &[Pty], sections: &[Section]) -> Result<(), String> {
    for p in ptys {
        let cc_ok = p.termios.as_ref().is_none_or(|t| t.cc.len() <= 32);
        if !cc_ok || p.index >= 1 << 20 || (p.termios.is_none() && !p.locked) {
            return Err(format!("bad pty /dev/pts/{}", p.index));
        }
        if let Some(q) = &p.queued {
            let t = p
                .termios
                .as_ref()
                .ok_or("bytes in flight in a locked pty")?;
            q.validate(pty_data::reads_lines(t.lflag), sections)
                .map_err(|e| format!("pty /dev/pts/{}: {e}", p.index))?;
        }
    }
    Ok(())
}
