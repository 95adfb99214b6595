//! Raw system calls that nix does not cover, in thin checked wrappers grouped by topic; the
//! rest of ckpt calls nix (or std) directly. Each wrapper says why nix will not do.

mod file;
mod ipc;
mod netlink;
mod pagemap;
mod process;
mod ptrace;
mod signal;
mod tcp;
mod thread;
mod tty;
pub mod uffd;
mod unix;
mod wait;

pub use file::*;
pub use ipc::*;
pub use netlink::*;
pub use pagemap::*;
pub use process::*;
pub use ptrace::*;
pub use signal::*;
pub use tcp::*;
pub use thread::*;
pub use tty::*;
pub use unix::*;
pub use wait::*;

use std::io;

pub(crate) fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn check_int(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The kernel's internal "restart this system call" results (ERESTARTSYS, ERESTARTNOINTR,
/// ERESTARTNOHAND, ERESTART_RESTARTBLOCK), as a stopped thread's rax shows them.
pub const RESTART_CODES: [i64; 4] = [-512, -513, -514, -516];

/// Those the kernel's signal code can restart for a thread it releases (all but
/// ERESTART_RESTARTBLOCK, which needs the task's restart block).
pub const KERNEL_RESTARTED: [i64; 3] = [-512, -513, -514];
