//! Standard input, output and error connected outside the process (a terminal, a pipe to
//! another program, a socket): not saved; on restore the process gets `ckpt restore`'s own
//! (like CRIU's --shell-job).

use super::{DumpCtx, DumpResult, Fd, FdKind, FdState, RestoreCtx, View};
use crate::proc::FdEntry;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InheritedStdio {
    /// What it was connected to, for humans.
    pub was: String,
}

pub fn dump(ctx: &mut DumpCtx, e: &FdEntry) -> DumpResult {
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
    Ok(
        ((0..=2).contains(&e.fd) && outside && !own_pipe && !own_socket && !own_pty).then(|| {
            FdKind::InheritStdio(InheritedStdio {
                was: e.target.clone(),
            })
        }),
    )
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
