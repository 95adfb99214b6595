//! Listening sockets (TCP over IPv4/IPv6, UNIX stream and seqpacket): recorded by address, backlog and
//! options, once per tree however many processes hold them (a pre-fork server's master and
//! workers share one). On restore ckpt binds each again before the first restorer forks, as
//! the user of its first holder, in that process's directory and with its umask (a UNIX
//! socket file belongs to it, a relative path resolves as it did); every holder then takes
//! it at its fd numbers. Connections waiting in the accept queue cannot be carried (their
//! other ends are elsewhere): a checkpoint with a non-empty queue is refused rather than
//! lose them.

use super::socket::{display, remove_stale_socket_file, storage_of, unix_path, valid_address};
use super::{unsupported, DumpCtx, DumpError, Fd, FdState, RestoreCtx, View};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, getsockopt, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
};
use nix::sys::stat::{umask, Mode};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListeningSocket {
    /// AF_INET, AF_INET6 or AF_UNIX.
    pub family: i32,
    /// The socket's local address (a `struct sockaddr_*`, as getsockname gives it).
    pub addr: Vec<u8>,
    /// The address for humans.
    pub display: String,
    pub backlog: i32,
    pub reuse_addr: bool,
    pub reuse_port: bool,
    /// IPV6_V6ONLY (AF_INET6 only).
    pub v6_only: bool,
    /// A UNIX seqpacket socket (else stream).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seqpacket: bool,
    /// A UNIX socket's credentials from its listen(2), which its clients' sockets report as
    /// their peer's (SO_PEERCRED): listen is called again as them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listened_by: Option<super::PeerCred>,
    /// A UNIX socket's file, still linked at its path: made again with this owner and mode
    /// (a server may have chmod'ed it: screen keeps its state in the mode bits, and one that
    /// others may connect to must stay so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<super::unix::SockFile>,
}

/// A listening socket of the tree and the process (index in the image) whose user,
/// directory and umask it is made again with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SharedListener {
    #[serde(flatten)]
    pub socket: ListeningSocket,
    pub holder: usize,
}

/// An fd of a listening socket; `listener` indexes `Shared::listeners`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListenEnd {
    pub listener: usize,
}

/// Records socket `s` (a copy of an fd of the process being dumped, inode `inode`), which
/// must listen, once for the tree.
pub fn dump_end(ctx: &mut DumpCtx, s: &OwnedFd, inode: u64) -> Result<ListenEnd, DumpError> {
    if let Some(&listener) = ctx.shared.listen_index.get(&inode) {
        return Ok(ListenEnd { listener });
    }
    let socket = dump(ctx.pid, s, inode)?;
    let listeners = &mut ctx.shared.table.listeners;
    listeners.push(SharedListener {
        socket,
        holder: ctx.process,
    });
    ctx.shared.listen_index.insert(inode, listeners.len() - 1);
    Ok(ListenEnd {
        listener: listeners.len() - 1,
    })
}

/// Where and as whom a holder made its sockets.
pub struct HolderEnv<'a> {
    /// Its pid (in the image).
    pub pid: i32,
    pub cwd: &'a str,
    pub umask: u32,
    pub creds: Option<&'a crate::creds::Creds>,
}

impl HolderEnv<'_> {
    /// Its pid and effective ids, as a socket it connects reports them to its peer.
    pub fn peer_cred(&self) -> Option<super::PeerCred> {
        let c = self.creds?;
        Some(super::PeerCred {
            pid: self.pid,
            uid: c.uid[1],
            gid: c.gid[1],
            groups: c.groups.clone(),
        })
    }
}

/// Makes every listener again, each as its holder (`envs[holder]`). Runs in ckpt before the
/// first restorer forks; its own directory and umask are back when it returns.
pub fn make_all(listeners: &[SharedListener], envs: &[HolderEnv]) -> io::Result<Vec<OwnedFd>> {
    let here = std::env::current_dir()?;
    let made = listeners
        .iter()
        .map(|l| {
            let env = envs
                .get(l.holder)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            std::env::set_current_dir(env.cwd)?;
            let old_umask = umask(Mode::from_bits_truncate(env.umask));
            let user = match env.creds {
                Some(c) => Some(crate::creds::as_fs_user(c.uid[3], c.gid[3], &c.groups)?),
                None => None,
            };
            let made = l.socket.make();
            drop(user);
            umask(old_umask);
            let made = made.and_then(|fd| l.socket.settle_file().map(|_| fd));
            made.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("listening again on {}: {e}", l.socket.display),
                )
            })
        })
        .collect();
    std::env::set_current_dir(here)?;
    made
}

/// Records socket `s` (a copy of one of `pid`'s fds, inode `inode`), which must listen.
fn dump(pid: i32, s: &OwnedFd, inode: u64) -> Result<ListeningSocket, DumpError> {
    let why = |e: nix::Error| unsupported(e.to_string());
    let addr =
        super::socket::local_address(s).map_err(|e| unsupported(format!("getsockname: {e}")))?;
    let family = super::socket::family_of(&addr).unwrap_or(-1);
    let ty = getsockopt(s, sockopt::SockType).map_err(why)?;
    if ![libc::AF_INET, libc::AF_INET6, libc::AF_UNIX].contains(&family) {
        return Err(unsupported(format!(
            "a socket of address family {family} ({}): not supported yet (TCP, UDP, UNIX and \
             netlink sockets are)",
            family_name(family)
        )));
    }
    if !getsockopt(s, sockopt::AcceptConn).map_err(why)? {
        return Err(unsupported(
            "connected and unbound sockets are not supported yet (only listening ones)",
        ));
    }
    let seqpacket = ty == SockType::SeqPacket && family == libc::AF_UNIX;
    if !(ty == SockType::Stream || seqpacket)
        || ![libc::AF_INET, libc::AF_INET6, libc::AF_UNIX].contains(&family)
    {
        return Err(unsupported(
            "only TCP and UNIX stream and seqpacket listening sockets are supported",
        ));
    }
    if !valid_address(family, &addr) {
        return Err(unsupported("unexpected local address"));
    }
    // Connections waiting to be accepted would be lost: refuse.
    let mut pfd = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
    let ready = poll(&mut pfd, PollTimeout::ZERO).unwrap_or(0);
    if ready > 0
        && pfd[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
    {
        return Err(unsupported(
            "connections are waiting in its accept queue; they cannot be carried over (retry \
             when it has accepted them)",
        ));
    }
    let backlog = match family {
        libc::AF_INET | libc::AF_INET6 => tcp_backlog(pid, inode, family == libc::AF_INET6),
        _ => None,
    }
    .unwrap_or(libc::SOMAXCONN);
    let file = match family {
        libc::AF_UNIX => unix_socket_file(pid, s, inode),
        _ => None,
    };
    Ok(ListeningSocket {
        family,
        display: display(family, &addr),
        addr,
        backlog,
        reuse_addr: getsockopt(s, sockopt::ReuseAddr).unwrap_or(false),
        reuse_port: getsockopt(s, sockopt::ReusePort).unwrap_or(false),
        v6_only: family == libc::AF_INET6 && getsockopt(s, sockopt::Ipv6V6Only).unwrap_or(false),
        seqpacket,
        listened_by: match family {
            libc::AF_UNIX => super::peercred::read(s),
            _ => None,
        },
        file,
    })
}

/// The C name of address family `family`, for a refusal.
fn family_name(family: i32) -> &'static str {
    match family {
        libc::AF_PACKET => "AF_PACKET",
        libc::AF_ALG => "AF_ALG",
        libc::AF_VSOCK => "AF_VSOCK",
        libc::AF_BLUETOOTH => "AF_BLUETOOTH",
        libc::AF_CAN => "AF_CAN",
        libc::AF_XDP => "AF_XDP",
        libc::AF_KEY => "AF_KEY",
        libc::AF_TIPC => "AF_TIPC",
        _ => "another family",
    }
}

/// Owner and mode of the file of UNIX socket `s` (inode `inode`), if still linked at its
/// name as process `pid` sees it.
fn unix_socket_file(pid: i32, s: &OwnedFd, inode: u64) -> Option<super::unix::SockFile> {
    let vfs_ino = super::unix::diag(inode).ok()?.vfs_ino;
    super::unix::Name::dump(pid, s, vfs_ino, true)?.file
}

/// The accept backlog of a listening TCP socket: /proc/PID/net/tcp{,6} shows it as the
/// tx_queue of a socket in state LISTEN (0A).
fn tcp_backlog(pid: i32, inode: u64, v6: bool) -> Option<i32> {
    let table = std::fs::read_to_string(format!(
        "/proc/{pid}/net/{}",
        if v6 { "tcp6" } else { "tcp" }
    ))
    .ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(9)?.parse::<u64>().ok()? != inode || *f.get(3)? != "0A" {
            return None;
        }
        let tx = f.get(4)?.split(':').next()?;
        i32::from_str_radix(tx, 16).ok()
    })
}

impl ListeningSocket {
    /// A new socket like the recorded one, bound and listening (in the holder's directory,
    /// with its umask and filesystem ids).
    fn make(&self) -> io::Result<OwnedFd> {
        let family = AddressFamily::from_i32(self.family)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))?;
        let addr = storage_of(&self.addr)?;
        let ty = match self.seqpacket {
            true => SockType::SeqPacket,
            false => SockType::Stream,
        };
        let fd = socket(family, ty, SockFlag::empty(), None)?;
        // TCP: the checkpointed process's connections may linger in TIME_WAIT.
        if self.reuse_addr || self.family != libc::AF_UNIX {
            setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        }
        if self.reuse_port {
            setsockopt(&fd, sockopt::ReusePort, &true)?;
        }
        if self.family == libc::AF_INET6 {
            setsockopt(&fd, sockopt::Ipv6V6Only, &self.v6_only)?;
        }
        if self.family == libc::AF_UNIX {
            remove_stale_socket_file(&unix_path(&self.addr));
        }
        bind(fd.as_raw_fd(), &addr)?;
        // Above nix's bound (SOMAXCONN), -1: the kernel's net.core.somaxconn, which capped
        // the original's backlog too.
        let backlog = Backlog::new(self.backlog).unwrap_or(Backlog::MAXALLOWABLE);
        super::peercred::listen_as_peer(&fd, backlog, self.listened_by.as_ref())?;
        Ok(fd)
    }

    /// Gives its socket file (bound by `make`, in the same directory) the recorded owner and
    /// mode.
    fn settle_file(&self) -> io::Result<()> {
        match &self.file {
            Some(f) => super::unix::settle_socket_file(&unix_path(&self.addr), f),
            None => Ok(()),
        }
    }
}

impl FdState for ListenEnd {
    fn what(&self) -> &'static str {
        "the listening socket"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()> {
        let socket = ctx
            .shared
            .listeners
            .get(self.listener)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        super::place_copy(socket, f)
    }

    fn valid(&self, _f: &Fd, v: &View) -> bool {
        v.shared.listeners.get(self.listener).is_some_and(|l| {
            valid_address(l.socket.family, &l.socket.addr)
                && l.socket.file.as_ref().is_none_or(|f| f.mode <= 0o7777)
        })
    }

    fn describe(&self, _f: &Fd, v: &View) -> String {
        match v.shared.listeners.get(self.listener) {
            Some(l) => format!(
                "listening socket {} (backlog {})",
                l.socket.display, l.socket.backlog
            ),
            None => "listening socket ?".into(),
        }
    }
}
