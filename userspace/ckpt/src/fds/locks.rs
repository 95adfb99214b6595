//! File locks held through the tree's fds, read from fdinfo's "lock:" lines (fs/locks.c
//! `lock_get_status`: "FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"):
//! - flock locks and OFD locks (F_OFD_SETLK) belong to an open file description: fdinfo shows
//!   them on every fd of every process sharing it; recorded once, in the first of those
//!   processes (image order: parents first), through its fd.
//! - POSIX record locks (F_SETLK) belong to the process (its fd table): fdinfo shows them on
//!   the fds of the file they were set through, in that process only.
//!
//! Restore: flock and OFD locks are taken again by the restorer once its fds are in place
//! ([`take_on_files`]). POSIX locks are taken by the restored process itself, by injection
//! after the restore ioctl ([`take_posix`]): the module closes the restorer's working fds,
//! among them the files it maps, on the way out of that ioctl, and closing any fd of a file
//! drops every POSIX lock the process holds on it. All calls are non-blocking: a lock someone
//! else holds now fails the restore, naming the file and the holder.
//! Leases (F_SETLEASE) are the open file description's too: recorded with the signal that
//! announces their break (F_GETSIG through a copy of the fd) and taken again by the
//! restorer, whose pid is the process's (the lease's owner). A lease being broken at the
//! checkpoint, and NFS delegations, are refused.

use super::{placed, unsupported, DumpCtx, DumpError, Fd, FdKind, FdTable};
use crate::errors::RestoreError;
use crate::inject::Injector;
use crate::proc::FdEntry;
use nix::fcntl::{fcntl, FcntlArg};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::MetadataExt;

/// Who owns a lock. The names are the image format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LockKind {
    /// flock(2): the open file description's, whole file.
    Flock,
    /// fcntl F_SETLK: the process's, a byte range.
    Posix,
    /// fcntl F_OFD_SETLK: the open file description's, a byte range.
    Ofd,
    /// fcntl F_SETLEASE: the open file description's, whole file, broken with `signal`.
    Lease,
}

/// A lock the process takes again through its fd `fd`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileLock {
    pub kind: LockKind,
    pub fd: i32,
    /// Exclusive (write) or shared (read).
    pub write: bool,
    /// First byte of the range (POSIX and OFD; 0 for flock).
    #[serde(default)]
    pub start: u64,
    /// Last byte of the range; none: to the end of the file, however far it grows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u64>,
    /// A lease's break signal (F_SETSIG; 0: SIGIO).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub signal: i32,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

impl FileLock {
    /// "POSIX write lock on bytes 0-99" and the like, for messages.
    pub fn describe(&self) -> String {
        let (kind, mode) = (
            match self.kind {
                LockKind::Flock => "flock",
                LockKind::Posix => "POSIX",
                LockKind::Ofd => "OFD",
                LockKind::Lease => "lease:",
            },
            if self.write { "write" } else { "read" },
        );
        match (self.kind, self.end) {
            (LockKind::Flock, _) => format!("{kind} {mode} lock"),
            (LockKind::Lease, _) => format!("{kind} {mode} lease"),
            (_, Some(end)) => format!("{kind} {mode} lock on bytes {}-{end}", self.start),
            (_, None) => format!("{kind} {mode} lock from byte {} to EOF", self.start),
        }
    }

    /// The `struct flock` F_SETLK and F_OFD_SETLK take (l_pid 0, as OFD locks require).
    fn flock(&self) -> libc::flock {
        libc::flock {
            l_type: (if self.write {
                libc::F_WRLCK
            } else {
                libc::F_RDLCK
            }) as i16,
            l_whence: libc::SEEK_SET as i16,
            l_start: self.start as i64,
            // 0: to the end of the file.
            l_len: self.end.map_or(0, |end| (end - self.start + 1) as i64),
            l_pid: 0,
        }
    }

    /// The same `struct flock` as the x86-64 kernel reads it (for an injected fcntl): type,
    /// whence, 4 bytes of padding, start, length, pid, 4 bytes of padding.
    fn flock_bytes(&self) -> [u8; 32] {
        let f = self.flock();
        let mut b = [0u8; 32];
        b[0..2].copy_from_slice(&f.l_type.to_le_bytes());
        b[2..4].copy_from_slice(&f.l_whence.to_le_bytes());
        b[8..16].copy_from_slice(&f.l_start.to_le_bytes());
        b[16..24].copy_from_slice(&f.l_len.to_le_bytes());
        b
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

/// One "lock:" line of fdinfo, without its number.
struct Line {
    kind: LockKind,
    write: bool,
    /// "MAJ:MIN:INODE" as the kernel prints it (hex device numbers).
    inode: String,
    start: u64,
    end: Option<u64>,
}

fn parse(text: &str) -> Result<Line, DumpError> {
    let bad = || {
        unsupported(format!(
            "fdinfo shows a lock ckpt does not understand: {text:?}"
        ))
    };
    let w: Vec<&str> = text.split_whitespace().collect();
    let kind = match w.first().copied() {
        Some("FLOCK") => LockKind::Flock,
        Some("POSIX") => LockKind::Posix,
        Some("OFDLCK") => LockKind::Ofd,
        Some("LEASE") => LockKind::Lease,
        Some("DELEG") => return Err(unsupported("it holds an NFS delegation: not carried")),
        _ => return Err(bad()),
    };
    let [_, state, mode, _pid, inode, start, end] = w[..] else {
        return Err(bad());
    };
    match (kind, state) {
        (LockKind::Lease, "ACTIVE")
        | (LockKind::Flock | LockKind::Posix | LockKind::Ofd, "ADVISORY") => {}
        (LockKind::Lease, _) => {
            return Err(unsupported(
                "it holds a file lease that is being broken: retry once the break is over",
            ))
        }
        _ => return Err(bad()),
    }
    let write = match mode {
        "WRITE" => true,
        "READ" => false,
        _ => return Err(bad()),
    };
    let number = |s: &str| s.parse::<u64>().map_err(|_| bad());
    Ok(Line {
        kind,
        write,
        inode: inode.to_owned(),
        start: number(start)?,
        end: if end == "EOF" {
            None
        } else {
            Some(number(end)?)
        },
    })
}

/// What the tree's dump has recorded so far, so that each lock is recorded once.
#[derive(Debug, Default)]
pub struct Seen {
    /// Fds (pid, fd, inode) whose open file description's flock/OFD locks are recorded.
    files: Vec<(i32, i32, String)>,
    /// POSIX locks recorded: (pid, inode, start, end, write). A lock shows on every fd that
    /// shares the open file it was set through (dup, fork).
    posix: BTreeSet<(i32, String, u64, Option<u64>, bool)>,
}

impl Seen {
    /// Whether fd `fd` of `pid` (on `inode`) is an open file description whose locks are
    /// already recorded, through another fd or another process.
    fn recorded(&self, pid: i32, fd: i32, inode: &str) -> io::Result<bool> {
        for (p, f, i) in &self.files {
            if i == inode && crate::sys::same_open_file((pid, fd), (*p, *f))? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Records the locks fdinfo shows on `e` (of kind `kind`) that are not recorded yet into
/// `out`, the process's locks.
pub fn dump(
    ctx: &mut DumpCtx,
    e: &FdEntry,
    kind: &FdKind,
    out: &mut Vec<FileLock>,
) -> Result<(), DumpError> {
    if e.locks.is_empty() {
        return Ok(());
    }
    if matches!(kind, FdKind::InheritStdio(_)) {
        return Err(unsupported(
            "it holds a file lock through stdio connected outside the tree, which the \
             restored process gets from `ckpt restore` instead",
        ));
    }
    let pid = ctx.pid;
    // Per fd: whether its open file description's locks are recorded (asked once).
    let mut file_recorded: Option<bool> = None;
    for text in &e.locks {
        let l = parse(text)?;
        let signal = match l.kind {
            LockKind::Lease => lease_signal(pid, e.fd)?,
            _ => 0,
        };
        let lock = FileLock {
            kind: l.kind,
            fd: e.fd,
            write: l.write,
            start: l.start,
            end: l.end,
            signal,
        };
        let seen = &mut ctx.shared.locks;
        let new = match l.kind {
            LockKind::Posix => seen
                .posix
                .insert((pid, l.inode.clone(), l.start, l.end, l.write)),
            LockKind::Flock | LockKind::Ofd | LockKind::Lease => match file_recorded {
                Some(recorded) => !recorded,
                None => {
                    let recorded = seen
                        .recorded(pid, e.fd, &l.inode)
                        .map_err(super::io_error("comparing open files (kcmp)"))?;
                    if !recorded {
                        seen.files.push((pid, e.fd, l.inode.clone()));
                    }
                    file_recorded = Some(recorded);
                    !recorded
                }
            },
        };
        if new {
            out.push(lock);
        }
    }
    Ok(())
}

/// The signal fd `fd` of `pid` announces a lease break with (F_GETSIG on a copy of it: the
/// setting belongs to the open file description).
fn lease_signal(pid: i32, fd: i32) -> Result<i32, DumpError> {
    let ours = crate::sys::steal_fd(pid, fd).map_err(super::io_error("pidfd_getfd"))?;
    crate::sys::io_signal(std::os::fd::AsFd::as_fd(&ours)).map_err(super::io_error("F_GETSIG"))
}

// ---------------------------------------------------------------------------------------------
// Restore

/// In the restorer, once its fds are in place: takes again the process's flock and OFD locks
/// (the restorer's fds are the open file descriptions that own them). On error, the message.
pub fn take_on_files(table: &FdTable) -> Result<(), String> {
    for l in &table.locks {
        let fd = placed(l.fd);
        let r = match l.kind {
            LockKind::Flock => crate::sys::flock_nonblocking(fd, l.write),
            LockKind::Ofd => fcntl(fd, FcntlArg::F_OFD_SETLK(&l.flock()))
                .map(drop)
                .map_err(io::Error::from),
            LockKind::Lease => crate::sys::set_lease(fd, l.signal, l.write),
            LockKind::Posix => continue, // by the process itself, see take_posix
        };
        // Ourselves as /proc shows us (getpid differs inside a new pid namespace).
        let me = crate::proc::own_pid_seen_by_proc().unwrap_or(0);
        r.map_err(|e| refusal(l, "self", me, e))?;
    }
    Ok(())
}

/// Makes restored process `pid` (stopped after its restore ioctl, traced) take its POSIX
/// locks again: fcntl(fd, F_SETLK) injected, its `struct flock` written at `scratch`.
pub fn take_posix(
    inj: &Injector,
    pid: i32,
    table: &FdTable,
    scratch: u64,
) -> Result<(), RestoreError> {
    for l in table.locks.iter().filter(|l| l.kind == LockKind::Posix) {
        let io_err = |what: &str| crate::errors::restore_io(format!("{what} ({})", l.describe()));
        inj.poke(scratch, &l.flock_bytes())
            .map_err(io_err("writing the fcntl argument"))?;
        let args = [l.fd as u64, libc::F_SETLK as u64, scratch, 0, 0, 0];
        let (r, _) = inj
            .syscall(pid, libc::SYS_fcntl, args)
            .map_err(io_err("injecting fcntl(F_SETLK)"))?;
        if r < 0 {
            let e = io::Error::from_raw_os_error(-r as i32);
            return Err(RestoreError::Lock(refusal(l, &pid.to_string(), pid, e)));
        }
    }
    Ok(())
}

/// Why lock `l` of the process whose /proc directory is `/proc/{proc}` could not be taken:
/// the file, and who holds it when someone does (`me`, that process, left out).
fn refusal(l: &FileLock, proc: &str, me: i32, e: io::Error) -> String {
    let link = format!("/proc/{proc}/fd/{}", l.fd);
    let path = std::fs::read_link(&link)
        .map_or_else(|_| format!("fd {}", l.fd), |p| p.display().to_string());
    let held = matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN | libc::EACCES | libc::EDEADLK)
    );
    if !held {
        return format!("taking the {} on {path} again: {e}", l.describe());
    }
    let holders = std::fs::metadata(&link)
        .map(|m| {
            let (major, minor) = (libc::major(m.dev()), libc::minor(m.dev()));
            holders(&format!("{major:02x}:{minor:02x}:{}", m.ino()), me)
        })
        .unwrap_or_default();
    let who = if holders.is_empty() {
        "a process ckpt cannot see".to_owned()
    } else {
        holders.join(", ")
    };
    format!(
        "{path} is locked by {who}: the {} it held cannot be taken again (is the \
         checkpointed program still running?)",
        l.describe()
    )
}

/// The processes holding a lock on `inode` ("MAJ:MIN:INODE"), other than `me`, from every
/// process's fdinfo: "process 123 (flock) through its fd 3".
fn holders(inode: &str, me: i32) -> Vec<String> {
    let needle = format!(" {inode} ");
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    let pids = procs
        .filter_map(|d| d.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != me);
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
            continue; // gone, or not ours to read
        };
        for fd in fds.filter_map(|d| d.ok()) {
            let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
            let locked = info
                .lines()
                .any(|l| l.starts_with("lock:") && l.contains(&needle));
            if locked {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                let fd = fd.file_name().to_string_lossy().into_owned();
                out.push(format!(
                    "process {pid} ({}) through its fd {fd}",
                    comm.trim()
                ));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Checks

/// Every lock names an fd of the process that is not stdio from outside, with a sane range.
pub fn validate(locks: &[FileLock], fds: &[Fd]) -> Result<(), String> {
    for l in locks {
        let fd_ok = fds
            .iter()
            .any(|f| f.fd == l.fd && !matches!(f.kind, FdKind::InheritStdio(_)));
        let max = i64::MAX as u64;
        let range_ok = match l.kind {
            LockKind::Flock | LockKind::Lease => l.start == 0 && l.end.is_none(),
            LockKind::Posix | LockKind::Ofd => {
                // A numeric end is below OFFSET_MAX (which fdinfo shows as EOF).
                l.start < max && l.end.is_none_or(|end| end >= l.start && end < max)
            }
        };
        let signal_ok =
            (0..=64).contains(&l.signal) && (l.signal == 0 || l.kind == LockKind::Lease);
        if !fd_ok || !range_ok || !signal_ok {
            return Err(format!("bad file lock ({}) on fd {}", l.describe(), l.fd));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lines_of_every_kind_parse() {
        let l = parse("FLOCK ADVISORY WRITE 1234 08:01:5678 0 EOF").unwrap();
        assert!(l.kind == LockKind::Flock && l.write && l.end.is_none());
        assert_eq!(l.inode, "08:01:5678");
        let l = parse("POSIX ADVISORY READ 99 00:1f:12 10 19").unwrap();
        assert!(l.kind == LockKind::Posix && !l.write);
        assert_eq!((l.start, l.end), (10, Some(19)));
        let l = parse("OFDLCK ADVISORY WRITE -1 00:1f:12 5 EOF").unwrap();
        assert!(l.kind == LockKind::Ofd && l.start == 5 && l.end.is_none());
    }

    #[test]
    fn leases_are_read_and_breaking_leases_and_odd_lines_are_refused() {
        let lease = parse("LEASE ACTIVE READ 7 00:1f:12 0 EOF").ok().unwrap();
        assert!(lease.kind == LockKind::Lease && !lease.write && lease.end.is_none());
        let breaking = parse("LEASE BREAKING READ 7 00:1f:12 0 EOF");
        assert!(matches!(breaking, Err(DumpError::Unsupported(w)) if w.contains("being broken")));
        assert!(parse("DELEG ACTIVE READ 7 00:1f:12 0 EOF").is_err());
        for odd in [
            "FLOCK ACTIVE WRITE 1 00:1f:12 0 EOF",
            "POSIX *NOINODE* WRITE 1 <none>:0 0 EOF",
            "POSIX ADVISORY UNLCK 1 00:1f:12 0 EOF",
            "UNKNOWN UNKNOWN WRITE 1 00:1f:12 0 EOF",
            "POSIX ADVISORY WRITE 1 00:1f:12 0",
            "POSIX ADVISORY WRITE 1 00:1f:12 x EOF",
        ] {
            assert!(parse(odd).is_err(), "{odd}");
        }
    }

    #[test]
    fn the_flock_struct_is_the_kernels_layout() {
        let l = FileLock {
            kind: LockKind::Posix,
            fd: 3,
            write: true,
            start: 100,
            end: Some(199),
            signal: 0,
        };
        let b = l.flock_bytes();
        assert_eq!(std::mem::size_of::<libc::flock>(), b.len());
        assert_eq!(i16::from_le_bytes([b[0], b[1]]), libc::F_WRLCK as i16);
        assert_eq!(i64::from_le_bytes(b[8..16].try_into().unwrap()), 100);
        assert_eq!(i64::from_le_bytes(b[16..24].try_into().unwrap()), 100);
        let to_eof = FileLock { end: None, ..l };
        assert_eq!(to_eof.flock().l_len, 0);
    }

    #[test]
    fn bad_locks_in_an_image_are_refused() {
        use crate::fds::PathFile;
        let fds = [Fd {
            fd: 3,
            flags: 2,
            kind: FdKind::Path(PathFile {
                path: "/tmp/x".into(),
                pos: 0,
            }),
        }];
        let ok = FileLock {
            kind: LockKind::Ofd,
            fd: 3,
            write: false,
            start: 4,
            end: Some(4),
            signal: 0,
        };
        assert!(validate(std::slice::from_ref(&ok), &fds).is_ok());
        let bad = [
            FileLock {
                fd: 4,
                ..ok.clone()
            },
            FileLock {
                end: Some(3),
                ..ok.clone()
            },
            FileLock {
                start: u64::MAX,
                end: None,
                ..ok.clone()
            },
            FileLock {
                kind: LockKind::Flock,
                ..ok.clone()
            },
        ];
        for l in bad {
            assert!(validate(std::slice::from_ref(&l), &fds).is_err(), "{l:?}");
        }
    }
}
