//! Packets made by hand and sent through a raw socket to a socket of this host, as if they
//! came from another address: how a restore puts back what only a peer could have sent (a
//! queued UDP datagram, from its original sender; the FIN a TCP connection had received, as
//! CRIU's libsoccr does). They carry the mark [`MARK`], which the network lock lets through
//! (`crate::netlock`), so that a lock still holding the peers' packets back does not drop them.

use nix::sys::socket::{
    sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
    SockaddrIn, SockaddrIn6,
};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// SO_MARK of the packets made here ("ckpt").
pub const MARK: u32 = 0x636b_7074;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// TCP header flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_ACK: u8 = 0x10;

/// A TCP segment without options or data.
pub struct TcpSegment {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
}

/// Sends `payload` as a UDP datagram from `from` to `to` (both of one family).
pub fn send_udp(from: SocketAddr, to: SocketAddr, payload: &[u8]) -> io::Result<()> {
    let len = u16::try_from(8 + payload.len()).map_err(|_| einval())?;
    let mut l4 = Vec::with_capacity(usize::from(len));
    l4.extend_from_slice(&from.port().to_be_bytes());
    l4.extend_from_slice(&to.port().to_be_bytes());
    l4.extend_from_slice(&len.to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    let sum = checksum(&from.ip(), &to.ip(), IPPROTO_UDP, &l4);
    // 0 means "no checksum" in UDP: a sum of 0 is sent as its other form.
    let sum = if sum == 0 { 0xffff } else { sum };
    l4[6..8].copy_from_slice(&sum.to_be_bytes());
    send(from.ip(), to.ip(), IPPROTO_UDP, &l4)
}

/// Sends TCP segment `seg` from `from` to `to`.
pub fn send_tcp(from: SocketAddr, to: SocketAddr, seg: &TcpSegment) -> io::Result<()> {
    let mut l4 = Vec::with_capacity(20);
    l4.extend_from_slice(&from.port().to_be_bytes());
    l4.extend_from_slice(&to.port().to_be_bytes());
    l4.extend_from_slice(&seg.seq.to_be_bytes());
    l4.extend_from_slice(&seg.ack.to_be_bytes());
    l4.extend_from_slice(&[5 << 4, seg.flags]);
    l4.extend_from_slice(&seg.window.to_be_bytes());
    l4.extend_from_slice(&[0, 0, 0, 0]);
    let sum = checksum(&from.ip(), &to.ip(), IPPROTO_TCP, &l4);
    l4[16..18].copy_from_slice(&sum.to_be_bytes());
    send(from.ip(), to.ip(), IPPROTO_TCP, &l4)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// An IPv4 address inside an IPv6 one (::ffff:a.b.c.d) as itself: a dual-stack socket
/// receives IPv4 packets.
pub fn unmapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        v4 => v4,
    }
}

/// Sends the transport segment `l4` inside an IP header of our own (IPPROTO_RAW: the kernel
/// adds none; for IPv4 it fills in the length, id and header checksum).
fn send(from: IpAddr, to: IpAddr, proto: u8, l4: &[u8]) -> io::Result<()> {
    let (family, packet) = match (from, to) {
        (IpAddr::V4(f), IpAddr::V4(t)) => (AddressFamily::Inet, ipv4(f, t, proto, l4)?),
        (IpAddr::V6(f), IpAddr::V6(t)) => (AddressFamily::Inet6, ipv6(f, t, proto, l4)?),
        _ => return Err(einval()),
    };
    let s = socket(
        family,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Raw,
    )?;
    setsockopt(&s, sockopt::Mark, &MARK)?;
    let n = match to {
        IpAddr::V4(t) => sendto(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            &packet,
            &SockaddrIn::from(std::net::SocketAddrV4::new(t, 0)),
            MsgFlags::empty(),
        )?,
        IpAddr::V6(t) => sendto(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            &packet,
            &SockaddrIn6::from(std::net::SocketAddrV6::new(t, 0, 0, 0)),
            MsgFlags::empty(),
        )?,
    };
    if n != packet.len() {
        return Err(io::Error::other(format!(
            "sent {n} of a {}-byte packet",
            packet.len()
        )));
    }
    Ok(())
}

fn ipv4(from: Ipv4Addr, to: Ipv4Addr, proto: u8, l4: &[u8]) -> io::Result<Vec<u8>> {
    let total = u16::try_from(20 + l4.len()).map_err(|_| einval())?;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&from.octets());
    p.extend_from_slice(&to.octets());
    p.extend_from_slice(l4);
    Ok(p)
}

fn ipv6(from: Ipv6Addr, to: Ipv6Addr, proto: u8, l4: &[u8]) -> io::Result<Vec<u8>> {
    let len = u16::try_from(l4.len()).map_err(|_| einval())?;
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[proto, 64]);
    p.extend_from_slice(&from.octets());
    p.extend_from_slice(&to.octets());
    p.extend_from_slice(l4);
    Ok(p)
}

/// The Internet checksum of segment `l4` with its pseudo-header (RFC 768, 793, 8200).
fn checksum(from: &IpAddr, to: &IpAddr, proto: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    match (from, to) {
        (IpAddr::V4(f), IpAddr::V4(t)) => {
            pseudo.extend_from_slice(&f.octets());
            pseudo.extend_from_slice(&t.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        }
        _ => {
            let octets = |a: &IpAddr| match a {
                IpAddr::V6(v6) => v6.octets(),
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            };
            pseudo.extend_from_slice(&octets(from));
            pseudo.extend_from_slice(&octets(to));
            pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        }
    }
    let mut sum: u32 = 0;
    for chunk in pseudo.chunks(2).chain(l4.chunks(2)) {
        let word = u16::from_be_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071's example words sum to 0xddf2 (checksum: its complement), and a segment
    /// with its checksum filled in sums to 0.
    #[test]
    fn checksums_are_the_internet_ones() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut seg = vec![0x12, 0x34, 0x56, 0x78, 0, 8, 0, 0, 1, 2, 3];
        let sum = checksum(&a, &b, IPPROTO_UDP, &seg);
        seg[6..8].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&a, &b, IPPROTO_UDP, &seg), 0);
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:53".parse().unwrap();
        assert_eq!(unmapped(mapped), "127.0.0.1:53".parse().unwrap());
    }
}
