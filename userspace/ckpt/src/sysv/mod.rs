//! SysV IPC objects the tree uses, each kind with its dump and restore side by side:
//! shared memory segments (`shm`, found through the processes' mappings), semaphore sets
//! (`sem`) and message queues (`msg`). Sets and queues are not mapped: they are found
//! through the pids the kernel keeps of their last users (each semaphore's last changer, a
//! queue's last sender and receiver). One of them in the tree makes the object the tree's;
//! one still running outside the tree refuses the checkpoint, because the restored copy
//! would not be shared with it. A set or queue the tree made but never used is not found.
//!
//! Everything is read in the tree's IPC namespace (`enter_namespace`) and made again, on
//! restore, with its key and its id (`create_keyed`; with `--ipcns`, in a fresh namespace,
//! where every id is free).

pub mod msg;
pub mod sem;
pub mod shm;

pub use msg::MsgQueue;
pub use sem::SemSet;
pub use shm::{is_segment, SysvDump, SysvSegment, SYSV_SHM_DATA};

use crate::image::ImageWriter;
use crate::sys;
use std::collections::BTreeSet;
use std::io;
use std::path::Path;

/// The three kinds, as the kernel names them (/proc/sysvipc/KIND, KIND_next_id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Shm,
    Sem,
    Msg,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Shm => "shm",
            Kind::Sem => "sem",
            Kind::Msg => "msg",
        }
    }

    /// For messages: "SysV semaphore set".
    pub fn what(self) -> &'static str {
        match self {
            Kind::Shm => "SysV segment",
            Kind::Sem => "SysV semaphore set",
            Kind::Msg => "SysV message queue",
        }
    }

    fn remove(self, id: i32) -> io::Result<()> {
        match self {
            Kind::Shm => sys::sysv_shm_remove(id),
            Kind::Sem => sys::sysv_sem_remove(id),
            Kind::Msg => sys::sysv_msg_remove(id),
        }
    }

    /// The pids the kernel keeps of the object's last users (None: someone has it attached
    /// now, for a segment).
    fn last_users(self, id: i32) -> io::Result<Option<Vec<i32>>> {
        match self {
            Kind::Shm => shm::last_users(id),
            Kind::Sem => sem::last_users(id).map(Some),
            Kind::Msg => msg::last_users(id).map(Some),
        }
    }
}

/// (key, id) of every object of `kind` in our IPC namespace.
fn listed(kind: Kind) -> io::Result<Vec<(i32, i32)>> {
    let text = std::fs::read_to_string(format!("/proc/sysvipc/{}", kind.name()))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace().map(|v| v.parse::<i64>().ok());
            Some((f.next()?? as i32, f.next()?? as i32))
        })
        .collect())
}

/// Whom an object's recorded pids name.
#[derive(Debug, PartialEq, Eq)]
enum Users {
    /// A process of the tree (and nobody alive outside it).
    Tree,
    /// A process of the tree and this one, alive and outside the tree.
    Outside(i32),
    /// Nobody of the tree.
    Nobody,
}

fn alive(pid: i32) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `pid` runs ckpt: a restore sets a semaphore set's values, which makes it the
/// set's last user.
fn is_ckpt(pid: i32) -> bool {
    let exe = |p: &str| std::fs::read_link(format!("/proc/{p}/exe")).ok();
    exe(&pid.to_string()).is_some_and(|e| Some(e) == exe("self"))
}

fn users(pids: &[i32], tree: &BTreeSet<i32>) -> Users {
    if !pids.iter().any(|p| tree.contains(p)) {
        return Users::Nobody;
    }
    let outside = pids
        .iter()
        .find(|&&p| !tree.contains(&p) && alive(p) && !is_ckpt(p));
    match outside {
        Some(&p) => Users::Outside(p),
        None => Users::Tree,
    }
}

/// Whether its users `pids` make the object with `id` the tree's; an error if it is shared
/// with a process outside.
fn used_by_tree(
    kind: Kind,
    (key, id): (i32, i32),
    pids: &[i32],
    tree: &BTreeSet<i32>,
) -> Result<bool, String> {
    match users(pids, tree) {
        Users::Tree => Ok(true),
        Users::Nobody => Ok(false),
        Users::Outside(p) => Err(format!(
            "the {} with key {key:#x} (id {id}) is used by the tree and by process {p}, which \
             is not part of it: a restored copy would not be shared with that process",
            kind.what()
        )),
    }
}

/// The tree's semaphore sets and message queues (`tree`: its pids, zombies included); queued
/// messages go into the image.
pub fn dump(
    tree: &BTreeSet<i32>,
    w: &mut ImageWriter,
) -> Result<(Vec<SemSet>, Vec<MsgQueue>), String> {
    let read_err = |kind: Kind| move |e: io::Error| format!("reading the {}s: {e}", kind.what());
    let mut sets = Vec::new();
    for (key, id) in listed(Kind::Sem).map_err(read_err(Kind::Sem))? {
        let Some((set, pids)) = unless_removed(sem::read(key, id)).map_err(read_err(Kind::Sem))?
        else {
            continue;
        };
        if used_by_tree(Kind::Sem, (key, id), &pids, tree)? {
            sets.push(set);
        }
    }
    let mut queues = Vec::new();
    for (key, id) in listed(Kind::Msg).map_err(read_err(Kind::Msg))? {
        let Some(pids) = unless_removed(msg::last_users(id)).map_err(read_err(Kind::Msg))? else {
            continue;
        };
        if used_by_tree(Kind::Msg, (key, id), &pids, tree)? {
            let read = unless_removed(msg::read(key, id, w));
            queues.extend(read.map_err(read_err(Kind::Msg))?);
        }
    }
    Ok((sets, queues))
}

/// `read`'s result, `None` if the object was removed after it was listed (EINVAL, EIDRM): by
/// a process outside the tree, which is frozen; gone for the tree too.
fn unless_removed<T>(read: io::Result<T>) -> io::Result<Option<T>> {
    match read {
        Ok(v) => Ok(Some(v)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIDRM)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Moves ckpt's thread into the IPC namespace of the processes `pids` (nothing if it is
/// ours), where their SysV objects are. A tree spread over several is refused.
pub fn enter_namespace(pids: &[i32]) -> Result<(), String> {
    let ns = |p: String| {
        std::fs::read_link(format!("/proc/{p}/ns/ipc"))
            .map_err(|e| format!("reading the IPC namespace of process {p}: {e}"))
    };
    let ours = ns("self".into())?;
    let mut theirs = BTreeSet::new();
    for &pid in pids {
        theirs.insert(ns(pid.to_string())?);
    }
    if theirs.len() > 1 {
        return Err(format!(
            "its processes are in {} IPC namespaces; ckpt carries a tree in one",
            theirs.len()
        ));
    }
    let (Some(&pid), Some(theirs)) = (pids.first(), theirs.first()) else {
        return Ok(());
    };
    if *theirs == ours {
        return Ok(());
    }
    let fd = std::fs::File::open(format!("/proc/{pid}/ns/ipc"))
        .map_err(|e| format!("opening the IPC namespace of process {pid}: {e}"))?;
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWIPC)
        .map_err(|e| format!("entering the IPC namespace of process {pid}: {e}"))
}

/// Makes an object of `kind` with `key` again through `create` (which returns its id), with
/// its recorded `id` if that is free: a program keeps the id it got, not only the key. In a
/// `fresh` IPC namespace it is always free; elsewhere, when another object has its slot, the
/// object gets another id and a warning says so. A key taken by a leftover of a program that
/// is gone (a checkpoint with --kill leaves its keyed objects behind, as any crashed program
/// does) is freed first.
pub fn create_keyed(
    kind: Kind,
    (key, id): (i32, i32),
    fresh: bool,
    create: impl Fn() -> io::Result<i32>,
) -> io::Result<i32> {
    let next_id = format!("/proc/sys/kernel/{}_next_id", kind.name());
    let attempt = || {
        let asked = std::fs::write(&next_id, id.to_string());
        let made = create();
        if made.is_err() && asked.is_ok() {
            // Not taken: nobody else's object may get it.
            let _ = std::fs::write(&next_id, "-1");
        }
        made
    };
    let exists =
        |r: &io::Result<i32>| matches!(r, Err(e) if e.raw_os_error() == Some(libc::EEXIST));
    let mut made = attempt();
    if exists(&made) && key != libc::IPC_PRIVATE && remove_stale(kind, key) {
        made = attempt();
    }
    let got = made.map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EEXIST) {
            " (it exists here and is in use: restore with --ipcns)"
        } else {
            ""
        };
        io::Error::new(e.kind(), format!("{} key {key:#x}: {e}{hint}", kind.what()))
    })?;
    if got != id {
        if fresh {
            let _ = kind.remove(got);
            return Err(io::Error::other(format!(
                "{} key {key:#x}: got id {got} instead of {id} in a new IPC namespace",
                kind.what()
            )));
        }
        eprintln!(
            "ckpt: the {} with key {key:#x} is id {got} here, not {id} (taken by another): a \
             program that kept the id will not find it (restore with --ipcns to keep ids)",
            kind.what()
        );
    }
    Ok(got)
}

/// Removes the object of `kind` with `key` if it is a leftover (nobody attached, every user
/// it recorded gone). Returns whether it did.
fn remove_stale(kind: Kind, key: i32) -> bool {
    let Ok(objects) = listed(kind) else {
        return false;
    };
    let Some(&(_, id)) = objects.iter().find(|&&(k, _)| k == key) else {
        return false;
    };
    match kind.last_users(id) {
        Ok(Some(pids)) if pids.iter().any(|&p| p > 0) && !pids.iter().any(|&p| alive(p)) => {
            kind.remove(id).is_ok()
        }
        _ => false,
    }
}

/// The SysV objects made for a restore, by kind, in the image's order.
#[derive(Debug, Default)]
pub struct Made {
    pub shm: Vec<i32>,
    pub sem: Vec<i32>,
    pub msg: Vec<i32>,
}

impl Made {
    /// Makes every SysV object of `shared` again (`read` reads a section); none is left if
    /// one fails.
    pub fn make(
        shared: &crate::fds::Shared,
        read: &dyn Fn(Option<usize>) -> io::Result<Vec<u8>>,
        fresh: bool,
    ) -> io::Result<Made> {
        let mut made = Made::default();
        match made.make_each(shared, read, fresh) {
            Ok(()) => Ok(made),
            Err(e) => {
                made.remove_all();
                Err(e)
            }
        }
    }

    fn make_each(
        &mut self,
        shared: &crate::fds::Shared,
        read: &dyn Fn(Option<usize>) -> io::Result<Vec<u8>>,
        fresh: bool,
    ) -> io::Result<()> {
        for s in &shared.sysv_shm {
            self.shm.push(s.make(&read(s.data_section)?, fresh)?);
        }
        for s in &shared.sysv_sem {
            self.sem.push(s.make(fresh)?);
        }
        for q in &shared.sysv_msg {
            self.msg.push(q.make(&read(q.data_section)?, fresh)?);
        }
        Ok(())
    }

    /// Removes them all (a restore that failed).
    pub fn remove_all(&self) {
        let kinds = [
            (Kind::Shm, &self.shm),
            (Kind::Sem, &self.sem),
            (Kind::Msg, &self.msg),
        ];
        for (kind, ids) in kinds {
            for &id in ids {
                let _ = kind.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_removed_after_it_was_listed_is_skipped_and_other_errors_kept() {
        let err = |n| Err::<(), _>(io::Error::from_raw_os_error(n));
        assert!(matches!(unless_removed(Ok(5)), Ok(Some(5))));
        assert!(matches!(unless_removed(err(libc::EINVAL)), Ok(None)));
        assert!(matches!(unless_removed(err(libc::EIDRM)), Ok(None)));
        let kept = unless_removed(err(libc::EACCES)).unwrap_err();
        assert_eq!(kept.raw_os_error(), Some(libc::EACCES));
    }

    #[test]
    fn an_object_is_the_trees_when_a_process_of_it_used_it_and_nobody_alive_outside() {
        // Alive, outside the tree, and not this program (which counts as ckpt).
        let me = std::os::unix::process::parent_id() as i32;
        let tree: BTreeSet<i32> = [1_000_000, 1_000_001].into();
        let dead = 0x3fff_fff0; // above any pid_max
        assert_eq!(users(&[1_000_000, 0], &tree), Users::Tree);
        assert_eq!(users(&[1_000_001, dead], &tree), Users::Tree);
        assert_eq!(users(&[1_000_000, me], &tree), Users::Outside(me));
        // Others' objects are not looked at, whoever else uses them.
        assert_eq!(users(&[me, dead, 0], &tree), Users::Nobody);
        assert_eq!(users(&[0, 0], &tree), Users::Nobody);
    }
}
