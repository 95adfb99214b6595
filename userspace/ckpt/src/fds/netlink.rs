//! Netlink sockets: the audit socket dbus-daemon or sshd keep to log through, a route or
//! uevent listener. Made again with their protocol and type, bound as they were (the same
//! port id when it is free, else one the kernel gives, with a warning; the multicast groups
//! they had joined) and connected to the same peer. Messages queued at one (the kernel's
//! answers or events) cannot be put back: they are dropped, with a warning.

use super::socket::Protocol;
use super::{place, unsupported, DumpCtx, DumpError, Fd, FdState, Make, MakeCtx, RestoreCtx, View};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, connect, getpeername, getsockname, getsockopt, setsockopt, sockopt, NetlinkAddr, SockType,
};
use nix::{setsockopt_impl, sockopt_impl};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

// NETLINK_ADD_MEMBERSHIP, which nix does not name.
sockopt_impl!(
    AddMembership,
    SetOnly,
    libc::SOL_NETLINK,
    libc::NETLINK_ADD_MEMBERSHIP,
    u32
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetlinkSocket {
    /// NETLINK_ROUTE, NETLINK_AUDIT, NETLINK_KOBJECT_UEVENT...
    pub protocol: i32,
    /// SOCK_DGRAM (else SOCK_RAW).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub datagram: bool,
    /// Its port id (0: never bound).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port: u32,
    /// The multicast groups it joined (numbers from 1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<u32>,
    /// The peer it is connected to: port id and groups mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<(u32, u32)>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Records socket `s` (a copy of fd `fd` of the process), an AF_NETLINK one.
pub fn dump(ctx: &DumpCtx, s: &OwnedFd, fd: i32) -> Result<NetlinkSocket, DumpError> {
    let why = |what: &str, e: nix::Error| unsupported(format!("a netlink socket: {what}: {e}"));
    let protocol = getsockopt(s, Protocol).map_err(|e| why("SO_PROTOCOL", e))?;
    let ty = getsockopt(s, sockopt::SockType).map_err(|e| why("SO_TYPE", e))?;
    let own: NetlinkAddr = getsockname(s.as_raw_fd()).map_err(|e| why("getsockname", e))?;
    let groups = crate::sys::netlink_groups(s.as_fd())
        .map_err(|e| unsupported(format!("a netlink socket's groups: {e}")))?;
    let peer = getpeername::<NetlinkAddr>(s.as_raw_fd())
        .ok()
        .map(|p| (p.pid(), p.groups()))
        .filter(|&p| p != (0, 0));
    let mut pfd = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
    if poll(&mut pfd, PollTimeout::ZERO).unwrap_or(0) > 0 {
        eprintln!(
            "ckpt: warning: messages queued at netlink socket fd {fd} of process {} (protocol \
             {protocol}) are dropped: they cannot be put back",
            ctx.pid
        );
    }
    Ok(NetlinkSocket {
        protocol,
        datagram: ty == SockType::Datagram,
        port: own.pid(),
        groups,
        peer,
    })
}

impl FdState for NetlinkSocket {
    fn what(&self) -> &'static str {
        "the netlink socket"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()> {
        place(self.make(f.flags, &ctx.making())?, f)
    }

    fn valid(&self, _f: &Fd, _v: &View) -> bool {
        self.groups.iter().all(|&g| (1..=1024).contains(&g))
    }

    fn describe(&self, _f: &Fd, _v: &View) -> String {
        let mut out = format!("netlink socket (protocol {}", self.protocol);
        if self.port != 0 {
            out += &format!(", port {}", self.port);
        }
        if !self.groups.is_empty() {
            out += &format!(", groups {:?}", self.groups);
        }
        out + ")"
    }
}

impl Make for NetlinkSocket {
    fn make(&self, _flags: u32, _ctx: &MakeCtx) -> io::Result<OwnedFd> {
        let s = crate::sys::netlink_socket(self.datagram, self.protocol)?;
        if self.port != 0 {
            let low = |g: &u32| (*g <= 32).then(|| 1u32 << (g - 1));
            let mask = self.groups.iter().filter_map(low).fold(0, |m, b| m | b);
            if let Err(e) = bind(s.as_raw_fd(), &NetlinkAddr::new(self.port, mask)) {
                if e != nix::Error::EADDRINUSE {
                    return Err(e.into());
                }
                eprintln!(
                    "ckpt: warning: netlink port {} is taken: the socket gets another",
                    self.port
                );
                bind(s.as_raw_fd(), &NetlinkAddr::new(0, mask))?;
            }
        }
        for &g in self.groups.iter().filter(|&&g| g > 32) {
            setsockopt(&s, AddMembership, &g)?;
        }
        if let Some((port, groups)) = self.peer {
            connect(s.as_raw_fd(), &NetlinkAddr::new(port, groups))?;
        }
        Ok(s)
    }
}
