//! Process trees: the processes a checkpoint takes (the target and every descendant), frozen
//! together so that no process of the tree runs while any state is read; zombies waiting to
//! be reaped; process groups and sessions (checked by `groups`). Restore recreates the tree top-down (see
//! `restore::restorer`): each restorer forks its children's restorers with their pids before
//! it becomes its process, so parent links, pids, groups and sessions come back.

use crate::errors::CheckpointError;
use crate::freeze::Frozen;
use crate::groups::Ids;
use crate::proc;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};

/// A child that has exited and waits for its parent to reap it: recreated as a process that
/// exits at once with the same status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Zombie {
    pub pid: i32,
    /// Its name (a zombie keeps it).
    #[serde(default)]
    pub comm: String,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// The status wait(2) reports: exit code << 8, or the signal that killed it.
    pub exit_status: i32,
}

/// A live process of the tree, frozen.
pub struct Member {
    pub stat: proc::Stat,
    pub frozen: Frozen,
}

/// Every process of a tree, frozen, parents before children; the tree's zombies.
pub struct FrozenTree {
    pub members: Vec<Member>,
    pub zombies: Vec<Zombie>,
    /// Group and session ids whose leader had exited (set by `check_groups`).
    pub gone_leaders: Vec<i32>,
}

/// The pids of the tree rooted at `root` as it is now, parents first (not frozen: it may
/// change; used to reach the processes' interceptors before the freeze).
pub fn list(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while let Some(&pid) = out.get(i) {
        out.extend(proc::children(pid).unwrap_or_default());
        i += 1;
    }
    out
}

/// Whether a process (or zombie) `pid` exists. A group's or session's id stays allocated
/// while anyone is in it, so no other process can have taken its leader's pid.
fn proc_exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits (a second at most) until process `pid`, which is exiting, is a zombie; false if it
/// is gone or does not get there.
fn wait_exited(pid: i32) -> bool {
    for _ in 0..100 {
        match proc::stat(pid) {
            Ok(s) if s.state == 'Z' => return true,
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(_) => return false,
        }
    }
    false
}

impl FrozenTree {
    /// Freezes `roots` (the first must exist; the others are an application's other
    /// processes) and, unless `single`, every descendant. A process is frozen before its
    /// children are listed, so none can fork unseen; the whole tree is listed again once
    /// frozen until nothing new appears (a fork in flight when its parent stopped).
    pub fn freeze(roots: &[i32], single: bool) -> Result<FrozenTree, CheckpointError> {
        let root = roots.first().copied().unwrap_or(0);
        let mut tree = FrozenTree {
            members: Vec::new(),
            zombies: Vec::new(),
            gone_leaders: Vec::new(),
        };
        let mut seen = BTreeSet::new();
        // Members that had children once frozen: only they can be given more (a child's
        // clone with CLONE_PARENT, a subreaper's adopted orphans); a frozen process with
        // none gets none, so it is not listed again (for a process of 500 threads, a read
        // of 500 files while frozen).
        let mut parents = Vec::new();
        let mut queue = VecDeque::from(roots.to_vec());
        loop {
            while let Some(pid) = queue.pop_front() {
                if !seen.insert(pid) {
                    continue;
                }
                if let Some(children) = tree.take(pid, pid == root)? {
                    if !children.is_empty() {
                        parents.push(pid);
                    }
                    queue.extend(children.into_iter().filter(|_| !single));
                }
            }
            if single {
                return Ok(tree);
            }
            for &pid in &parents {
                let children = proc::children(pid).unwrap_or_default();
                queue.extend(children.into_iter().filter(|c| !seen.contains(c)));
            }
            if queue.is_empty() {
                tree.parents_first();
                return Ok(tree);
            }
        }
    }

    /// Freezes `pid` (or records it as a zombie); returns its children, None if it is gone.
    fn take(&mut self, pid: i32, is_root: bool) -> Result<Option<Vec<i32>>, CheckpointError> {
        let stat = match proc::stat(pid) {
            Ok(s) => s,
            Err(_) if !is_root => return Ok(None), // exited and reaped meanwhile
            Err(_) => return Err(CheckpointError::NoSuchProcess(pid)),
        };
        if stat.state == 'Z' || stat.state == 'X' {
            if is_root {
                return Err(CheckpointError::Zombie(pid));
            }
            self.zombies.push(Zombie {
                pid,
                comm: stat.comm.clone(),
                ppid: stat.ppid,
                pgid: stat.pgid,
                sid: stat.sid,
                exit_status: stat.exit_code,
            });
            return Ok(Some(Vec::new()));
        }
        let frozen = match Frozen::freeze(pid) {
            Ok(f) => f,
            // It exited while being stopped (the freeze saw its exit, not a stop): its
            // parent has not reaped it (the parent is frozen), so it is a zombie now, which
            // the image must hold; or, gone.
            Err(CheckpointError::NoSuchProcess(_)) if !is_root => {
                return match wait_exited(pid) {
                    true => self.take(pid, false),
                    false => Ok(None),
                };
            }
            // It exited between the listing and the seize (ptrace refuses an exiting task):
            // a zombie now (or soon), or gone.
            Err(e @ CheckpointError::Attach { .. }) if !is_root => {
                return match wait_exited(pid) {
                    true => self.take(pid, false),
                    false if proc::stat(pid).is_err() => Ok(None),
                    false => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        // Read again now that it cannot change (a child that had just forked may have
        // called setsid meanwhile).
        let stat = proc::stat(pid).unwrap_or(stat);
        let children = proc::children(pid).unwrap_or_default();
        self.members.push(Member { stat, frozen });
        Ok(Some(children))
    }

    /// Orders the members so that every parent comes before its children (with several
    /// roots, a root may be another's descendant), and drops zombies whose parent is not a
    /// member (an application's process that exited meanwhile).
    fn parents_first(&mut self) {
        let mut ordered: Vec<Member> = Vec::new();
        let mut rest = std::mem::take(&mut self.members);
        while !rest.is_empty() {
            let placed: BTreeSet<i32> = ordered.iter().map(|m| m.frozen.pid).collect();
            let in_rest: BTreeSet<i32> = rest.iter().map(|m| m.frozen.pid).collect();
            // Ready: its parent is placed, or is not a member at all.
            let ready =
                |m: &Member| placed.contains(&m.stat.ppid) || !in_rest.contains(&m.stat.ppid);
            let (now, later): (Vec<Member>, Vec<Member>) = rest.into_iter().partition(ready);
            if now.is_empty() {
                ordered.extend(later); // a cycle cannot happen; keep everyone anyway
                break;
            }
            ordered.extend(now);
            rest = later;
        }
        self.members = ordered;
        let pids: BTreeSet<i32> = self.pids().into_iter().collect();
        self.zombies.retain(|z| pids.contains(&z.ppid));
    }

    /// The pids of the live processes.
    pub fn pids(&self) -> Vec<i32> {
        self.members.iter().map(|m| m.frozen.pid).collect()
    }

    /// Checks that every process group and session of the tree can be made again
    /// (`groups::plan`), and records the ids whose leader has exited (no process has that
    /// pid any more): a restore makes those with helper processes.
    pub fn check_groups(&mut self) -> Result<(), CheckpointError> {
        let ids = self.ids();
        let pids: BTreeSet<i32> = ids.iter().map(|p| p.pid).collect();
        let gone: BTreeSet<i32> = ids
            .iter()
            .flat_map(|p| [p.pgid, p.sid])
            // 0: the session and group of the kernel's first process, nobody's to make.
            .filter(|&id| id > 0 && !pids.contains(&id) && !proc_exists(id))
            .collect();
        crate::groups::plan(&ids, &gone).map_err(CheckpointError::Tree)?;
        self.gone_leaders = gone.into_iter().collect();
        Ok(())
    }

    /// Every process's and zombie's ids.
    fn ids(&self) -> Vec<Ids> {
        let live = self.members.iter().map(|m| Ids {
            pid: m.frozen.pid,
            ppid: m.stat.ppid,
            pgid: m.stat.pgid,
            sid: m.stat.sid,
            zombie: false,
        });
        live.chain(self.zombies.iter().map(Ids::from)).collect()
    }

    /// Lets every process go.
    pub fn release(self) -> Result<(), CheckpointError> {
        for m in self.members {
            m.frozen.release()?;
        }
        Ok(())
    }

    /// Kills every process while still stopped, so none runs past the checkpoint.
    pub fn kill(self) -> Result<(), CheckpointError> {
        // Children before their parents; all of them even if one fails.
        let mut first_error = None;
        for m in self.members.into_iter().rev() {
            if let Err(e) = m.frozen.kill() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl From<&Zombie> for crate::groups::Ids {
    fn from(z: &Zombie) -> crate::groups::Ids {
        crate::groups::Ids {
            pid: z.pid,
            ppid: z.ppid,
            pgid: z.pgid,
            sid: z.sid,
            zombie: true,
        }
    }
}
