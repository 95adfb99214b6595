//! Standard input, output and error connected outside the process (a terminal, a pipe to
//! another program, a UNIX socket): not saved; on restore the process gets `ckpt restore`'s
//! own (like CRIU's --shell-job). A TCP or UDP socket there is the program's own connection
//! (a service started by inetd, or by a systemd socket unit with `Accept=yes`): carried like
//! a socket at any other number (`socket`).

use super::{DumpCtx, DumpResult, Fd, FdKind, FdState, RestoreCtx, View};
use crate::proc::FdEntry;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InheritedStdio {
    /// What it was connected to, for humans.
    pub was: String,
}

pub fn dump(ctx: &mut DumpCtx, e: &FdEntry) -> DumpResult {
    if !(0..=2).contains(&e.fd) || is_inet_socket(ctx.pid, e) {
        return Ok(None);
    }
    let outside = e.target.starts_with("pipe:")
        || e.target.starts_with("socket:")
        || e.target.starts_with("/dev/pts/")
        || e.target.starts_with("/dev/tty")
        || e.target == "/dev/console";
    // A pipe whose both ends the tree holds is the tree's, even at 0-2 (a daemon that closed
    // its stdio and then made a pipe; the right side of a shell pipeline).
    let own_pipe = crate::proc::bracketed_inode(&e.target, "pipe")
        .and_then(|ino| ctx.shared.census.pipes.get(&ino))
        .is_some_and(|ends| ends.inside());
    // So is a UNIX socket connected to one the tree holds (a child's stdio made by its
    // parent with socketpair: socat's SYSTEM and EXEC, libuv's pipes).
    let own_socket = crate::proc::bracketed_inode(&e.target, "socket")
        .and_then(|ino| super::unix::diag(ino).ok())
        .is_some_and(|d| d.peer != 0 && ctx.shared.census.sockets.contains(&d.peer));
    // A terminal whose master the tree holds (a program under tmux) is the tree's too.
    let own_pty = e
        .target
        .strip_prefix("/dev/pts/")
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| ctx.shared.census.pty_masters.contains_key(&n));
    Ok((outside && !own_pipe && !own_socket && !own_pty).then(|| {
        FdKind::InheritStdio(InheritedStdio {
            was: e.target.clone(),
        })
    }))
}

/// Whether fd `e` of process `pid` is an IPv4 or IPv6 socket (false if it cannot be told:
/// then it is taken for stdio, as before).
fn is_inet_socket(pid: i32, e: &FdEntry) -> bool {
    if !e.target.starts_with("socket:") {
        return false;
    }
    let family = crate::sys::steal_fd(pid, e.fd)
        .ok()
        .and_then(|s| super::socket::local_address(&s).ok())
        .and_then(|a| super::socket::family_of(&a));
    matches!(family, Some(libc::AF_INET | libc::AF_INET6))
}

impl FdState for InheritedStdio {
    fn what(&self) -> &'static str {
        "inherited stdio"
    }

    /// The restorer kept its own fd at this number.
    fn restore(&self, _f: &Fd, _ctx: &mut RestoreCtx) -> std::io::Result<()> {
        Ok(())
    }

    fn describe(&self, _f: &Fd, _v: &View) -> String {
        format!("inherited from the restorer (was {})", self.was)
    }
}
