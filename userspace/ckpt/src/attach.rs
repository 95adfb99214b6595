//! The module reads a process only for its tracer (docs/design.md, "Permission"): the
//! kernel's ptrace attach is the permission check, with every LSM's. This module says in
//! words why an attach was refused, and attaches for the time of one look (`ckpt info`).

use crate::proc;
use nix::sys::ptrace;
use nix::unistd::Pid;
use std::io;

/// Why PTRACE_SEIZE of `pid` failed with `err`, as far as can be told from outside.
pub fn why_refused(pid: i32, err: nix::Error) -> String {
    if err != nix::Error::EPERM {
        return err.desc().to_owned();
    }
    let tracer = proc::status_field(pid, "TracerPid").ok();
    if let Some(t) = tracer.as_deref().filter(|t| *t != "0") {
        return format!("it is already traced by process {t} (a debugger?)");
    }
    let me = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let root = nix::unistd::geteuid().is_root();
    let ids = |name| {
        let v = proc::status_field(pid, name).unwrap_or_default();
        v.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let (uids, gids) = (ids("Uid"), ids("Gid"));
    let all_are = |list: &str, id: u32| {
        // Real, effective, saved (the filesystem id does not count for ptrace).
        let v: Vec<&str> = list.split_whitespace().take(3).collect();
        v.len() == 3 && v.iter().all(|x| *x == id.to_string())
    };
    let all_mine = all_are(&uids, me.0) && all_are(&gids, me.1);
    if !root && !all_mine {
        return format!(
            "it runs as uid {uids} gid {gids} (real, effective, saved, fs), not all yours \
             (uid {}, gid {}): only root may checkpoint another user's process or a setuid or \
             setgid program",
            me.0, me.1
        );
    }
    match yama_scope() {
        Some(3) => {
            return "kernel.yama.ptrace_scope is 3: no process may be traced, not even by root"
                .into()
        }
        Some(2) if !root => {
            return "kernel.yama.ptrace_scope is 2: only a process with CAP_SYS_PTRACE may \
                    trace another"
                .into()
        }
        Some(1) if !root => {
            return "kernel.yama.ptrace_scope is 1: only an ancestor of a process may trace it \
                    (start the program under `ckpt run`: its interceptor lets a checkpoint by \
                    its own user attach)"
                .into()
        }
        _ => {}
    }
    // Reading environ takes ptrace's read rule, which only dumpability can fail here (ids
    // match, and Yama does not restrict reads).
    let environ = std::fs::File::open(format!("/proc/{pid}/environ"))
        .and_then(|mut f| std::io::Read::read(&mut f, &mut [0u8; 1]));
    if !root && environ.is_err_and(|e| e.kind() == io::ErrorKind::PermissionDenied) {
        return "it is not dumpable (it changed its ids, or called prctl(PR_SET_DUMPABLE, 0))"
            .into();
    }
    "ptrace refused it (a security module: SELinux, AppArmor?)".into()
}

/// kernel.yama.ptrace_scope, if Yama is in the kernel.
fn yama_scope() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok()?;
    s.trim().parse().ok()
}

/// Runs `f` while `pid` (a process, not ours) is traced by this thread, stopped for a moment
/// (PTRACE_SEIZE + PTRACE_INTERRUPT, so that it can be detached again). The seize's error
/// when the attach is refused.
pub fn while_traced<T>(pid: i32, f: impl FnOnce() -> T) -> Result<T, nix::Error> {
    if pid == std::process::id() as i32 {
        return Ok(f()); // the module lets a process read itself
    }
    let target = Pid::from_raw(pid);
    ptrace::seize(target, ptrace::Options::empty())?;
    let stopped = ptrace::interrupt(target)
        .map_err(io::Error::from)
        .and_then(|()| crate::sys::waitpid(pid, libc::__WALL));
    let out = f();
    if stopped.is_ok_and(|s| libc::WIFSTOPPED(s)) {
        let _ = ptrace::detach(target, None);
    }
    Ok(out)
}
