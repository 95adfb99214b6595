//! Process groups and sessions: how a restore makes each one again, decided from the
//! recorded ids alone, so that the same decision refuses at checkpoint a tree the restore
//! could not rebuild.
//!
//! A group or session is made by its leader when the leader is a process (or a zombie) of
//! the tree; it is taken from whoever restores the tree when it is a root's and its leader
//! lives outside (a shell job). When its leader had exited at checkpoint (`gone`: a
//! double-fork daemon's session, a pipeline whose first command ended), a temporary helper
//! process with the leader's pid makes it, as CRIU's helper tasks do:
//! - a session: the helper is forked from outside (ckpt restore, or the pid namespace's
//!   init), calls setsid, forks the roots in that session and exits. They are reparented to
//!   whoever forked the helper (made a subreaper for this, or the init): where a root is
//!   anyway. Only roots can be forked so: a process gets its session from its parent at
//!   fork, so a process whose parent is in another session was reparented to it (a
//!   subreaper's child) or forked before its parent's setsid; both are refused.
//! - a group: the helper is a child of the process that forks the group's members (their
//!   common parent, or a session helper), made the group's leader before they are forked
//!   and join it, killed and reaped once they have, before anything of the image runs. A
//!   group lives on without its leader as long as it has members.

use std::collections::{BTreeMap, BTreeSet};

/// A process (or zombie) of a tree, as far as groups and sessions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub zombie: bool,
}

/// What the restore does for groups and sessions beyond each process's own setsid/setpgid.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Sessions whose leader is gone: session id (the helper's pid) -> the roots its helper
    /// forks, in image order.
    pub sessions: BTreeMap<i32, Vec<i32>>,
    /// Groups whose leader is gone, made by a helper: group id (the helper's pid) -> the
    /// process that forks the helper and the group's members (a process of the image, or a
    /// session helper).
    pub groups: BTreeMap<i32, i32>,
    /// Groups the restore makes (by their leader or a helper); the others are inherited.
    made: BTreeSet<i32>,
}

impl Plan {
    /// Whether the restore makes group `pgid` (else its members keep the one they inherit).
    pub fn makes_group(&self, pgid: i32) -> bool {
        self.made.contains(&pgid)
    }

    /// The session helper that forks root `pid`, if any.
    pub fn session_helper_of(&self, pid: i32) -> Option<i32> {
        self.sessions
            .iter()
            .find(|(_, roots)| roots.contains(&pid))
            .map(|(&sid, _)| sid)
    }

    /// The group helpers process `host` forks.
    pub fn group_helpers_of(&self, host: i32) -> Vec<i32> {
        self.groups
            .iter()
            .filter(|(_, &h)| h == host)
            .map(|(&g, _)| g)
            .collect()
    }

    /// Every helper's pid.
    pub fn helper_pids(&self) -> Vec<i32> {
        self.sessions
            .keys()
            .chain(self.groups.keys())
            .copied()
            .collect()
    }

    /// Whether no helper is needed.
    pub fn no_helpers(&self) -> bool {
        self.sessions.is_empty() && self.groups.is_empty()
    }
}

/// How a root gets its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootSession {
    /// It leads it (setsid).
    Own,
    /// Its leader is gone: a helper makes it.
    Helper(i32),
    /// From whoever restores the tree (a shell job); its group too.
    Inherited,
}

/// Decides how every group and session of `procs` is made; `gone` are the ids whose leader
/// had exited at checkpoint. An error says which process cannot be restored and why.
pub fn plan(procs: &[Ids], gone: &BTreeSet<i32>) -> Result<Plan, String> {
    let t = Tree::new(procs, gone)?;
    let mut plan = Plan::default();
    for p in procs.iter().filter(|p| t.is_root(p)) {
        if let RootSession::Helper(sid) = t.root_session(p) {
            plan.sessions.entry(sid).or_default().push(p.pid);
        }
    }
    t.check_sessions()?;
    let pgids: BTreeSet<i32> = procs.iter().map(|p| p.pgid).collect();
    for g in pgids {
        t.group(g, &mut plan)?;
    }
    let pids: BTreeSet<i32> = procs.iter().map(|p| p.pid).collect();
    if let Some(h) = plan.helper_pids().into_iter().find(|h| pids.contains(h)) {
        return Err(format!("helper pid {h} is a process of the tree"));
    }
    Ok(plan)
}

struct Tree<'a> {
    procs: &'a [Ids],
    gone: &'a BTreeSet<i32>,
    /// Every process and zombie by pid.
    by_pid: BTreeMap<i32, &'a Ids>,
}

impl<'a> Tree<'a> {
    fn new(procs: &'a [Ids], gone: &'a BTreeSet<i32>) -> Result<Tree<'a>, String> {
        let by_pid: BTreeMap<i32, &Ids> = procs.iter().map(|p| (p.pid, p)).collect();
        let live_parent = |z: &Ids| by_pid.get(&z.ppid).is_some_and(|p| !p.zombie);
        if let Some(z) = procs.iter().find(|z| z.zombie && !live_parent(z)) {
            return Err(format!("zombie {}: its parent is not in the tree", z.pid));
        }
        Ok(Tree {
            procs,
            gone,
            by_pid,
        })
    }

    /// A live process whose parent is not in the tree.
    fn is_root(&self, p: &Ids) -> bool {
        !p.zombie && !self.by_pid.contains_key(&p.ppid)
    }

    fn root_session(&self, p: &Ids) -> RootSession {
        if p.sid == p.pid {
            RootSession::Own
        } else if self.gone.contains(&p.sid) {
            RootSession::Helper(p.sid)
        } else {
            RootSession::Inherited
        }
    }

    /// Who forks `p` at restore: its parent, a session helper, or None (from outside).
    fn creator(&self, p: &Ids) -> Option<i32> {
        if !self.is_root(p) {
            return Some(p.ppid);
        }
        match self.root_session(p) {
            RootSession::Helper(sid) => Some(sid),
            _ => None,
        }
    }

    /// Every process that is not a root gets its session from its parent, or makes its
    /// own; a zombie's own session has no other member (they would have to be its
    /// children, forked before it exits).
    fn check_sessions(&self) -> Result<(), String> {
        for p in self.procs.iter().filter(|p| !self.is_root(p)) {
            let parent_sid = self.by_pid.get(&p.ppid).map_or(0, |q| q.sid);
            if p.sid == p.pid {
                let other = self.procs.iter().find(|q| q.sid == p.pid && q.pid != p.pid);
                if let (true, Some(q)) = (p.zombie, other) {
                    return Err(format!(
                        "process {} is in session {}, whose leader is a zombie now: not \
                         supported (it would have to be forked by its leader)",
                        q.pid, p.pid
                    ));
                }
            } else if parent_sid != p.sid {
                return Err(format!(
                    "process {} is in session {}, but its parent {} is in session {}: it was \
                     forked before its parent made its own session, or reparented to its \
                     parent (a subreaper); sessions are inherited by fork only, so this cannot \
                     be rebuilt (not supported)",
                    p.pid, p.sid, p.ppid, parent_sid
                ));
            }
        }
        Ok(())
    }

    /// The members of group `g` that do not get it from their parent at fork: they are
    /// forked by their creator and join it. `g`'s leader itself is not one.
    fn entries(&self, g: i32) -> Vec<&'a Ids> {
        let parent_in = |p: &Ids| self.by_pid.get(&p.ppid).is_some_and(|q| q.pgid == g);
        self.procs
            .iter()
            .filter(|p| p.pgid == g && p.pid != g && (self.is_root(p) || !parent_in(p)))
            .collect()
    }

    /// The one process that forks every entry of group `g` (and so can make it before they
    /// join): `expected`, if given, or whichever it is.
    fn single_creator(&self, g: i32, expected: Option<i32>) -> Result<i32, String> {
        let mut creators = self.entries(g).into_iter().map(|p| (p, self.creator(p)));
        let Some((first, host)) = creators.next() else {
            return expected.ok_or_else(|| format!("process group {g} has no member"));
        };
        let want = expected.or(host);
        for (p, c) in std::iter::once((first, host)).chain(creators) {
            if c.is_none() || c != want {
                return Err(format!(
                    "process {} is in process group {g}, whose leader is gone, and is not \
                     forked by the same process as the group's other members or its leader; \
                     the group cannot be made before it joins (not supported)",
                    p.pid
                ));
            }
        }
        want.ok_or_else(|| format!("process group {g}: no process to make it"))
    }

    /// Decides how group `g` is made; records helpers in `plan`.
    fn group(&self, g: i32, plan: &mut Plan) -> Result<(), String> {
        let inherited_root =
            |p: &&Ids| self.is_root(p) && self.root_session(p) == RootSession::Inherited;
        let member = self.procs.iter().find(|p| p.pgid == g).map_or(g, |p| p.pid);
        if let Some(l) = self.by_pid.get(&g) {
            if l.pgid != g {
                return Err(format!(
                    "process {member} is in process group {g}, whose leader {g} has moved to \
                     group {} since: not supported (no helper can take pid {g})",
                    l.pgid
                ));
            }
            if inherited_root(l) {
                return Ok(()); // a shell job's own group: it stays in the restorer's
            }
            if l.zombie {
                // Forked and grouped before its siblings by its parent, which must fork
                // the group's other members too.
                self.single_creator(g, Some(l.ppid))?;
            }
        } else if self
            .procs
            .iter()
            .filter(inherited_root)
            .any(|r| r.pgid == g)
        {
            return Ok(()); // led from outside, a root's: inherited
        } else if plan.sessions.contains_key(&g) {
            // The session helper's setsid made it; only the roots it forks can join it.
            self.single_creator(g, Some(g))?;
        } else if self.gone.contains(&g) {
            let host = self.single_creator(g, None)?;
            plan.groups.insert(g, host);
        } else {
            return Err(format!(
                "process {member} is in process group {g}, whose leader is not a process of \
                 the tree but is still alive (the group was joined from outside): not supported"
            ));
        }
        plan.made.insert(g);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
