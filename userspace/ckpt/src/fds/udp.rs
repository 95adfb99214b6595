//! UDP sockets (IPv4, IPv6): recorded once per tree, like listening sockets, with their
//! local address, the peer of a connected one, their options (SO_REUSEADDR/REUSEPORT,
//! SO_BROADCAST, IPV6_V6ONLY, buffer sizes) and their queued datagrams, peeked (SO_PEEK_OFF
//! set to 0, then MSG_PEEK|MSG_TRUNC gives one datagram after the other, as for UNIX
//! datagram sockets), each with its sender's address. On restore ckpt makes each again
//! before the restorers fork: options, bound (a port taken since fails the restore, naming
//! it), connected, then every queued datagram sent to it again as if from its original
//! sender (`packet`: a raw IP packet with the sender's address, so that recvfrom gives what
//! it gave; to the socket's own address, or the loopback one when it is bound to any).

use super::packet;
use super::socket::{display, local_address, sockaddr_bytes, storage_of, valid_address};
use super::tcp::socket_addr;
use super::unix::PeekOff;
use super::{unsupported, DumpCtx, DumpError, Fd, FdState, RestoreCtx, View};
use crate::image::{section_is, Section, SectionKind};
use nix::sys::socket::{
    bind, connect, getpeername, getsockopt, recvmsg, setsockopt, socket, sockopt, AddressFamily,
    MsgFlags, SockFlag, SockType, SockaddrStorage,
};
use serde::{Deserialize, Serialize};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

/// The queued datagrams' bytes, one after the other.
pub const UDP_QUEUE: SectionKind = SectionKind::named("udp_queue");

use super::socket::Protocol;

/// More datagrams than this in one queue is taken for a loop that does not end.
const MAX_DATAGRAMS: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UdpSocket {
    /// AF_INET or AF_INET6.
    pub family: i32,
    /// The local address (`struct sockaddr_in*`; port 0: never bound).
    pub local: Vec<u8>,
    /// The peer of a connected socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Vec<u8>>,
    /// For humans.
    pub display: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reuse_addr: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reuse_port: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broadcast: bool,
    /// IPV6_V6ONLY (AF_INET6 only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub v6_only: bool,
    /// SO_SNDBUF and SO_RCVBUF as getsockopt gives them (twice what was asked).
    pub sndbuf: usize,
    pub rcvbuf: usize,
    /// The queued datagrams (`UDP_QUEUE`), in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_section: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datagrams: Vec<Datagram>,
    /// The process (index in the image) that held it first.
    pub holder: usize,
}

/// A queued datagram: its length and its sender (`struct sockaddr_in*`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Datagram {
    pub len: u32,
    pub from: Vec<u8>,
}

/// An fd of a UDP socket; `socket` indexes `Shared::udp`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UdpEnd {
    pub socket: usize,
}

/// The family of an IPv4/IPv6 UDP socket (SOCK_DGRAM with protocol UDP: not ICMP "ping"
/// sockets, not UDP-Lite).
fn udp_family(s: &OwnedFd) -> Option<i32> {
    if getsockopt(s, sockopt::SockType).ok()? != SockType::Datagram {
        return None;
    }
    let family = local_address(s)
        .ok()
        .and_then(|a| super::socket::family_of(&a))?;
    let proto = getsockopt(s, Protocol).ok()?;
    ([libc::AF_INET, libc::AF_INET6].contains(&family) && proto == libc::IPPROTO_UDP)
        .then_some(family)
}

/// Records socket `s` (a copy of an fd of the process being dumped, inode `inode`) once for
/// the tree. None if it is not a UDP socket.
pub fn dump_end(ctx: &mut DumpCtx, s: &OwnedFd, inode: u64) -> Result<Option<UdpEnd>, DumpError> {
    let Some(family) = udp_family(s) else {
        return Ok(None);
    };
    if let Some(&socket) = ctx.shared.udp_index.get(&inode) {
        return Ok(Some(UdpEnd { socket }));
    }
    let why = |e: nix::Error| unsupported(format!("reading the UDP socket: {e}"));
    let local = local_address(s).map_err(|e| unsupported(format!("getsockname: {e}")))?;
    let peer = getpeername::<SockaddrStorage>(s.as_raw_fd())
        .ok()
        .map(|p| sockaddr_bytes(&p));
    let (data, datagrams) = peek_queue(s)?;
    let data_section = match data.is_empty() {
        true => None,
        false => Some(
            ctx.image
                .add_blob(UDP_QUEUE, &data)
                .map_err(DumpError::Image)?,
        ),
    };
    let shown = match &peer {
        Some(p) => format!("{} -> {}", display(family, &local), display(family, p)),
        None => display(family, &local),
    };
    let u = UdpSocket {
        family,
        display: shown,
        local,
        peer,
        reuse_addr: getsockopt(s, sockopt::ReuseAddr).map_err(why)?,
        reuse_port: getsockopt(s, sockopt::ReusePort).map_err(why)?,
        broadcast: getsockopt(s, sockopt::Broadcast).map_err(why)?,
        v6_only: family == libc::AF_INET6 && getsockopt(s, sockopt::Ipv6V6Only).map_err(why)?,
        sndbuf: getsockopt(s, sockopt::SndBuf).map_err(why)?,
        rcvbuf: getsockopt(s, sockopt::RcvBuf).map_err(why)?,
        data_section,
        datagrams,
        holder: ctx.process,
    };
    let table = &mut ctx.shared.table.udp;
    table.push(u);
    ctx.shared.udp_index.insert(inode, table.len() - 1);
    Ok(Some(UdpEnd {
        socket: table.len() - 1,
    }))
}

/// Every datagram queued at `s`, peeked (the program's peek offset put back after).
fn peek_queue(s: &OwnedFd) -> Result<(Vec<u8>, Vec<Datagram>), DumpError> {
    let why = |e: nix::Error| unsupported(format!("SO_PEEK_OFF on the UDP socket: {e}"));
    let saved = getsockopt(s, PeekOff).map_err(why)?;
    setsockopt(s, PeekOff, &0).map_err(why)?;
    let r = peek_all(s);
    let _ = setsockopt(s, PeekOff, &saved);
    r
}

fn peek_all(s: &OwnedFd) -> Result<(Vec<u8>, Vec<Datagram>), DumpError> {
    let (mut data, mut datagrams) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC;
        let msg = match recvmsg::<SockaddrStorage>(s.as_raw_fd(), &mut iov, None, flags) {
            Ok(m) => m,
            Err(nix::Error::EAGAIN) => break,
            Err(e) => return Err(unsupported(format!("peeking its queue: {e}"))),
        };
        let len = msg.bytes;
        let from = msg.address.map(|a| sockaddr_bytes(&a)).unwrap_or_default();
        if len > buf.len() {
            // Above 64 KiB (IPv6 jumbograms): the peek moved past it whole.
            return Err(unsupported(format!("a queued datagram of {len} bytes")));
        }
        data.extend_from_slice(&buf[..len]);
        datagrams.push(Datagram {
            len: len as u32,
            from,
        });
        if datagrams.len() > MAX_DATAGRAMS {
            return Err(unsupported("its receive queue does not end"));
        }
    }
    Ok((data, datagrams))
}

impl UdpSocket {
    /// A new socket like the recorded one: options, bound, connected (its queue is filled by
    /// [`UdpSocket::refill`]).
    fn make(&self) -> io::Result<OwnedFd> {
        let family = AddressFamily::from_i32(self.family)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))?;
        let s = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
        setsockopt(&s, sockopt::ReuseAddr, &self.reuse_addr)?;
        setsockopt(&s, sockopt::ReusePort, &self.reuse_port)?;
        setsockopt(&s, sockopt::Broadcast, &self.broadcast)?;
        if self.family == libc::AF_INET6 {
            setsockopt(&s, sockopt::Ipv6V6Only, &self.v6_only)?;
        }
        // Forced: the kernel doubles what it is given and caps it at the sysctl maximum,
        // which the original may have been allowed past.
        setsockopt(&s, sockopt::SndBufForce, &(self.sndbuf / 2))?;
        setsockopt(&s, sockopt::RcvBufForce, &(self.rcvbuf / 2))?;
        if socket_addr(&self.local).is_some_and(|a| a.port() != 0) {
            bind(s.as_raw_fd(), &storage_of(&self.local)?).map_err(|e| match e {
                nix::Error::EADDRINUSE => io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "its port is taken: another socket is bound to {} (is the original \
                         still running?)",
                        display(self.family, &self.local)
                    ),
                ),
                e => e.into(),
            })?;
        }
        if let Some(peer) = &self.peer {
            connect(s.as_raw_fd(), &storage_of(peer)?)?;
        }
        Ok(s)
    }

    /// Sends the queued datagrams to `s` again, each from its sender; returns how many could
    /// not be (with the last reason).
    fn refill(&self, s: &OwnedFd, data: &[u8]) -> (usize, Option<io::Error>) {
        let to = match local_address(s).ok().and_then(|a| socket_addr(&a)) {
            Some(a) => reachable(a),
            None => return (self.datagrams.len(), None),
        };
        let (mut at, mut failed, mut last) = (0usize, 0, None);
        for d in &self.datagrams {
            let bytes = data.get(at..at + d.len as usize).unwrap_or_default();
            at += d.len as usize;
            let sent = match socket_addr(&d.from) {
                Some(from) => send_one(from, to, bytes),
                None => Err(io::Error::other("its sender's address is not IP")),
            };
            if let Err(e) = sent {
                failed += 1;
                last = Some(e);
            }
        }
        (failed, last)
    }
}

/// Where a packet to a socket bound to `a` arrives: its own address, the loopback one when
/// it is bound to any.
fn reachable(a: SocketAddr) -> SocketAddr {
    let a = packet::unmapped(a);
    match a.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, a.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, a.port())),
        _ => a,
    }
}

/// One datagram from `from` to `to`; a dual-stack socket's IPv4 senders come over IPv4.
fn send_one(from: SocketAddr, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
    let from = packet::unmapped(from);
    let to = match (from, to) {
        (SocketAddr::V4(_), SocketAddr::V6(t)) if t.ip().is_loopback() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, t.port()))
        }
        _ => to,
    };
    packet::send_udp(from, to, bytes)
}

/// Makes every socket again (see the module documentation); `blob` reads a section.
pub fn make_all(
    table: &[UdpSocket],
    blob: &dyn Fn(Option<usize>) -> io::Result<Vec<u8>>,
) -> io::Result<Vec<OwnedFd>> {
    let made = table
        .iter()
        .map(|u| {
            u.make().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("making UDP socket {} again: {e}", u.display),
                )
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    for (u, s) in table.iter().zip(&made) {
        if u.datagrams.is_empty() {
            continue;
        }
        let (failed, why) = u.refill(s, &blob(u.data_section)?);
        if failed > 0 {
            let why = why.map_or(String::new(), |e| format!(" ({e})"));
            eprintln!(
                "ckpt: warning: {failed} of the {} datagrams queued at UDP socket {} are \
                 dropped{why}",
                u.datagrams.len(),
                u.display
            );
        }
    }
    Ok(made)
}

impl FdState for UdpEnd {
    fn what(&self) -> &'static str {
        "the UDP socket"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()> {
        let made = ctx
            .shared
            .udp
            .get(self.socket)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        super::place_copy(made, f)
    }

    fn valid(&self, _f: &Fd, v: &View) -> bool {
        self.socket < v.shared.udp.len()
    }

    fn describe(&self, _f: &Fd, v: &View) -> String {
        match v.shared.udp.get(self.socket) {
            Some(u) => {
                let bytes: u64 = u.datagrams.iter().map(|d| u64::from(d.len)).sum();
                format!(
                    "UDP socket {} ({} datagrams, {bytes} bytes queued)",
                    u.display,
                    u.datagrams.len()
                )
            }
            None => "UDP socket ?".into(),
        }
    }
}

/// Sockets have addresses of their family, datagrams that fill their section exactly and
/// senders' addresses that are IP ones, and a holder of the image (image data is never
/// trusted).
pub fn validate(table: &[UdpSocket], sections: &[Section], processes: usize) -> Result<(), String> {
    for u in table {
        let total: u64 = u.datagrams.iter().map(|d| u64::from(d.len)).sum();
        let data_ok = match u.data_section {
            None => total == 0,
            Some(i) => section_is(sections, i, &UDP_QUEUE) && sections[i].len == total,
        };
        let senders_ok = u.datagrams.iter().all(|d| {
            valid_address(libc::AF_INET, &d.from) || valid_address(libc::AF_INET6, &d.from)
        });
        let ok = data_ok
            && senders_ok
            && [libc::AF_INET, libc::AF_INET6].contains(&u.family)
            && valid_address(u.family, &u.local)
            && u.peer.as_ref().is_none_or(|p| valid_address(u.family, p))
            && u.holder < processes;
        if !ok {
            return Err(format!("bad UDP socket {}", u.display));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bound socket's queue is peeked whole with each sender, left in place, and passes
    /// validation; a made copy binds where it was once the original is gone.
    #[test]
    fn a_bound_sockets_queue_is_peeked_with_its_senders() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = server.local_addr().unwrap();
        for m in [&b"one"[..], b"", b"three"] {
            client.send_to(m, to).unwrap();
        }
        let fd = OwnedFd::from(server.try_clone().unwrap());
        let (data, dgrams) = peek_queue(&fd).unwrap();
        assert_eq!(data, b"onethree");
        let lens: Vec<u32> = dgrams.iter().map(|d| d.len).collect();
        assert_eq!(lens, [3, 0, 5]);
        assert_eq!(
            socket_addr(&dgrams[0].from),
            Some(client.local_addr().unwrap())
        );
        let mut buf = [0u8; 16];
        assert_eq!(server.recv(&mut buf).unwrap(), 3, "still queued");
        let u = UdpSocket {
            family: libc::AF_INET,
            local: local_address(&fd).unwrap(),
            peer: None,
            display: to.to_string(),
            reuse_addr: false,
            reuse_port: false,
            broadcast: false,
            v6_only: false,
            sndbuf: 4096,
            rcvbuf: 4096,
            data_section: Some(0),
            datagrams: dgrams,
            holder: 0,
        };
        let sections = [Section {
            kind: UDP_QUEUE,
            offset: 4096,
            len: 8,
            xxh64: 0,
            compressed: None,
            delta: None,
        }];
        assert_eq!(validate(std::slice::from_ref(&u), &sections, 1), Ok(()));
        let taken = u.make().unwrap_err();
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse, "{taken}");
        drop((fd, server));
        let again = u.make().unwrap();
        assert_eq!(local_address(&again).unwrap(), u.local);
    }
}
