//! Credentials: each thread's uids, gids, supplementary groups, capability sets and
//! no_new_privs, read from /proc at checkpoint and set again at restore by each thread itself
//! (injected system calls: credentials are per thread), after every other injected step
//! (from then on a thread may lack the privileges those needed). Also the restorer's
//! temporary filesystem identity ([`as_fs_user`]), so that files are opened, created and
//! bound as the process's user.

use crate::errors::{restore_io, RestoreError};
use crate::inject::Injector;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;

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
pub struct ThreadCreds<'a> {
    pub tid: i32,
    pub shown_tid: i32,
    pub creds: Option<&'a Creds>,
}

/// Gives every thread the credentials it had (the restorer's are root's), then the process
/// its dumpable flag (changing the effective ids cleared it). Arguments are written below
/// `scratch` (memory of the process nothing live uses), the main thread first in `threads`.
pub fn restore(
    inj: &Injector,
    threads: &[ThreadCreds],
    scratch: u64,
    dumpable: Option<bool>,
) -> Result<(), RestoreError> {
    let last_cap: u64 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    // Arguments go below the main thread's saved stack pointer and red zone, and below
    // whatever they hold (a group list can be long): nothing live is there.
    let below = scratch - 64;
    // The restored threads start with ckpt's own credentials (all of root's, or an ordinary
    // user's with CAP_CHECKPOINT_RESTORE).
    let own = read(std::process::id() as i32, nix::unistd::gettid().as_raw())
        .map_err(restore_io("reading ckpt's own credentials"))?;
    warn_if_groups_stay(threads, &own);
    for t in threads {
        let calls = Calls {
            inj,
            tid: t.tid,
            shown_tid: t.shown_tid,
            below,
            last_cap: last_cap.min(63),
            own: &own,
        };
        if let Some(c) = t.creds {
            calls.restore(c)?;
        }
    }
    if let (Some(d), Some(main)) = (dumpable, threads.first()) {
        let calls = Calls {
            inj,
            tid: main.tid,
            shown_tid: main.shown_tid,
            below,
            last_cap,
            own: &own,
        };
        calls.prctl(
            "PR_SET_DUMPABLE",
            [libc::PR_SET_DUMPABLE as u64, u64::from(d), 0],
        )?;
    }
    Ok(())
}

/// Injected credential calls in one thread.
struct Calls<'a> {
    inj: &'a Injector,
    tid: i32,
    /// The tid the program knows, for messages.
    shown_tid: i32,
    /// Arguments are written below this address.
    below: u64,
    last_cap: u64,
    /// What the thread has before: ckpt's own credentials.
    own: &'a Creds,
}

impl Calls<'_> {
    /// Order matters: the capability bounding set and groups while still privileged, uid last
    /// with KEEPCAPS so that the permitted capabilities survive it, then the exact sets.
    fn restore(&self, c: &Creds) -> Result<(), RestoreError> {
        // Nothing of the restorer's ambient set; the inheritable set first, while the
        // bounding set still allows it (inheritable must stay within it once dropped).
        let ambient = libc::PR_CAP_AMBIENT as u64;
        self.prctl(
            "PR_CAP_AMBIENT_CLEAR_ALL",
            [ambient, libc::PR_CAP_AMBIENT_CLEAR_ALL as u64, 0],
        )?;
        let all = if self.last_cap >= 63 {
            u64::MAX
        } else {
            (1u64 << (self.last_cap + 1)) - 1
        };
        let held = self.own.cap_permitted & all;
        self.capset("capset (inheritable)", held, held, c.cap_inheritable & all)?;
        for cap in (0..=self.last_cap).filter(|cap| c.cap_bounding & (1 << cap) == 0) {
            self.prctl("PR_CAPBSET_DROP", [libc::PR_CAPBSET_DROP as u64, cap, 0])?;
        }
        self.ids(c)?;
        self.capset(
            "capset",
            c.cap_effective,
            c.cap_permitted,
            c.cap_inheritable,
        )?;
        for cap in (0..=self.last_cap).filter(|cap| c.cap_ambient & (1 << cap) != 0) {
            self.prctl(
                "PR_CAP_AMBIENT_RAISE",
                [ambient, libc::PR_CAP_AMBIENT_RAISE as u64, cap],
            )?;
        }
        self.prctl("PR_SET_KEEPCAPS", [libc::PR_SET_KEEPCAPS as u64, 0, 0])?;
        if c.no_new_privs {
            self.prctl(
                "PR_SET_NO_NEW_PRIVS",
                [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0],
            )?;
        }
        Ok(())
    }

    /// Groups, gids, then uids (keeping capabilities), then the filesystem ids.
    fn ids(&self, c: &Creds) -> Result<(), RestoreError> {
        // Left alone when they are ckpt's already, or cannot be changed (see
        // `warn_if_groups_stay`).
        if !same_set(&c.groups, &self.own.groups) && can_set_groups(self.own) {
            let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
            let at = self.write_below(&groups, "writing the groups")?;
            let n = c.groups.len() as u64;
            self.call("setgroups", libc::SYS_setgroups, [n, at, 0, 0, 0, 0])?;
        }
        let [rg, eg, sg, fg] = c.gid.map(u64::from);
        self.call("setresgid", libc::SYS_setresgid, [rg, eg, sg, 0, 0, 0])?;
        self.prctl("PR_SET_KEEPCAPS", [libc::PR_SET_KEEPCAPS as u64, 1, 0])?;
        let [ru, eu, su, fu] = c.uid.map(u64::from);
        self.call("setresuid", libc::SYS_setresuid, [ru, eu, su, 0, 0, 0])?;
        // The filesystem ids follow the effective ones; set them (while the permitted
        // capabilities still allow any) only where they differed, and check they took:
        // setfs*id reports the old value, not errors.
        for (what, nr, want, eff) in [
            ("setfsgid", libc::SYS_setfsgid, fg, eg),
            ("setfsuid", libc::SYS_setfsuid, fu, eu),
        ] {
            if want != eff {
                self.call(what, nr, [want, 0, 0, 0, 0, 0])?;
                let now = self.call(what, nr, [u64::from(u32::MAX), 0, 0, 0, 0, 0])?;
                if now as u64 != want {
                    return Err(self.failed(what, libc::EPERM));
                }
            }
        }
        Ok(())
    }

    fn failed(&self, what: &str, errno: i32) -> RestoreError {
        RestoreError::Creds {
            tid: self.shown_tid,
            what: what.to_owned(),
            source: io::Error::from_raw_os_error(errno),
        }
    }

    fn call(&self, what: &str, nr: i64, args: [u64; 6]) -> Result<i64, RestoreError> {
        let (r, _) = self
            .inj
            .syscall(self.tid, nr, args)
            .map_err(restore_io(format!("{what} in thread {}", self.shown_tid)))?;
        if r < 0 {
            return Err(self.failed(what, -r as i32));
        }
        Ok(r)
    }

    fn prctl(&self, what: &str, a: [u64; 3]) -> Result<i64, RestoreError> {
        self.call(what, libc::SYS_prctl, [a[0], a[1], a[2], 0, 0, 0])
    }

    /// Writes `data` below the scratch address; returns where.
    fn write_below(&self, data: &[u8], what: &str) -> Result<u64, RestoreError> {
        let at = (self.below - data.len() as u64) & !15;
        self.inj.poke(at, data).map_err(restore_io(what))?;
        Ok(at)
    }

    /// capset(header {version 3, pid 0}, data[2] {effective, permitted, inheritable} as low
    /// and high 32-bit halves).
    fn capset(&self, what: &str, eff: u64, prm: u64, inh: u64) -> Result<i64, RestoreError> {
        let mut capdata = Vec::new();
        capdata.extend_from_slice(&0x2008_0522u32.to_le_bytes());
        capdata.extend_from_slice(&0i32.to_le_bytes());
        for half in [0, 32] {
            for set in [eff, prm, inh] {
                capdata.extend_from_slice(&((set >> half) as u32).to_le_bytes());
            }
        }
        let at = self.write_below(&capdata, "writing the capabilities")?;
        self.call(what, libc::SYS_capset, [at, at + 8, 0, 0, 0, 0])
    }
}

fn can_set_groups(own: &Creds) -> bool {
    const CAP_SETGID: u32 = 6;
    own.cap_effective & (1 << CAP_SETGID) != 0
}

/// An ordinary user (no CAP_SETGID) cannot change their supplementary groups, and needs the
/// device's group to run ckpt at all: a process that had fewer (a subset: anything else was
/// refused before, `restore/unprivileged.rs`) keeps the user's. Said once.
fn warn_if_groups_stay(threads: &[ThreadCreds], own: &Creds) {
    if can_set_groups(own) {
        return;
    }
    let differ = threads
        .iter()
        .filter_map(|t| t.creds)
        .find(|c| !same_set(&c.groups, &own.groups));
    if let Some(c) = differ {
        eprintln!(
            "ckpt: warning: the restored processes keep your supplementary groups {:?} \
             instead of the image's {:?}: changing them needs CAP_SETGID",
            own.groups, c.groups
        );
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
