//! What inotify and fanotify instances share: their marks as /proc/PID/fdinfo lists them,
//! the objects those marks watch found again by path (through the file handle fdinfo shows,
//! else by a bounded search for the inode), unread events, and adding a mark as the process's
//! user with root as the fallback.
//!
//! The kernel keeps no path for a mark, only the inode. fdinfo gives its device, inode number
//! and (where the filesystem can encode one) a file handle: open_by_handle_at through a mount
//! of that filesystem gives the object, and /proc/self/fd its path (CRIU does the same).

use super::{unsupported, DumpError, RestoreCtx};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A watched file or directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Watched {
    /// Its path when checkpointed; watched again by this path.
    pub path: String,
    pub ino: u64,
    /// Its filesystem's device (the kernel's encoding, as fdinfo shows it).
    pub sdev: u32,
    /// A symbolic link watched itself (added again without following it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub symlink: bool,
}

impl Watched {
    pub fn describe(&self) -> String {
        let link = if self.symlink { " (the link)" } else { "" };
        format!("{}{link}", self.path)
    }
}

/// The "key:value" pairs of one fdinfo line (after its leading word).
pub fn fields(line: &str) -> Vec<(&str, &str)> {
    line.split_whitespace()
        .filter_map(|w| w.split_once(':'))
        .collect()
}

pub fn field<'a>(f: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

pub fn hex<T: TryFrom<u64>>(f: &[(&str, &str)], name: &str) -> Result<T, DumpError> {
    field(f, name)
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| unsupported(format!("fdinfo has no readable {name} in a mark")))
}

/// A mount of this mount namespace: (id, device as major:minor, its root in the filesystem,
/// where it is mounted).
struct Mount {
    id: u32,
    dev: (u32, u32),
    root: String,
    point: PathBuf,
}

/// /proc/self/mountinfo's mounts (paths with their octal escapes decoded).
fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            let (major, minor) = w.get(2)?.split_once(':')?;
            Some(Mount {
                id: w.first()?.parse().ok()?,
                dev: (major.parse().ok()?, minor.parse().ok()?),
                root: unescape(w.get(3)?),
                point: PathBuf::from(unescape(w.get(4)?)),
            })
        })
        .collect()
}

/// mountinfo's escapes (`\040` for a space...) decoded.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match code {
            Some(c) if b[i] == b'\\' => {
                out.push(c);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The kernel's internal dev_t (12-bit major above a 20-bit minor) as (major, minor).
fn split_sdev(sdev: u32) -> (u32, u32) {
    (sdev >> 20, sdev & 0xf_ffff)
}

/// Where the mount with id `id` is mounted here.
pub fn mount_point(id: u32) -> Option<PathBuf> {
    mounts().into_iter().find(|m| m.id == id).map(|m| m.point)
}

/// Where a mount of the filesystem on `sdev` is, its whole filesystem's first.
pub fn mount_of_dev(sdev: u32) -> Option<PathBuf> {
    let mut of_dev: Vec<Mount> = mounts()
        .into_iter()
        .filter(|m| m.dev == split_sdev(sdev))
        .collect();
    of_dev.sort_by_key(|m| m.root != "/");
    of_dev.into_iter().next().map(|m| m.point)
}

/// The object a mark line (`fields`) watches, found by path. A deleted or unreachable object
/// is refused, naming it.
pub fn watched(f: &[(&str, &str)], pid: i32) -> Result<Watched, DumpError> {
    let ino: u64 = hex(f, "ino")?;
    let sdev: u32 = hex(f, "sdev")?;
    let (major, minor) = split_sdev(sdev);
    let name = format!("inode {ino} on device {major}:{minor}");
    let path = match by_handle(f, sdev)? {
        Some(p) => Some(p),
        None => by_search(pid, sdev, ino).or_else(|| held_open(pid, (major, minor), ino)),
    };
    let path = path.ok_or_else(|| {
        unsupported(format!(
            "the object it watches ({name}) is not reachable from any mount here (no file \
             handle and not found by its inode number)"
        ))
    })?;
    let meta = std::fs::symlink_metadata(&path).ok();
    let same = meta
        .as_ref()
        .is_some_and(|m| m.ino() == ino && m.dev() == libc::makedev(major, minor) && m.nlink() > 0);
    if !same {
        return Err(unsupported(format!(
            "the object it watches ({name}, last at {}) is deleted or no longer at that path",
            path.display()
        )));
    }
    let path = path
        .to_str()
        .ok_or_else(|| unsupported(format!("the watched path {path:?} is not UTF-8")))?;
    Ok(Watched {
        path: path.to_owned(),
        ino,
        sdev,
        symlink: meta.is_some_and(|m| m.file_type().is_symlink()),
    })
}

/// The object's path through its file handle, if fdinfo shows one and a mount of its
/// filesystem opens it. A deleted object is refused here (its path would be a lie).
fn by_handle(f: &[(&str, &str)], sdev: u32) -> Result<Option<PathBuf>, DumpError> {
    let (Some(kind), Some(text)) = (field(f, "fhandle-type"), field(f, "f_handle")) else {
        return Ok(None);
    };
    let kind = i32::from_str_radix(kind, 16).map_err(|_| unsupported("a bad fhandle-type"))?;
    let bytes: Option<Vec<u8>> = (0..text.len() / 2)
        .map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    let bytes = bytes.ok_or_else(|| unsupported("a bad f_handle"))?;
    let Some(point) = mount_of_dev(sdev) else {
        return Ok(None);
    };
    let Ok(mount) = std::fs::File::open(&point) else {
        return Ok(None);
    };
    let Ok(obj) = crate::sys::open_by_handle(mount.as_fd(), kind, &bytes) else {
        return Ok(None);
    };
    let link = std::fs::read_link(format!("/proc/self/fd/{}", obj.as_raw_fd()))
        .map_err(super::io_error("reading the watched object's path"))?;
    if link.to_string_lossy().ends_with(" (deleted)") {
        return Err(unsupported(format!(
            "the object it watches ({}) is deleted",
            link.display()
        )));
    }
    Ok(Some(link))
}

/// A file process `pid` holds open with that inode: the name of a deleted object that no
/// handle or search finds (for the error).
fn held_open(pid: i32, (major, minor): (u32, u32), ino: u64) -> Option<PathBuf> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    fds.flatten()
        .find(|e| {
            std::fs::metadata(e.path())
                .is_ok_and(|m| m.ino() == ino && m.dev() == libc::makedev(major, minor))
        })
        .and_then(|e| std::fs::read_link(e.path()).ok())
}

/// Up to this many directory entries are looked at when searching for a watched inode.
const SEARCH_LIMIT: usize = 100_000;

/// The object's path found by its inode number (for filesystems that give no file handle):
/// under the watching process's working directory first (a program often watches near it),
/// then under a mount of its filesystem, looking at no more than [`SEARCH_LIMIT`] entries in
/// all and staying on that filesystem.
fn by_search(pid: i32, sdev: u32, ino: u64) -> Option<PathBuf> {
    let (major, minor) = split_sdev(sdev);
    let dev = libc::makedev(major, minor);
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let mut budget = SEARCH_LIMIT;
    [cwd, mount_of_dev(sdev)]
        .into_iter()
        .flatten()
        .filter(|root| std::fs::metadata(root).is_ok_and(|m| m.dev() == dev))
        .find_map(|root| search_under(root, (dev, ino), &mut budget))
}

/// Depth first under `root`, on device `dev` only, for inode `ino`; each entry looked at
/// takes one from `budget`.
fn search_under(root: PathBuf, (dev, ino): (u64, u64), budget: &mut usize) -> Option<PathBuf> {
    if std::fs::metadata(&root).is_ok_and(|m| m.ino() == ino) {
        return Some(root);
    }
    let mut todo = vec![root];
    while let Some(dir) = todo.pop() {
        // A directory we cannot read is skipped, not the end of the search.
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            *budget = budget.checked_sub(1)?;
            // lstat: symbolic links are not followed (no loops, no other filesystems).
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.ino() == ino {
                return Some(e.path());
            }
            if m.is_dir() {
                todo.push(e.path());
            }
        }
    }
    None
}

/// Warns that `what` (fd `fd` of process `pid`) has unread events: they are not carried (a
/// notification queue cannot be read without consuming it). Returns their size in bytes.
pub fn unread_events(pid: i32, fd: i32, what: &str) -> Result<u32, DumpError> {
    let ours = crate::sys::steal_fd(pid, fd).map_err(super::io_error("pidfd_getfd"))?;
    let n = crate::sys::bytes_waiting(&ours).map_err(super::io_error("FIONREAD"))?;
    if n > 0 {
        eprintln!(
            "ckpt: warning: {what} at fd {fd} of process {pid} has {n} bytes of unread \
             events: they are not carried (reading them would take them from the process)"
        );
    }
    Ok(n)
}

/// Runs `add` as the process's user, and again with root's filesystem identity if its user
/// may not (a daemon that set its watches up before dropping privileges).
pub fn as_user_or_root<T>(
    ctx: &RestoreCtx,
    mut add: impl FnMut() -> nix::Result<T>,
) -> io::Result<T> {
    match add() {
        Err(nix::Error::EACCES | nix::Error::EPERM) => {
            let _root = (ctx.as_root)()?;
            Ok(add()?)
        }
        r => Ok(r?),
    }
}

/// An error naming the object a mark was to watch.
pub fn watching(w: &Watched, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("watching {}: {e}", w.path))
}

/// Checks a recorded object: an absolute path.
pub fn valid(w: &Watched) -> bool {
    Path::new(&w.path).is_absolute()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_mark_fields() {
        let line = "inotify wd:3 ino:1a sdev:1f mask:fce ignored_mask:0 fhandle-bytes:8 \
                    fhandle-type:1 f_handle:1a00000012345678";
        let f = fields(line);
        assert_eq!(field(&f, "wd"), Some("3"));
        assert_eq!(hex::<u64>(&f, "ino").ok(), Some(0x1a));
        assert_eq!(hex::<u32>(&f, "mask").ok(), Some(0xfce));
        assert!(hex::<u32>(&f, "nothing").is_err());
        assert_eq!(split_sdev(0x0010_0003), (1, 3));
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
    }
}

#[cfg(test)]
mod found {
    use super::*;
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use std::os::fd::{AsFd, AsRawFd};

    /// The mark lines of our own inotify instance `ino`.
    fn marks(ino: &Inotify) -> Vec<String> {
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", ino.as_fd().as_raw_fd()))
                .unwrap_or_default();
        info.lines()
            .filter_map(|l| l.strip_prefix("inotify ").map(str::to_owned))
            .collect()
    }

    #[test]
    fn a_watched_file_is_found_by_path_and_a_deleted_one_refused() {
        let dir = std::env::temp_dir().join(format!("ckpt-notify-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (kept, gone) = (dir.join("kept"), dir.join("gone"));
        std::fs::write(&kept, "").unwrap();
        let held = std::fs::File::create(&gone).unwrap();
        let ino = Inotify::init(InitFlags::IN_CLOEXEC).unwrap();
        ino.add_watch(&kept, AddWatchFlags::IN_MODIFY).unwrap();
        let m = marks(&ino);
        let w = watched(&fields(&m[0]), std::process::id() as i32)
            .ok()
            .unwrap();
        assert_eq!(Path::new(&w.path), kept.canonicalize().unwrap());
        ino.add_watch(&gone, AddWatchFlags::IN_MODIFY).unwrap();
        std::fs::remove_file(&gone).unwrap();
        let m = marks(&ino);
        let line = m.iter().find(|l| !l.contains(&format!("ino:{:x} ", w.ino)));
        match watched(&fields(line.unwrap()), std::process::id() as i32) {
            Err(DumpError::Unsupported(why)) => assert!(why.contains("deleted"), "{why}"),
            other => panic!("a deleted object was not refused: {other:?}"),
        }
        drop(held);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
