//! What a restore by a user other than root may give the processes it makes: only what that
//! user could give a process of their own. An image is data anyone can write; restored, its
//! processes get the ids, capabilities and program it names. So a restore not run as root
//! refuses, before anything is made, an image asking for another user's or group's ids,
//! supplementary groups the caller is not in, capabilities the caller does not hold, or a
//! set-user-ID or set-group-ID program, naming what it asked for.
//!
//! The capabilities that let ckpt restore at all (CAP_CHECKPOINT_RESTORE, CAP_SYS_ADMIN) are
//! not the caller's to hand on: a user may hold them only to run ckpt (a file capability).

use crate::creds::Creds;
use crate::manifest::Manifest;
use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::MetadataExt;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_CHECKPOINT_RESTORE: u32 = 40;

/// The credentials of the user running the restore.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Real, effective, saved.
    pub uids: [u32; 3],
    pub gids: [u32; 3],
    pub groups: BTreeSet<u32>,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
}

impl Caller {
    /// This process's credentials.
    pub fn current() -> io::Result<Caller> {
        let pid = std::process::id() as i32;
        let c = crate::creds::read(pid, pid)?;
        Ok(Caller {
            uids: [c.uid[0], c.uid[1], c.uid[2]],
            gids: [c.gid[0], c.gid[1], c.gid[2]],
            groups: c.groups.into_iter().collect(),
            cap_permitted: c.cap_permitted,
            cap_effective: c.cap_effective,
            cap_bounding: c.cap_bounding,
        })
    }

    /// What `uid` could give a process of its own as an ordinary user: its ids, primary and
    /// supplementary groups (from the user database), no capabilities. None if the user
    /// database does not know `uid`.
    pub fn user(uid: u32) -> Option<Caller> {
        use nix::unistd::{getgrouplist, Gid, Uid, User};
        let u = User::from_uid(Uid::from_raw(uid)).ok()??;
        let name = std::ffi::CString::new(u.name).ok()?;
        let groups = getgrouplist(&name, u.gid).ok()?;
        let gid = u.gid.as_raw();
        Some(Caller {
            uids: [uid; 3],
            gids: [gid; 3],
            groups: groups.into_iter().map(Gid::as_raw).collect(),
            cap_permitted: 0,
            cap_effective: 0,
            cap_bounding: u64::MAX,
        })
    }

    /// Whether it holds what the module's RESTORE (and clone3 with chosen pids) requires.
    pub fn may_restore(&self) -> bool {
        self.cap_effective & ((1 << CAP_SYS_ADMIN) | (1 << CAP_CHECKPOINT_RESTORE)) != 0
    }

    /// The capabilities an image may ask for.
    fn may_give(&self) -> u64 {
        self.cap_permitted & !(1 << CAP_SYS_ADMIN) & !(1 << CAP_CHECKPOINT_RESTORE)
    }
}

/// Why `caller` may not restore `manifest` (None: it may). Checks every thread's
/// credentials, then every process's program.
pub fn refusal(manifest: &Manifest, caller: &Caller) -> Option<String> {
    for p in &manifest.processes {
        for t in &p.threads {
            let Some(c) = &t.creds else { continue };
            if let Some(why) = creds_refusal(c, caller) {
                return Some(format!(
                    "process {} (thread {}) asks for {why}",
                    p.pid, t.tid
                ));
            }
        }
        if let Some(why) = exe_refusal(&p.attrs.exe) {
            return Some(format!("process {}: {why}", p.pid));
        }
    }
    None
}

/// What of `c` the caller could not give a process of its own.
fn creds_refusal(c: &Creds, caller: &Caller) -> Option<String> {
    let foreign = |ids: &[u32], own: &[u32]| ids.iter().any(|i| !own.contains(i));
    if foreign(&c.uid, &caller.uids) {
        return Some(format!(
            "uid {} (real, effective, saved, fs), where uid {} may give only its own",
            join(&c.uid),
            caller.uids[1]
        ));
    }
    if foreign(&c.gid, &caller.gids) {
        return Some(format!(
            "gid {} (real, effective, saved, fs), where uid {} may give only gid {}",
            join(&c.gid),
            caller.uids[1],
            join(&dedup(&caller.gids))
        ));
    }
    let missing: Vec<u32> = (c.groups.iter())
        .filter(|g| !caller.groups.contains(g))
        .copied()
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "supplementary groups {} that uid {} is not in",
            join(&missing),
            caller.uids[1]
        ));
    }
    let asked = c.cap_inheritable | c.cap_permitted | c.cap_effective | c.cap_ambient;
    let lacking = asked & !caller.may_give();
    if lacking != 0 {
        return Some(format!(
            "capabilities uid {} cannot give: {}",
            caller.uids[1],
            cap_names(lacking)
        ));
    }
    let lacking = c.cap_bounding & !caller.cap_bounding;
    if lacking != 0 {
        return Some(format!(
            "a bounding set with capabilities uid {}'s lacks: {}",
            caller.uids[1],
            cap_names(lacking)
        ));
    }
    None
}

/// Whether the program `exe` (as recorded) is set-user-ID or set-group-ID now.
fn exe_refusal(exe: &str) -> Option<String> {
    if exe.is_empty() || exe.ends_with(" (deleted)") {
        return None;
    }
    let meta = std::fs::metadata(exe).ok()?;
    let mode = meta.mode();
    let (suid, sgid) = (mode & 0o4000 != 0, mode & 0o2000 != 0);
    match (suid, sgid) {
        (false, false) => None,
        _ => Some(format!(
            "its program {exe} is {} (owner uid {}, group {}, mode {:04o}): only root may \
             restore a privileged program",
            if suid { "set-user-ID" } else { "set-group-ID" },
            meta.uid(),
            meta.gid(),
            mode & 0o7777
        )),
    }
}

fn dedup(ids: &[u32]) -> Vec<u32> {
    let set: BTreeSet<u32> = ids.iter().copied().collect();
    set.into_iter().collect()
}

fn join(ids: &[u32]) -> String {
    let v: Vec<String> = ids.iter().map(u32::to_string).collect();
    v.join(" ")
}

/// The kernel's capability names, by number (include/uapi/linux/capability.h).
const CAP_NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// "cap_setuid cap_sys_admin" for the bits of `mask`.
fn cap_names(mask: u64) -> String {
    let names: Vec<String> = (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| match CAP_NAMES.get(b as usize) {
            Some(n) => format!("cap_{n}"),
            None => format!("capability {b}"),
        })
        .collect();
    names.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Caller {
        Caller {
            uids: [1000; 3],
            gids: [1000; 3],
            groups: [1000, 20].into_iter().collect(),
            cap_permitted: 0,
            cap_effective: 0,
            cap_bounding: (1 << 41) - 1,
        }
    }

    fn own() -> Creds {
        Creds {
            uid: [1000; 4],
            gid: [1000; 4],
            groups: vec![20],
            cap_bounding: (1 << 41) - 1,
            ..Creds::default()
        }
    }

    #[test]
    fn a_user_may_restore_its_own_credentials_only() {
        assert_eq!(creds_refusal(&own(), &user()), None);
        let root = Creds {
            uid: [0; 4],
            ..own()
        };
        let why = creds_refusal(&root, &user()).unwrap();
        assert!(
            why.contains("uid 0 0 0 0") && why.contains("uid 1000 may give only its own"),
            "{why}"
        );
        let setgid = Creds {
            gid: [1000, 42, 42, 42],
            ..own()
        };
        let why = creds_refusal(&setgid, &user()).unwrap();
        assert!(why.contains("gid 1000 42 42 42"), "{why}");
        let groups = Creds {
            groups: vec![20, 27],
            ..own()
        };
        let why = creds_refusal(&groups, &user()).unwrap();
        assert!(why.contains("supplementary groups 27"), "{why}");
    }

    #[test]
    fn capabilities_must_be_the_callers_and_not_the_ones_restoring_needs() {
        let caps = Creds {
            cap_permitted: 1 << 7,
            cap_effective: 1 << 7,
            ..own()
        };
        let why = creds_refusal(&caps, &user()).unwrap();
        assert!(why.ends_with("cap_setuid"), "{why}");
        let holder = Caller {
            cap_permitted: (1 << 7) | (1 << CAP_CHECKPOINT_RESTORE),
            ..user()
        };
        assert_eq!(creds_refusal(&caps, &holder), None);
        let restore = Creds {
            cap_ambient: 1 << CAP_CHECKPOINT_RESTORE,
            ..own()
        };
        let why = creds_refusal(&restore, &holder).unwrap();
        assert!(why.ends_with("cap_checkpoint_restore"), "{why}");
        let narrow = Caller {
            cap_bounding: 0,
            ..user()
        };
        let why = creds_refusal(&own(), &narrow).unwrap();
        assert!(
            why.contains("bounding set") && why.contains("cap_chown"),
            "{why}"
        );
    }

    #[test]
    fn a_set_user_id_program_is_refused() {
        let dir = std::env::temp_dir().join(format!("ckpt-unpriv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("prog");
        std::fs::write(&exe, b"#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let path = exe.to_str().unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(exe_refusal(path), None);
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let why = exe_refusal(path).unwrap();
        assert!(
            why.contains("set-user-ID") && why.contains("mode 4755"),
            "{why}"
        );
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o2755)).unwrap();
        assert!(exe_refusal(path).unwrap().contains("set-group-ID"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
