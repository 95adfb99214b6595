//! Open file descriptions several fds share: inherited across fork, duplicated (dup, F_DUPFD)
//! or passed over a UNIX socket. They share one offset, one set of status flags, the flock,
//! OFD locks and lease the description owns, and one object behind it (an eventfd's counter,
//! a timerfd's timer, an epoll instance's interest list).
//!
//! Checkpoint: the census (`Descriptions`) finds them before anything is recorded: fds whose
//! target, mount, inode, position and flags agree are compared with kcmp KCMP_FILE (the rest
//! cost nothing more). Each is recorded once in the tree's table (`OpenFile`: its kind's
//! state, its flags, the process it is made as), and each of its fds as a copy of it
//! (`OpenFileEnd`). Kinds that are one object of the tree anyway (pipes, sockets, ptys) or
//! that only their process makes (FIFO ends, inotify, fanotify) go their own way.
//! Restore: ckpt makes each once, before the restorers fork, as its first holder's user;
//! every restorer places a copy at each of its fds, then adds the watches of a shared epoll
//! instance whose fds are its own.

use super::{
    above, epoll, place_copy, placed, unsupported, Blobs, DumpCtx, DumpError, Fd, FdKind, FdState,
    FdTable, HolderEnv, MakeCtx, RestoreCtx, View,
};
use crate::image::Section;
use crate::proc::FdEntry;
use nix::fcntl::OFlag;
use nix::sys::epoll::Epoll as NixEpoll;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::path::Path;

/// An open file description several fds of the tree share.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenFile {
    /// The process (index in the image) it is made as: the first holding it.
    pub holder: usize,
    /// open(2) flags as fdinfo shows them, without close-on-exec (each fd's own).
    pub flags: u32,
    /// What it is, as an fd of its own would record it (a kind `FdKind::maker` makes). A
    /// shared epoll instance's watches each name the process that adds it again.
    pub kind: FdKind,
}

/// An fd of the open file description `open_file` of the tree's table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenFileEnd {
    pub open_file: usize,
}

// ---------------------------------------------------------------------------------------------
// Census

/// What every fd of one open file description shows alike: its target, mount id, inode,
/// position and flags (close-on-exec is the fd's, left out).
type Key = (String, i32, u64, u64, u32);

/// One fd of the tree: its process's index in the image, the pid, the fd.
pub type Member = (usize, i32, i32);

/// Which fds of the tree are one open file description, found before anything is recorded.
#[derive(Debug, Default)]
pub struct Descriptions {
    /// Processes counted so far (the next one's index in the image).
    processes: usize,
    /// The fds that could share a description with another, by what they show.
    candidates: BTreeMap<Key, Vec<Member>>,
    /// (pid, fd) -> its description, for fds whose description another fd shares.
    of: BTreeMap<(i32, i32), usize>,
    /// Each such description's fds, in image order.
    pub members: Vec<Vec<Member>>,
}

/// Whether an fd may be an open file description made once (a kind `FdKind::maker` makes):
/// files, devices, deleted files and memfds by path; eventfd, timerfd, signalfd, epoll.
fn candidate(target: &str) -> bool {
    const MADE: [&str; 4] = [
        "anon_inode:[eventfd]",
        "anon_inode:[timerfd]",
        "anon_inode:[signalfd]",
        epoll::TARGET,
    ];
    target.starts_with('/') || MADE.contains(&target)
}

impl Descriptions {
    /// Notes the fds `entries` of the next process, `pid`.
    pub fn add(&mut self, pid: i32, entries: &[FdEntry]) {
        let process = self.processes;
        self.processes += 1;
        self.add_held(process, pid, entries);
    }

    /// Notes fds `entries` of `pid` as held for process `process` of the image (ckpt's
    /// copies of descriptors in flight in that process's queues).
    pub fn add_held(&mut self, process: usize, pid: i32, entries: &[FdEntry]) {
        for e in entries.iter().filter(|e| candidate(&e.target)) {
            let flags = e.flags & !(libc::O_CLOEXEC as u32);
            let key = (e.target.clone(), e.mnt_id, e.ino, e.pos, flags);
            self.candidates
                .entry(key)
                .or_default()
                .push((process, pid, e.fd));
        }
    }

    /// Once every process is added: sorts the fds that look alike into descriptions (kcmp).
    pub fn group(&mut self) -> io::Result<()> {
        for alike in std::mem::take(&mut self.candidates).into_values() {
            if alike.len() < 2 {
                continue;
            }
            for members in same_files(&alike)?.into_iter().filter(|m| m.len() > 1) {
                let description = self.members.len();
                for &(_, pid, fd) in &members {
                    self.of.insert((pid, fd), description);
                }
                self.members.push(members);
            }
        }
        Ok(())
    }

    /// The description fd `fd` of `pid` shares with other fds, if it does.
    pub fn of(&self, pid: i32, fd: i32) -> Option<usize> {
        self.of.get(&(pid, fd)).copied()
    }
}

/// `fds` (in image order) sorted into open file descriptions, each in image order: kept in
/// kcmp's order of their first fd and found by binary search, so n fds cost about n log n
/// kcmp calls however many descriptions there are.
fn same_files(fds: &[Member]) -> io::Result<Vec<Vec<Member>>> {
    let mut found: Vec<Vec<Member>> = Vec::new();
    for &m in fds {
        let (mut lo, mut hi) = (0, found.len());
        let mut same = None;
        while lo < hi {
            let mid = (lo + hi) / 2;
            let first = found[mid][0];
            match crate::sys::compare_open_files((m.1, m.2), (first.1, first.2))? {
                Ordering::Equal => {
                    same = Some(mid);
                    break;
                }
                Ordering::Less => hi = mid,
                Ordering::Greater => lo = mid + 1,
            }
        }
        match same {
            Some(i) => found[i].push(m),
            None => found.insert(lo, vec![m]),
        }
    }
    Ok(found)
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

/// Records `e`, an fd of `description`, which other fds share: the description once, when
/// its first fd is met, and each fd as a copy of it. Stdio connected outside stays inherited,
/// and a kind that is not made once is left to its own dump, fd by fd.
pub fn dump(ctx: &mut DumpCtx, e: &FdEntry, description: usize) -> Result<FdKind, DumpError> {
    if let Some(stdio) = super::stdio::dump(ctx, e)? {
        return Ok(stdio);
    }
    match ctx.shared.open_file_index.get(&description) {
        Some(&Some(open_file)) => return Ok(FdKind::OpenFile(OpenFileEnd { open_file })),
        Some(None) => return super::dump_alone(ctx, e),
        None => {}
    }
    let kind = if e.target == epoll::TARGET {
        let mut holders: Vec<(usize, i32)> = (ctx.shared.census.descriptions.members)
            .get(description)
            .map(|m| m.iter().map(|&(process, pid, _)| (process, pid)).collect())
            .unwrap_or_default();
        holders.dedup();
        epoll::dump_shared(ctx, e, &holders)?
            .ok_or_else(|| unsupported("it is not an epoll instance"))?
    } else {
        super::dump_alone(ctx, e)?
    };
    if kind.maker().is_none() {
        ctx.shared.open_file_index.insert(description, None);
        return Ok(kind);
    }
    let files = &mut ctx.shared.table.open_files;
    files.push(OpenFile {
        holder: ctx.process,
        flags: e.flags & !(libc::O_CLOEXEC as u32),
        kind,
    });
    let open_file = files.len() - 1;
    ctx.shared
        .open_file_index
        .insert(description, Some(open_file));
    Ok(FdKind::OpenFile(OpenFileEnd { open_file }))
}

// ---------------------------------------------------------------------------------------------
// Restore

/// Makes every open file description of `files` once, each as its holder (`envs`), above
/// `min`. Runs in ckpt before the first restorer forks (they inherit them); `memory` are the
/// tree's shared memory objects, made already; `read` reads a section.
pub fn make_all(
    files: &[OpenFile],
    envs: &[HolderEnv],
    memory: &[OwnedFd],
    read: &dyn Fn(usize) -> io::Result<Vec<u8>>,
    min: RawFd,
) -> io::Result<Vec<OwnedFd>> {
    let mut blobs = Blobs::new();
    for s in files.iter().filter_map(|f| f.kind.blob_section()) {
        blobs.insert(s, read(s)?);
    }
    let mut made = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let env = envs
            .get(f.holder)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let fd = make_as(f, env, (&blobs, memory, min)).map_err(|e| {
            let what = f.kind.state().what();
            io::Error::new(
                e.kind(),
                format!("making {what} (open file #{i}) again: {e}"),
            )
        })?;
        made.push(above(fd, min)?);
    }
    Ok(made)
}

/// Makes `f` with its holder's umask and filesystem identity (root's where that user may not
/// open a file, as the restorers do).
pub(super) fn make_as(
    f: &OpenFile,
    env: &HolderEnv,
    (blobs, memory, scratch): (&Blobs, &[OwnedFd], RawFd),
) -> io::Result<OwnedFd> {
    let maker = f
        .kind
        .maker()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let user = match env.creds {
        Some(c) => Some(crate::creds::as_fs_user(c.uid[3], c.gid[3], &c.groups)?),
        None => None,
    };
    let as_user = user.is_some();
    let reopen = move |path: &Path, flags: OFlag| super::reopen_as_user(path, flags, as_user);
    let mode = nix::sys::stat::Mode::from_bits_truncate(env.umask);
    let old_umask = nix::sys::stat::umask(mode);
    let ctx = MakeCtx {
        blobs,
        memory,
        scratch,
        reopen: &reopen,
    };
    // Never ckpt's controlling terminal (a terminal opened by a session leader without one
    // would be); the kernel keeps O_NOCTTY out of the open file's flags.
    let made = maker.make(f.flags | libc::O_NOCTTY as u32, &ctx);
    nix::sys::stat::umask(old_umask);
    drop(user);
    made
}

impl FdState for OpenFileEnd {
    fn what(&self) -> &'static str {
        "the shared open file"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()> {
        let made = (ctx.shared.open_files)
            .get(self.open_file)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        place_copy(made, f)
    }

    fn valid(&self, _f: &Fd, v: &View) -> bool {
        self.open_file < v.shared.open_files.len()
    }

    fn describe(&self, f: &Fd, v: &View) -> String {
        let Some(o) = v.shared.open_files.get(self.open_file) else {
            return format!("open file #{} (missing)", self.open_file);
        };
        let inner = Fd {
            fd: f.fd,
            flags: o.flags,
            kind: o.kind.clone(),
        };
        let text = o.kind.state().describe(&inner, v);
        format!("{text}; open file #{} shared", self.open_file)
    }
}

/// In the restorer, once its fds are placed: adds to each epoll instance it shares the
/// watches whose fds are its own. On error, what failed.
pub fn add_watches(ctx: &RestoreCtx) -> Result<(), (String, io::Error)> {
    for (open_file, w) in (ctx.shared.watches.iter()).filter(|(_, w)| w.by == Some(ctx.process)) {
        let err = |e: io::Error| (format!("adding fd {} to a shared epoll instance", w.fd), e);
        let ep = ctx
            .shared
            .open_files
            .get(*open_file)
            .ok_or_else(|| err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        // A copy to call epoll_ctl through (the same instance), closed after.
        let ep = NixEpoll(ep.try_clone().map_err(err)?);
        w.add_to(&ep, placed(w.fd)).map_err(err)?;
    }
    Ok(())
}

/// The watches of every shared epoll instance of `files`, by open file index.
pub fn watches_of(files: &[OpenFile]) -> Vec<(usize, epoll::EpollWatch)> {
    let epolls = files.iter().enumerate().filter_map(|(i, f)| match &f.kind {
        FdKind::Epoll(e) => Some((i, e)),
        _ => None,
    });
    epolls
        .flat_map(|(i, e)| e.watches.iter().map(move |w| (i, *w)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Checks

/// Each description names a process of the image, a kind made once, and a state that makes
/// sense (its sections; a shared epoll's watches each name a process).
pub fn validate(
    files: &[OpenFile],
    shared: &super::Shared,
    sections: &[Section],
    processes: usize,
) -> Result<(), String> {
    for (i, f) in files.iter().enumerate() {
        let inner = Fd {
            fd: 0,
            flags: f.flags,
            kind: f.kind.clone(),
        };
        let v = View {
            fds: &[],
            shared,
            sections,
        };
        let state_ok = match &f.kind {
            FdKind::Epoll(e) => e
                .watches
                .iter()
                .all(|w| w.fd >= 0 && w.by.is_some_and(|p| p < processes)),
            k => k.state().valid(&inner, &v),
        };
        if f.holder >= processes || f.kind.maker().is_none() || !state_ok {
            return Err(format!("bad shared open file #{i}"));
        }
    }
    Ok(())
}

/// A shared epoll's watch is added by a process that holds the instance and has a watchable
/// fd of its number (`tables`: every process's, in image order).
pub fn validate_watches(shared: &super::Shared, tables: &[&FdTable]) -> Result<(), String> {
    for (open_file, w) in watches_of(&shared.open_files) {
        let table = w.by.and_then(|p| tables.get(p));
        let ok = table.is_some_and(|t| {
            let holds = t
                .fds
                .iter()
                .any(|f| matches!(&f.kind, FdKind::OpenFile(end) if end.open_file == open_file));
            let v = View {
                fds: &t.fds,
                shared,
                sections: &[],
            };
            holds && epoll::watchable(w.fd, &v)
        });
        if !ok {
            return Err(format!(
                "shared epoll instance #{open_file}: its watch of fd {} names no process \
                 holding both",
                w.fd
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fds::{Epoll, EpollWatch, EventFd, PipeEnd, Shared};
    use std::os::fd::{AsRawFd, OwnedFd};

    /// Our own fds `fds` as /proc shows them (only those: other tests open and close fds of
    /// this process meanwhile).
    fn entries(fds: &[&OwnedFd]) -> Vec<FdEntry> {
        let wanted: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let all = crate::proc::fds(std::process::id() as i32).unwrap();
        all.into_iter().filter(|e| wanted.contains(&e.fd)).collect()
    }

    #[test]
    fn fds_of_one_open_file_description_are_found_and_others_are_not() {
        let path = std::env::temp_dir().join(format!("ckpt-open-file-{}", std::process::id()));
        std::fs::write(&path, b"x").unwrap();
        let open = || OwnedFd::from(std::fs::File::open(&path).unwrap());
        // Two opens of one file (alike in all /proc shows) and a dup of the first.
        let (a, b) = (open(), open());
        let a_dup = a.try_clone().unwrap();
        let efd: OwnedFd = nix::sys::eventfd::EventFd::new().unwrap().into();
        let efd_dup = efd.try_clone().unwrap();
        let mut d = Descriptions::default();
        d.add(
            std::process::id() as i32,
            &entries(&[&a, &b, &a_dup, &efd, &efd_dup]),
        );
        d.group().unwrap();
        std::fs::remove_file(&path).unwrap();
        let pid = std::process::id() as i32;
        let of = |f: &OwnedFd| d.of(pid, f.as_raw_fd());
        assert!(of(&a).is_some() && of(&a) == of(&a_dup));
        assert!(of(&efd).is_some() && of(&efd) == of(&efd_dup));
        assert_ne!(of(&a), of(&efd));
        assert_eq!(of(&b), None, "another open of the same file is its own");
        assert_eq!(d.members.len(), 2);
        assert!(d.members.iter().all(|m| m.len() == 2));
    }

    fn end(open_file: usize, fd: i32) -> Fd {
        Fd {
            fd,
            flags: 2,
            kind: FdKind::OpenFile(OpenFileEnd { open_file }),
        }
    }

    fn eventfd_at(fd: i32) -> Fd {
        Fd {
            fd,
            flags: 2,
            kind: FdKind::EventFd(EventFd {
                count: 0,
                semaphore: false,
            }),
        }
    }

    /// A tree of two processes sharing an epoll instance (at fd 4 in both) that watches fd 3
    /// of process `by`.
    fn epoll_tree(by: usize) -> (Shared, [FdTable; 2]) {
        let watch = EpollWatch {
            fd: 3,
            events: 1,
            data: 7,
            by: Some(by),
        };
        let shared = Shared {
            open_files: vec![OpenFile {
                holder: 0,
                flags: 2,
                kind: FdKind::Epoll(Epoll {
                    watches: vec![watch],
                }),
            }],
            ..Shared::default()
        };
        let parent = FdTable {
            fds: vec![end(0, 4)],
            locks: vec![],
        };
        let child = FdTable {
            fds: vec![eventfd_at(3), end(0, 4)],
            locks: vec![],
        };
        (shared, [parent, child])
    }

    #[test]
    fn a_shared_epolls_watch_is_added_by_a_process_holding_both() {
        let (shared, [parent, child]) = epoll_tree(1);
        assert!(validate(&shared.open_files, &shared, &[], 2).is_ok());
        assert!(validate_watches(&shared, &[&parent, &child]).is_ok());
        // The parent has no fd 3: it could not add the watch.
        let (shared, [parent, child]) = epoll_tree(0);
        assert!(validate_watches(&shared, &[&parent, &child]).is_err());
        // A process that is not in the image.
        let (shared, _) = epoll_tree(2);
        assert!(validate(&shared.open_files, &shared, &[], 2).is_err());
    }

    #[test]
    fn bad_shared_open_files_are_refused() {
        let (shared, _) = epoll_tree(1);
        let good = shared.open_files[0].clone();
        let bad = [
            OpenFile {
                holder: 2,
                ..good.clone()
            },
            // A pipe is one object of the tree already, never an open file made once.
            OpenFile {
                kind: FdKind::Pipe(PipeEnd {
                    pipe: 0,
                    write_end: false,
                }),
                ..good.clone()
            },
            // Nested: an open file of an open file.
            OpenFile {
                kind: FdKind::OpenFile(OpenFileEnd { open_file: 0 }),
                ..good.clone()
            },
        ];
        for f in bad {
            let s = Shared {
                open_files: vec![f.clone()],
                ..Shared::default()
            };
            assert!(validate(&s.open_files, &s, &[], 2).is_err(), "{f:?}");
        }
        // An fd naming an open file the table does not have.
        let v = View {
            fds: &[],
            shared: &shared,
            sections: &[],
        };
        assert!(!OpenFileEnd { open_file: 1 }.valid(&end(1, 3), &v));
        assert!(OpenFileEnd { open_file: 0 }.valid(&end(0, 3), &v));
    }
}
