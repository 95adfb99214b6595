//! The network lock of a checkpoint. While the tree is frozen, an nftables table drops every
//! packet coming in to its established TCP connections (from peers outside, and between its
//! own processes), so that their state holds still while each is read in repair mode
//! (`fds::tcp`). With --kill the connections are put in repair mode again just before the
//! kill (`arm_for_kill`): a socket closed in repair mode sends nothing, so the connection is
//! neither reset nor ended, and the table stays (`keep`) until `ckpt restore` has made them
//! again: a peer sees a stall, not a reset.
//!
//! `take` and `release` are the pair; a lock that is neither kept nor released is released on
//! drop. A guard process, forked by `take` with copies of the sockets, undoes it all (repair
//! off, table deleted) if ckpt dies before saying otherwise, so that a killed ckpt leaves
//! neither a rule nor a socket in repair mode behind. (The tree, let go the moment its tracer
//! dies, could meet a socket still in repair mode only if ckpt died in the instant between
//! `arm_for_kill` and the kill, or while reading one connection.)

use crate::sys;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

/// What the guard is told: keep the lock (the tree is killed) or undo it.
const KEEP: u8 = b'k';
const UNDO: u8 = b'u';

pub struct NetLock {
    sockets: Vec<OwnedFd>,
    table: Option<String>,
    guard: Option<(nix::unistd::Pid, OwnedFd)>,
}

impl NetLock {
    /// Locks the connections `sockets` (copies of the tree's established TCP sockets; their
    /// local and peer `endpoints`).
    pub fn take(
        sockets: Vec<OwnedFd>,
        endpoints: &[(SocketAddr, SocketAddr)],
    ) -> io::Result<NetLock> {
        let mut lock = NetLock {
            sockets,
            table: None,
            guard: None,
        };
        if lock.sockets.is_empty() {
            return Ok(lock);
        }
        let name = format!("ckpt_{}_{}", std::process::id(), now_ns());
        lock.guard = Some(spawn_guard(&lock.sockets, &name)?);
        add_table(&name, endpoints)?;
        lock.table = Some(name);
        Ok(lock)
    }

    /// No lock (nothing to hold back).
    pub fn none() -> NetLock {
        NetLock {
            sockets: Vec::new(),
            table: None,
            guard: None,
        }
    }

    /// Right before the tree is killed: every connection in repair mode, so that closing it
    /// sends nothing.
    pub fn arm_for_kill(&self) -> io::Result<()> {
        for s in &self.sockets {
            sys::tcp_set_repair(s, true)?;
        }
        Ok(())
    }

    /// The table holding back packets, if any (its name goes into the image).
    pub fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }

    /// The tree was killed: the lock stays until `ckpt restore` lifts it.
    pub fn keep(mut self) {
        self.tell_guard(KEEP);
        self.table = None;
        self.sockets.clear();
    }

    /// Undoes the lock: repair mode off, the table deleted.
    pub fn release(mut self) {
        self.undo();
    }

    fn undo(&mut self) {
        for s in self.sockets.drain(..) {
            let _ = sys::tcp_set_repair(&s, false);
        }
        if let Some(name) = self.table.take() {
            let _ = delete_table(&name);
        }
        self.tell_guard(UNDO);
    }

    fn tell_guard(&mut self, what: u8) {
        if let Some((pid, pipe)) = self.guard.take() {
            let _ = nix::unistd::write(&pipe, &[what]);
            drop(pipe);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}

impl Drop for NetLock {
    fn drop(&mut self) {
        self.undo();
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The nftables table dropping the peers' packets of `endpoints` (local, peer).
fn table_text(name: &str, endpoints: &[(SocketAddr, SocketAddr)]) -> String {
    let mut rules = String::new();
    for (local, peer) in endpoints {
        let ip = if peer.is_ipv4() { "ip" } else { "ip6" };
        rules.push_str(&format!(
            "    {ip} saddr {} tcp sport {} {ip} daddr {} tcp dport {} drop\n",
            peer.ip(),
            peer.port(),
            local.ip(),
            local.port()
        ));
    }
    // Packets a restore makes on the peers' behalf (a FIN received again) come through.
    format!(
        "table inet {name} {{\n  chain hold {{\n    type filter hook input priority -150; \
         policy accept;\n    meta mark {:#x} accept\n{rules}  }}\n}}\n",
        crate::fds::PACKET_MARK
    )
}

fn nft(args: &[&str], input: Option<&str>) -> io::Result<()> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("running nft (nftables): {e}")))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn add_table(name: &str, endpoints: &[(SocketAddr, SocketAddr)]) -> io::Result<()> {
    nft(&["-f", "-"], Some(&table_text(name, endpoints)))
        .map_err(|e| io::Error::new(e.kind(), format!("holding back the peers' packets: {e}")))
}

/// Deletes the lock's table `name` (a restore lifting the lock).
pub fn delete_table(name: &str) -> io::Result<()> {
    nft(&["delete", "table", "inet", name], None)
}

/// Whether the table `name` exists.
pub fn table_exists(name: &str) -> bool {
    nft(&["list", "table", "inet", name], None).is_ok()
}

/// Forks the guard: it holds copies of `sockets` and waits on a pipe; EOF (ckpt died) or
/// UNDO makes it undo the lock, KEEP makes it leave it.
fn spawn_guard(sockets: &[OwnedFd], table: &str) -> io::Result<(nix::unistd::Pid, OwnedFd)> {
    let (read_end, write_end) = nix::unistd::pipe()?;
    // SAFETY: ckpt is single-threaded here; the child only uses async-signal-safe calls
    // until it execs nft or exits.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok((child, write_end)),
        nix::unistd::ForkResult::Child => {
            drop(write_end);
            guard(read_end, sockets, table)
        }
    }
}

fn guard(pipe: OwnedFd, sockets: &[OwnedFd], table: &str) -> ! {
    // Out of the caller's job: a ^C meant for ckpt must not take the guard too.
    let _ = nix::unistd::setsid();
    let mut what = [0u8; 1];
    let told = nix::unistd::read(&pipe, &mut what).unwrap_or(0);
    if told == 1 && what[0] == KEEP {
        sys::exit_now(0);
    }
    for s in sockets {
        let _ = sys::tcp_set_repair(s, false);
    }
    if told == 0 && table_exists(table) {
        let _ = delete_table(table);
    }
    sys::exit_now(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_drops_only_the_peers_packets_of_each_connection() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let peer: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let local6: SocketAddr = "[::1]:80".parse().unwrap();
        let peer6: SocketAddr = "[::1]:5555".parse().unwrap();
        let t = table_text("ckpt_1_2", &[(local, peer), (local6, peer6)]);
        assert!(t.starts_with("table inet ckpt_1_2 {"));
        assert!(
            t.contains("ip saddr 10.0.0.2 tcp sport 40000 ip daddr 127.0.0.1 tcp dport 5000 drop")
        );
        assert!(t.contains("ip6 saddr ::1 tcp sport 5555 ip6 daddr ::1 tcp dport 80 drop"));
        assert!(t.contains("hook input"));
        assert!(t.contains("meta mark 0x636b7074 accept\n    ip saddr"));
    }
}
