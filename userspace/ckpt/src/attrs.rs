//! Process attributes: name, executable, working directory, umask, personality, resource
//! limits and the dumpable flag. Read from /proc and the module at checkpoint; set by the
//! restorer on itself before the restore ioctl (the directory and umask first, as root,
//! since a daemon may sit in a directory it could not enter itself).

use crate::errors::{checkpoint_io, restore_io, CheckpointError, RestoreError};
use crate::inject::Injector;
use crate::memory::MmLayout;
use crate::thread;
use crate::{proc, sys};
use nix::sys::personality::{self, Persona};
use nix::sys::stat::{umask, Mode};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// prctl(PR_SET_MM, PR_SET_MM_EXE_FILE, fd), which needs CAP_SYS_RESOURCE; or
/// prctl(PR_SET_MM, PR_SET_MM_MAP, &map, size) with the map's exe_fd, which needs only
/// CAP_CHECKPOINT_RESTORE (an ordinary user's restore).
const PR_SET_MM: u64 = 35;
const PR_SET_MM_EXE_FILE: u64 = 13;
const PR_SET_MM_MAP: u64 = 14;
/// sizeof(struct prctl_mm_map): eleven addresses, the auxv pointer, its size, exe_fd.
const PRCTL_MM_MAP_SIZE: usize = 11 * 8 + 8 + 4 + 4;

/// Resource limits 0..RLIMITS are saved (RLIMIT_CPU .. RLIMIT_RTTIME).
const RLIMITS: u32 = 16;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attrs {
    pub comm: String,
    pub exe: String,
    pub cwd: String,
    pub umask: u32,
    pub personality: u32,
    pub rlimits: Vec<Rlimit>,
    /// Whether the process was dumpable (PR_GET_DUMPABLE), as far as /proc shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dumpable: Option<bool>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: u32,
    pub cur: u64,
    pub max: u64,
}

/// Reads the attributes of stopped process `pid`; `personality` comes from the module,
/// `euid` (its main thread's) tells how to read the dumpable flag.
pub fn dump(pid: i32, comm: &str, personality: u32, euid: u32) -> Result<Attrs, CheckpointError> {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
        .map_err(checkpoint_io(pid, "reading cwd"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rlimits = Vec::new();
    for resource in 0..RLIMITS {
        let (cur, max) = sys::prlimit_get(pid, resource).map_err(checkpoint_io(pid, "prlimit"))?;
        rlimits.push(Rlimit { resource, cur, max });
    }
    Ok(Attrs {
        comm: comm.to_owned(),
        exe,
        cwd: cwd.to_string_lossy().into_owned(),
        umask: proc::umask(pid).map_err(checkpoint_io(pid, "reading umask"))?,
        personality,
        rlimits,
        dumpable: proc::dumpable(pid, euid),
    })
}

impl Attrs {
    /// In the restored process (its address space the image's, ckpt's binary no longer
    /// mapped, still root): /proc/PID/exe names its program again, by injected openat and
    /// PR_SET_MM_EXE_FILE. Informational for most programs, so a failure is said, not fatal.
    ///
    /// Without CAP_SYS_RESOURCE (an ordinary user's restore) it sets the link through
    /// PR_SET_MM_MAP, giving the memory layout the module has already put in place (`mm`),
    /// so that nothing else changes.
    pub fn restore_exe(&self, inj: &Injector, pid: i32, scratch: u64, mm: &MmLayout) {
        if self.exe.is_empty() || self.exe.ends_with(" (deleted)") {
            return;
        }
        let mut path = self.exe.as_bytes().to_vec();
        path.push(0);
        let at = (scratch - 64 - path.len() as u64) & !15;
        let map_at = (at - PRCTL_MM_MAP_SIZE as u64) & !15;
        let flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
        let set = |fd: u64| {
            let args = [PR_SET_MM, PR_SET_MM_EXE_FILE, fd, 0, 0, 0];
            match thread::call(inj, pid, "PR_SET_MM_EXE_FILE", libc::SYS_prctl, args) {
                Err(RestoreError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::EPERM) =>
                {
                    inj.poke(map_at, &prctl_mm_map(mm, fd as u32))
                        .map_err(restore_io("writing the memory layout"))?;
                    let size = PRCTL_MM_MAP_SIZE as u64;
                    let args = [PR_SET_MM, PR_SET_MM_MAP, map_at, size, 0, 0];
                    thread::call(inj, pid, "PR_SET_MM_MAP", libc::SYS_prctl, args)
                }
                r => r,
            }
        };
        let r = inj
            .poke(at, &path)
            .map_err(restore_io("writing the program's path"))
            .and_then(|()| {
                let args = [libc::AT_FDCWD as u64, at, flags, 0, 0, 0];
                thread::call(inj, pid, "opening the program", libc::SYS_openat, args)
            })
            .and_then(|fd| {
                let r = set(fd as u64);
                let _ = thread::call(
                    inj,
                    pid,
                    "close",
                    libc::SYS_close,
                    [fd as u64, 0, 0, 0, 0, 0],
                );
                r
            });
        if let Err(e) = r {
            eprintln!("ckpt: /proc/{pid}/exe still names ckpt: {e}");
        }
    }

    /// In the restorer, first of all: the working directory and umask.
    pub fn restore_cwd_umask(&self) -> Result<(), (String, std::io::Error)> {
        std::env::set_current_dir(Path::new(&self.cwd))
            .map_err(|e| (format!("chdir {}", self.cwd), e))?;
        umask(Mode::from_bits_truncate(self.umask));
        Ok(())
    }

    /// In the restorer, once its files are open: resource limits and personality.
    pub fn restore_limits(&self) -> Result<(), (String, std::io::Error)> {
        for r in &self.rlimits {
            sys::prlimit_set(r.resource, r.cur, r.max)
                .map_err(|e| (format!("setrlimit {}", r.resource), e))?;
        }
        personality::set(Persona::from_bits_retain(self.personality as i32))
            .map_err(|e| ("personality".to_owned(), e.into()))?;
        Ok(())
    }
}

/// struct prctl_mm_map for `mm` with `exe_fd` and no auxv (the kernel keeps its own).
fn prctl_mm_map(mm: &MmLayout, exe_fd: u32) -> Vec<u8> {
    let fields = [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        0, // auxv
    ];
    let mut map: Vec<u8> = fields.iter().flat_map(|f| f.to_le_bytes()).collect();
    map.extend_from_slice(&0u32.to_le_bytes()); // auxv_size
    map.extend_from_slice(&exe_fd.to_le_bytes());
    debug_assert_eq!(map.len(), PRCTL_MM_MAP_SIZE);
    map
}
