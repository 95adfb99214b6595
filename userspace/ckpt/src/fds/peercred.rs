//! The credentials a connected UNIX socket reports for its peer (SO_PEERCRED: pid, uid, gid;
//! SO_PEERGROUPS). The kernel sets them once, from the task making the connection
//! (net/unix/af_unix.c, 7.2): socketpair(2) gives both ends its caller's; connect(2) gives
//! the accepted end the connecting task's and the client end those its listener took at
//! listen(2). It keeps a reference to the pid, whose number (pid_vnr) it reports even after
//! that task has exited, and the credentials' effective uid and gid.
//!
//! So a pair that must report what it did is made by short-lived helper processes with the
//! recorded pid (clone3 set_tid) and ids (setgroups, setresgid, setresuid, keeping their
//! capabilities), each doing one call and exiting before anything of the image runs: one
//! socketpair(2) when both ends report the same, else listen(2) as the client end's peer and
//! connect(2) as the accepted end's. A recorded pid that is taken here (or below 1) is given
//! up with a warning: the helper has another pid; the ids come back all the same.

use crate::sys;
use nix::sys::socket::{
    accept, getsockname, getsockopt, listen, recvmsg, sendmsg, socketpair, sockopt, AddressFamily,
    Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrStorage,
};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
use serde::{Deserialize, Serialize};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The credentials a socket reports for its peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerCred {
    /// As ckpt saw it (its pid namespace).
    pub pid: i32,
    /// Effective ids.
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<u32>,
}

/// What socket `s` reports for its peer; None when it has no credentials recorded (a datagram
/// socket connected by connect(2): pid 0, uid and gid -1).
pub fn read(s: &OwnedFd) -> Option<PeerCred> {
    let c = getsockopt(s, sockopt::PeerCredentials).ok()?;
    if c.pid() == 0 && c.uid() == u32::MAX {
        return None;
    }
    Some(PeerCred {
        pid: c.pid(),
        uid: c.uid(),
        gid: c.gid(),
        groups: sys::peer_groups(s.as_fd()).unwrap_or_default(),
    })
}

/// A connected pair of type `ty` whose ends both report `cred` (None: made by ckpt itself, as
/// for a pair that reported none).
pub fn socketpair_as(ty: SockType, cred: Option<&PeerCred>) -> io::Result<[OwnedFd; 2]> {
    let make = || -> io::Result<Vec<OwnedFd>> {
        let (a, b) = socketpair(AddressFamily::Unix, ty, None, SockFlag::empty())?;
        Ok(vec![a, b])
    };
    let fds = match cred {
        Some(c) => as_peer(c, make)?,
        None => make()?,
    };
    two(fds)
}

/// A connection to `listener` (bound, not listening yet), made so that the client end
/// reports `listen_as` and the accepted end `connect_as`, connecting from directory `cwd`
/// (where a relative name resolves). Returns [client, accepted]; the listener is closed.
pub fn connected_as(
    listener: OwnedFd,
    ty: SockType,
    [listening, connecting]: [Option<&PeerCred>; 2],
    cwd: &str,
) -> io::Result<[OwnedFd; 2]> {
    listen_as_peer(&listener, Backlog::new(1)?, listening)?;
    let addr: SockaddrStorage = getsockname(listener.as_raw_fd())?;
    let client = nix::sys::socket::socket(AddressFamily::Unix, ty, SockFlag::empty(), None)?;
    super::unix::in_dir(cwd, || connect_as(&client, &addr, connecting))?;
    Ok([client, accept(&listener)?])
}

/// listen(2) on `fd` as `cred` (its clients' sockets report it), or as ckpt when None.
pub fn listen_as_peer(fd: &OwnedFd, backlog: Backlog, cred: Option<&PeerCred>) -> io::Result<()> {
    let listening = || -> io::Result<Vec<OwnedFd>> {
        listen(fd, backlog)?;
        Ok(Vec::new())
    };
    match cred {
        Some(c) => as_peer(c, listening).map(drop),
        None => listening().map(drop),
    }
}

/// connect(2) of `fd` to `addr` as `cred` (the accepted end reports it), or as ckpt when None.
pub fn connect_as(fd: &OwnedFd, addr: &SockaddrStorage, cred: Option<&PeerCred>) -> io::Result<()> {
    let connecting = || -> io::Result<Vec<OwnedFd>> {
        nix::sys::socket::connect(fd.as_raw_fd(), addr)?;
        Ok(Vec::new())
    };
    match cred {
        Some(c) => as_peer(c, connecting).map(drop),
        None => connecting().map(drop),
    }
}

fn two(fds: Vec<OwnedFd>) -> io::Result<[OwnedFd; 2]> {
    <[OwnedFd; 2]>::try_from(fds).map_err(|_| io::Error::from_raw_os_error(libc::EPROTO))
}

/// Runs `f` in a helper process with `cred`'s pid and ids; returns the descriptors it made.
fn as_peer(
    cred: &PeerCred,
    f: impl FnOnce() -> io::Result<Vec<OwnedFd>>,
) -> io::Result<Vec<OwnedFd>> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let pid = fork_helper(cred.pid)?;
    if pid == 0 {
        drop(ours);
        let r = become_peer(cred).and_then(|()| f());
        let _ = hand_back(&theirs, r);
        sys::exit_now(0);
    }
    drop(theirs);
    let got = take_back(&ours);
    let status = sys::waitpid(pid, 0)?;
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(io::Error::other(format!(
            "the helper with pid {pid} ended with status {status:#x}"
        )));
    }
    got.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "making a UNIX socket as pid {} uid {} gid {} (its recorded peer): {e}",
                cred.pid, cred.uid, cred.gid
            ),
        )
    })
}

/// Forks with pid `want` if it is free, else with another (a warning says so). Returns 0 in
/// the child.
fn fork_helper(want: i32) -> io::Result<i32> {
    if want > 0 {
        match sys::fork_with_pid(Some(want)) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::EINVAL)) => {}
            r => return r,
        }
    }
    eprintln!(
        "ckpt: warning: pid {want} is taken here: a UNIX socket's peer credentials \
         (SO_PEERCRED) come back with another pid"
    );
    sys::fork_with_pid(None)
}

/// In the helper: takes `cred`'s ids, keeping its capabilities (a connect to a path its
/// user may not reach still works).
fn become_peer(cred: &PeerCred) -> io::Result<()> {
    sys::keep_caps_across_setuid()?;
    let groups: Vec<Gid> = cred.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    setgroups(&groups)?;
    let (u, g) = (Uid::from_raw(cred.uid), Gid::from_raw(cred.gid));
    setresgid(g, g, g)?;
    setresuid(u, u, u)?;
    Ok(())
}

/// In the helper: sends `r` (the descriptors, or the error's errno) to ckpt.
fn hand_back(chan: &OwnedFd, r: io::Result<Vec<OwnedFd>>) -> io::Result<()> {
    let (errno, fds) = match r {
        Ok(fds) => (0i32, fds),
        Err(e) => (e.raw_os_error().unwrap_or(libc::EIO), Vec::new()),
    };
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let bytes = errno.to_ne_bytes();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs = if raw.is_empty() { &[][..] } else { &cmsg[..] };
    sendmsg::<()>(
        chan.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        cmsgs,
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// What the helper sent on `chan` (end of file: it died first).
fn take_back(chan: &OwnedFd) -> io::Result<Vec<OwnedFd>> {
    let mut bytes = [0u8; 4];
    let mut iov = [IoSliceMut::new(&mut bytes)];
    let mut cmsg = nix::cmsg_space!([RawFd; 2]);
    let msg = recvmsg::<()>(
        chan.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(got) = c {
            // SAFETY: the kernel installed these for this call; they are ours alone.
            fds.extend(
                got.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.bytes != 4 {
        return Err(io::Error::other("the helper ended before it answered"));
    }
    match i32::from_ne_bytes(bytes) {
        0 => Ok(fds),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{bind, connect, socket, UnixAddr};

    /// A socketpair reports its maker (us); two datagram sockets connected by connect(2)
    /// report no credentials. (Making pairs as someone else forks helpers, which a
    /// multi-threaded test harness must not: the guest tests cover it.)
    #[test]
    fn peer_credentials_are_read_or_absent() {
        let (a, _b) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::empty(),
        )
        .unwrap();
        let c = read(&a).unwrap();
        assert_eq!(c.pid, std::process::id() as i32);
        assert_eq!(c.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(c.gid, nix::unistd::getegid().as_raw());
        let dgram = || {
            socket(
                AddressFamily::Unix,
                SockType::Datagram,
                SockFlag::empty(),
                None,
            )
        };
        let (x, y) = (dgram().unwrap(), dgram().unwrap());
        let name = format!("ckpt-peercred-test-{}", std::process::id());
        let addr = UnixAddr::new_abstract(name.as_bytes()).unwrap();
        bind(y.as_raw_fd(), &addr).unwrap();
        connect(x.as_raw_fd(), &addr).unwrap();
        assert_eq!(read(&x), None);
    }
}
