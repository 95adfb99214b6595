//! Credentials: each thread's uids, gids, supplementary groups, capability sets and
//! no_new_privs, read from /proc at checkpoint and set again at restore by each thread itself
//! (injected system calls: credentials are per thread), after every other injected step
//! (from then on a thread may lack the privileges those needed). Also the restorer's
//! temporary filesystem identity ([`as_fs_user`]), so that files are opened, created and
//! bound as the process's user.

use crate::batch::{CallSink, OneByOne};
use crate::errors::{restore_io, RestoreError};
use crate::inject::Injector;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// A thread's credentials, from /proc/PID/task/TID/status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Creds {
    /// Real, effective, saved and filesystem uid.
    pub uid: [u32; 4],
    /// Real, effective, saved and filesystem gid.
    pub gid: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    pub no_new_privs: bool,
}

/// The kernel's limit on supplementary groups (NGROUPS_MAX).
pub const MAX_GROUPS: usize = 65536;

impl Creds {
    /// Sizes the kernel accepts (image data is never trusted).
    pub fn valid(&self) -> bool {
        self.groups.len() <= MAX_GROUPS
    }
}

/// The credentials of thread `tid` of `pid` (its status file).
pub fn read(pid: i32, tid: i32) -> io::Result<Creds> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))?;
    from_status(&text, (pid, tid))
}

/// The credentials in `text`, the status file of thread `tid` of `pid` (named in errors).
pub fn from_status(text: &str, (pid, tid): (i32, i32)) -> io::Result<Creds> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/task/{tid}/status: bad {what} line"),
        )
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let ids = |name: &str| -> io::Result<[u32; 4]> {
        let v: Vec<u32> = field(name)
            .ok_or_else(|| bad(name))?
            .split_whitespace()
            .map(|x| x.parse().map_err(|_| bad(name)))
            .collect::<io::Result<_>>()?;
        v.try_into().map_err(|_| bad(name))
    };
    let caps = |name: &str| -> io::Result<u64> {
        u64::from_str_radix(field(name).ok_or_else(|| bad(name))?, 16).map_err(|_| bad(name))
    };
    Ok(Creds {
        uid: ids("Uid")?,
        gid: ids("Gid")?,
        groups: field("Groups")
            .unwrap_or("")
            .split_whitespace()
            .map(|x| x.parse().map_err(|_| bad("Groups")))
            .collect::<io::Result<_>>()?,
        cap_inheritable: caps("CapInh")?,
        cap_permitted: caps("CapPrm")?,
        cap_effective: caps("CapEff")?,
        cap_bounding: caps("CapBnd")?,
        cap_ambient: caps("CapAmb").unwrap_or(0),
        no_new_privs: field("NoNewPrivs") == Some("1"),
    })
}

/// One thread to give its credentials back: its kernel tid, the tid the program knows (for
/// messages) and what it had.
/// What restored threads start with, and so what they can be given: ckpt's own credentials
/// (all of root's, or an ordinary user's with CAP_CHECKPOINT_RESTORE), and the highest
/// capability this kernel knows.
pub struct Giver {
    own: Creds,
    last_cap: u64,
}

/// The warning of `Giver::warn_if_groups_stay` is said once per restore, not per process.
static GROUPS_WARNED: AtomicBool = AtomicBool::new(false);

impl Giver {
    pub fn new() -> Result<Giver, RestoreError> {
        let last_cap: u64 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        let own = read(std::process::id() as i32, nix::unistd::gettid().as_raw())
            .map_err(restore_io("reading ckpt's own credentials"))?;
        Ok(Giver {
            own,
            last_cap: last_cap.min(63),
        })
    }

    /// Queues into `sink` what gives a thread (`shown_tid` to the program) the credentials
    /// `c`. Order matters: the capability bounding set and groups while still privileged,
    /// uid last with KEEPCAPS so that the permitted capabilities survive it, then the exact
    /// sets.
    pub fn give(
        &self,
        sink: &mut dyn CallSink,
        shown_tid: i32,
        c: &Creds,
    ) -> Result<(), RestoreError> {
        let mut calls = Calls {
            sink,
            shown_tid,
            giver: self,
        };
        // Nothing of the restorer's ambient set; the inheritable set first, while the
        // bounding set still allows it (inheritable must stay within it once dropped).
        let ambient = libc::PR_CAP_AMBIENT as u64;
        calls.prctl(
            "PR_CAP_AMBIENT_CLEAR_ALL",
            [ambient, libc::PR_CAP_AMBIENT_CLEAR_ALL as u64, 0],
        )?;
        let all = if self.last_cap >= 63 {
            u64::MAX
        } else {
            (1u64 << (self.last_cap + 1)) - 1
        };
        let held = self.own.cap_permitted & all;
        calls.capset("capset (inheritable)", held, held, c.cap_inheritable & all)?;
        for cap in (0..=self.last_cap).filter(|cap| c.cap_bounding & (1 << cap) == 0) {
            calls.prctl("PR_CAPBSET_DROP", [libc::PR_CAPBSET_DROP as u64, cap, 0])?;
        }
        calls.ids(c)?;
        calls.capset(
            "capset",
            c.cap_effective,
            c.cap_permitted,
            c.cap_inheritable,
        )?;
        for cap in (0..=self.last_cap).filter(|cap| c.cap_ambient & (1 << cap) != 0) {
            calls.prctl(
                "PR_CAP_AMBIENT_RAISE",
                [ambient, libc::PR_CAP_AMBIENT_RAISE as u64, cap],
            )?;
        }
        calls.prctl("PR_SET_KEEPCAPS", [libc::PR_SET_KEEPCAPS as u64, 0, 0])?;
        if c.no_new_privs {
            calls.prctl(
                "PR_SET_NO_NEW_PRIVS",
                [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0],
            )?;
        }
        Ok(())
    }

    fn can_set_groups(&self) -> bool {
        const CAP_SETGID: u32 = 6;
        self.own.cap_effective & (1 << CAP_SETGID) != 0
    }

    /// An ordinary user (no CAP_SETGID) cannot change their supplementary groups, and needs
    /// the device's group to run ckpt at all: a process that had fewer (a subset: anything
    /// else was refused before, `restore/unprivileged.rs`) keeps the user's. Said once.
    pub fn warn_if_groups_stay<'a>(&self, creds: impl IntoIterator<Item = &'a Creds>) {
        if self.can_set_groups() {
            return;
        }
        let own = &self.own.groups;
        let differ = creds.into_iter().find(|c| !same_set(&c.groups, own));
        if let Some(c) = differ {
            if !GROUPS_WARNED.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "ckpt: warning: the restored processes keep your supplementary groups \
                     {own:?} instead of the image's {:?}: changing them needs CAP_SETGID",
                    c.groups
                );
            }
        }
    }
}

/// Gives the main thread `pid` (`shown_tid` to the program) its credentials `c`, then the
/// process its dumpable flag (changing the effective ids cleared it). The other threads got
/// theirs when they were made (`thread::create_others`). Arguments are written below
/// `scratch` (memory of the process nothing live uses).
pub fn restore_main(
    inj: &Injector,
    (pid, shown_tid): (i32, i32),
    c: Option<&Creds>,
    scratch: u64,
    dumpable: Option<bool>,
    giver: &Giver,
) -> Result<(), RestoreError> {
    // Below the main thread's saved stack pointer and red zone, and below whatever they hold
    // (a group list can be long): nothing live is there.
    let mut sink = OneByOne {
        inj,
        tid: pid,
        below: scratch - 64,
    };
    if let Some(c) = c {
        giver.give(&mut sink, shown_tid, c)?;
    }
    if let Some(d) = dumpable {
        let args = [libc::PR_SET_DUMPABLE as u64, u64::from(d), 0, 0, 0, 0];
        sink.call("PR_SET_DUMPABLE", libc::SYS_prctl, args, None)?;
    }
    Ok(())
}

/// The credential calls of one thread, into a sink.
struct Calls<'a> {
    sink: &'a mut dyn CallSink,
    /// The tid the program knows, for messages.
    shown_tid: i32,
    giver: &'a Giver,
}

impl Calls<'_> {
    /// Groups, gids, then uids (keeping capabilities), then the filesystem ids.
    fn ids(&mut self, c: &Creds) -> Result<(), RestoreError> {
        // Left alone when they are ckpt's already, or cannot be changed (see
        // `warn_if_groups_stay`).
        let own = &self.giver.own;
        if !same_set(&c.groups, &own.groups) && self.giver.can_set_groups() {
            let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
            let at = self.sink.put(&groups, "writing the groups")?;
            let n = c.groups.len() as u64;
            self.call("setgroups", libc::SYS_setgroups, [n, at, 0, 0, 0, 0], None)?;
        }
        let [rg, eg, sg, fg] = c.gid.map(u64::from);
        self.call(
            "setresgid",
            libc::SYS_setresgid,
            [rg, eg, sg, 0, 0, 0],
            None,
        )?;
        self.prctl("PR_SET_KEEPCAPS", [libc::PR_SET_KEEPCAPS as u64, 1, 0])?;
        let [ru, eu, su, fu] = c.uid.map(u64::from);
        self.call(
            "setresuid",
            libc::SYS_setresuid,
            [ru, eu, su, 0, 0, 0],
            None,
        )?;
        // The filesystem ids follow the effective ones; set them (while the permitted
        // capabilities still allow any) only where they differed, and check they took:
        // setfs*id reports the old value, not errors.
        for (what, nr, want, eff) in [
            ("setfsgid", libc::SYS_setfsgid, fg, eg),
            ("setfsuid", libc::SYS_setfsuid, fu, eu),
        ] {
            if want != eff {
                self.call(what, nr, [want, 0, 0, 0, 0, 0], None)?;
                let ask = [u64::from(u32::MAX), 0, 0, 0, 0, 0];
                self.call(what, nr, ask, Some(want as i64))?;
            }
        }
        Ok(())
    }

    fn call(
        &mut self,
        what: &str,
        nr: i64,
        args: [u64; 6],
        expect: Option<i64>,
    ) -> Result<(), RestoreError> {
        let what = format!(
            "giving thread {} its credentials back: {what}",
            self.shown_tid
        );
        self.sink.call(&what, nr, args, expect)
    }

    fn prctl(&mut self, what: &str, a: [u64; 3]) -> Result<(), RestoreError> {
        self.call(what, libc::SYS_prctl, [a[0], a[1], a[2], 0, 0, 0], None)
    }

    /// capset(header {version 3, pid 0}, data[2] {effective, permitted, inheritable} as low
    /// and high 32-bit halves).
    fn capset(&mut self, what: &str, eff: u64, prm: u64, inh: u64) -> Result<(), RestoreError> {
        let mut capdata = Vec::new();
        capdata.extend_from_slice(&0x2008_0522u32.to_le_bytes());
        capdata.extend_from_slice(&0i32.to_le_bytes());
        for half in [0, 32] {
            for set in [eff, prm, inh] {
                capdata.extend_from_slice(&((set >> half) as u32).to_le_bytes());
            }
        }
        let at = self.sink.put(&capdata, "writing the capabilities")?;
        self.call(what, libc::SYS_capset, [at, at + 8, 0, 0, 0, 0], None)
    }
}

/// Whether two group lists hold the same groups.
fn same_set(a: &[u32], b: &[u32]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    a.dedup();
    b.dedup();
    a == b
}

/// While alive, the calling thread opens, creates and binds files as `uid`/`gid` with
/// `groups` (its filesystem ids and supplementary groups; it keeps its other privileges, and
/// they come back on drop). Raw system calls: per thread, unlike glibc's setgroups.
///
/// An ordinary user's restore (no CAP_SETGID) cannot set groups: there the image's groups are
/// a subset of the user's own (`restore/unprivileged.rs` refused anything else), and the user's
/// own are kept.
pub struct AsFsUser {
    /// The groups to put back, if they were changed.
    old_groups: Option<Vec<libc::gid_t>>,
    old_fsuid: u32,
    old_fsgid: u32,
}

pub fn as_fs_user(uid: u32, gid: u32, groups: &[u32]) -> io::Result<AsFsUser> {
    // SAFETY: getgroups with a null list returns the count; then fills a list of that size.
    let old_groups = unsafe {
        let n = libc::getgroups(0, std::ptr::null_mut());
        let mut v = vec![0 as libc::gid_t; n.max(0) as usize];
        let n = libc::getgroups(n, v.as_mut_ptr());
        v.truncate(n.max(0) as usize);
        v
    };
    // SAFETY: setfs*id(-1) only reports the current value.
    let (old_fsuid, old_fsgid) = unsafe {
        (
            libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32,
            libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32,
        )
    };
    let mut guard = AsFsUser {
        old_groups: None,
        old_fsuid,
        old_fsgid,
    };
    if !same_set(&old_groups, groups) {
        // SAFETY: a per-thread credential call with a list of the stated length.
        if unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) } == 0 {
            guard.old_groups = Some(old_groups);
        } else {
            let e = io::Error::last_os_error();
            let within = groups.iter().all(|g| old_groups.contains(g));
            if !(e.raw_os_error() == Some(libc::EPERM) && within) {
                return Err(e);
            }
        }
    }
    // SAFETY: per-thread credential calls; setfs*id(-1) only reports.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        // setfs*id report the old value, not errors: check the new one took.
        if libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32 != uid
            || libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32 != gid
        {
            drop(guard);
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
    }
    Ok(guard)
}

impl Drop for AsFsUser {
    fn drop(&mut self) {
        // SAFETY: as above; back to the previous filesystem ids and groups.
        unsafe {
            libc::syscall(libc::SYS_setfsuid, self.old_fsuid);
            libc::syscall(libc::SYS_setfsgid, self.old_fsgid);
            if let Some(groups) = &self.old_groups {
                libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr());
            }
        }
    }
}
