//! Sockets: one copy of the target's fd (pidfd_getfd) answers which kind it is, then the
//! kind's module records it: a listening socket (`listen`); a UNIX socket connected to one
//! that is connected back to it (`socket_pair`); another UNIX datagram socket
//! (`unix_dgram`); one whose peer no process of the tree holds (`unix_external`: carried
//! when it can be connected again, or with `--external unix`; else refused, naming the peer),
//! or whose peer has closed the connection (`unix_external` too: queued bytes, then end of
//! file); a netlink socket (`netlink`).
//! Also the address helpers they use.

use super::unix::{self, Diag, UnixType};
use super::{unsupported, DumpCtx, DumpError, DumpResult, FdKind};
use crate::proc::FdEntry;
use nix::sys::socket::{
    getpeername, getsockname, getsockopt, sockopt, AddressFamily, SockaddrLike, SockaddrStorage,
};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

// SO_PROTOCOL, which nix does not name.
use nix::{getsockopt_impl, sockopt_impl};
sockopt_impl!(
    Protocol,
    GetOnly,
    libc::SOL_SOCKET,
    libc::SO_PROTOCOL,
    libc::c_int
);

pub fn dump(ctx: &mut DumpCtx, e: &FdEntry) -> DumpResult {
    let Some(ino) = crate::proc::bracketed_inode(&e.target, "socket") else {
        return Ok(None);
    };
    let ours = crate::sys::steal_fd(ctx.pid, e.fd)
        .map_err(|err| unsupported(format!("pidfd_getfd: {err}")))?;
    let family = local_address(&ours).ok().and_then(|a| family_of(&a));
    if family == Some(libc::AF_UNIX) && !getsockopt(&ours, sockopt::AcceptConn).unwrap_or(false) {
        return dump_unix(ctx, &ours, ino).map(Some);
    }
    if family == Some(libc::AF_NETLINK) {
        return super::netlink::dump(ctx, &ours, e.fd).map(|n| Some(FdKind::Netlink(n)));
    }
    if let Some(kind) = super::tcp::dump_end(ctx, &ours, ino)? {
        return Ok(Some(kind));
    }
    if let Some(end) = super::udp::dump_end(ctx, &ours, ino)? {
        return Ok(Some(FdKind::Udp(end)));
    }
    super::listen::dump_end(ctx, &ours, ino).map(|l| Some(FdKind::Listen(l)))
}

/// A UNIX socket that does not listen, by where its peer is.
fn dump_unix(ctx: &mut DumpCtx, s: &OwnedFd, ino: u64) -> Result<FdKind, DumpError> {
    let ty = getsockopt(s, sockopt::SockType)
        .ok()
        .and_then(UnixType::of)
        .ok_or_else(|| unsupported("a UNIX socket of an unknown type"))?;
    let diag = |i| unix::diag(i).map_err(|e| unsupported(format!("sock_diag: {e}")));
    let d = diag(ino)?;
    if d.peer != 0 && !ctx.shared.census.sockets.contains(&d.peer) {
        let refusal = |ctx: &DumpCtx| peer_outside(ctx, s, ty, d.peer);
        return super::unix_external::dump_end(ctx, s, (ino, ty), &d, refusal);
    }
    let peers_peer = match d.peer {
        0 => 0,
        p => diag(p)?.peer,
    };
    match (ty, d.peer) {
        (_, p) if p != 0 && peers_peer == ino => {
            super::socket_pair::dump_end(ctx, s, (ino, ty), &d)
        }
        (UnixType::Dgram, 0) => super::unix_dgram::dump_end(ctx, s, ino, &d),
        (UnixType::Dgram, _) if peers_peer == 0 => super::unix_dgram::dump_end(ctx, s, ino, &d),
        (UnixType::Dgram, p) => Err(unsupported(format!(
            "it is connected to the datagram socket socket:[{p}], which is connected to another one (socket:[{peers_peer}]); not supported yet"
        ))),
        // Closing, the peer shut this end down both ways (and is no longer shown).
        (_, 0) if d.shutdown & 3 == 3 => {
            super::unix_external::dump_peer_closed(ctx, s, (ino, ty), &d)
        }
        (_, _) => Err(unconnected(ty, &d)),
    }
}

/// Why a stream or seqpacket socket that neither listens nor has a peer (nor lost one) is
/// refused.
fn unconnected(ty: UnixType, d: &Diag) -> DumpError {
    let why = match d.shutdown {
        0 => "not connected and not listening".to_owned(),
        s => format!("with no peer, shut down ({s:#x})"),
    };
    unsupported(format!(
        "a UNIX {} socket {why}: not supported yet",
        ty.name()
    ))
}

/// The refusal of a socket connected to one no process of the tree holds, naming both.
fn peer_outside(ctx: &DumpCtx, s: &OwnedFd, ty: UnixType, peer: u64) -> DumpError {
    let name = |a: Option<Vec<u8>>| match a.filter(|a| a.len() > 2) {
        Some(a) => unix_path(&a),
        None => "unnamed".into(),
    };
    let local = name(local_address(s).ok());
    let remote = name(
        getpeername::<SockaddrStorage>(s.as_raw_fd())
            .ok()
            .map(|a| sockaddr_bytes(&a)),
    );
    let holders = super::holders_outside("socket", peer, &ctx.shared.census.pids);
    let held = match holders.is_empty() {
        true => String::new(),
        false => format!(", held by process {}", holders.join(", ")),
    };
    let then = match remote.as_str() {
        "unnamed" => "restored with its peer gone: end of file".to_owned(),
        r => format!("connected again to {r} on restore: a new connection"),
    };
    unsupported(format!(
        "the UNIX {} socket ({local}) is connected to socket:[{peer}] ({remote}){held} outside the tree; `ckpt checkpoint --external unix` carries it ({then})",
        ty.name()
    ))
}

/// The socket's local address as raw `struct sockaddr_*` bytes, as the image keeps it.
pub fn local_address(s: &OwnedFd) -> io::Result<Vec<u8>> {
    let addr: SockaddrStorage = getsockname(s.as_raw_fd())?;
    Ok(sockaddr_bytes(&addr))
}

pub(crate) fn sockaddr_bytes(addr: &SockaddrStorage) -> Vec<u8> {
    // nix gives a UNIX address its own length but any other the whole storage's: cut IP
    // addresses to their struct, as getsockname reports them.
    let len = match addr.family() {
        Some(AddressFamily::Inet) => std::mem::size_of::<libc::sockaddr_in>(),
        Some(AddressFamily::Inet6) => std::mem::size_of::<libc::sockaddr_in6>(),
        _ => addr.len() as usize,
    };
    // SAFETY: a SockaddrStorage holds at least `len` initialised bytes at `as_ptr()` (its
    // whole storage, zero-filled past the address).
    unsafe { std::slice::from_raw_parts(addr.as_ptr().cast::<u8>(), len) }.to_vec()
}

/// The address family in raw sockaddr bytes.
pub fn family_of(addr: &[u8]) -> Option<i32> {
    Some(i32::from(u16::from_ne_bytes([
        *addr.first()?,
        *addr.get(1)?,
    ])))
}

/// Is `addr` a well-formed address of `family`? (Image data is never trusted.)
pub fn valid_address(family: i32, addr: &[u8]) -> bool {
    family_of(addr) == Some(family)
        && match family {
            libc::AF_INET => addr.len() == std::mem::size_of::<libc::sockaddr_in>(),
            libc::AF_INET6 => addr.len() == std::mem::size_of::<libc::sockaddr_in6>(),
            libc::AF_UNIX => {
                addr.len() > 2 && addr.len() <= std::mem::size_of::<libc::sockaddr_un>()
            }
            _ => false,
        }
}

/// A validated address (see [`valid_address`]) in the form nix binds to.
pub fn storage_of(addr: &[u8]) -> io::Result<SockaddrStorage> {
    let einval = || io::Error::from_raw_os_error(libc::EINVAL);
    let family = family_of(addr).ok_or_else(einval)?;
    if !valid_address(family, addr) {
        return Err(einval());
    }
    // SAFETY: `addr` is a complete sockaddr of its family, of the length given (checked above).
    unsafe { SockaddrStorage::from_raw(addr.as_ptr().cast(), Some(addr.len() as u32)) }
        .ok_or_else(einval)
}

/// The path (or "@name" for the abstract namespace) of a UNIX address.
pub fn unix_path(addr: &[u8]) -> String {
    let p = addr.get(2..).unwrap_or_default();
    match p.first() {
        Some(0) => format!("@{}", String::from_utf8_lossy(&p[1..])),
        _ => {
            let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
            String::from_utf8_lossy(&p[..end]).into_owned()
        }
    }
}

/// A socket file left by the checkpointed process is replaced, but only if nobody listens on
/// it any more (else bind fails: the address is in use, e.g. the original still runs).
pub(crate) fn remove_stale_socket_file(path: &str) {
    use std::os::unix::fs::FileTypeExt;
    if path.starts_with('@') {
        return; // abstract: no file
    }
    let stale = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
        && matches!(
            std::os::unix::net::UnixStream::connect(path),
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED)
        );
    if stale {
        let _ = std::fs::remove_file(path);
    }
}

/// An address for humans.
pub fn display(family: i32, addr: &[u8]) -> String {
    match family {
        libc::AF_INET if addr.len() >= 8 => {
            let port = u16::from_be_bytes([addr[2], addr[3]]);
            format!("{}.{}.{}.{}:{port}", addr[4], addr[5], addr[6], addr[7])
        }
        libc::AF_INET6 if addr.len() >= 24 => {
            let port = u16::from_be_bytes([addr[2], addr[3]]);
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&addr[8..24]);
            format!("[{}]:{port}", std::net::Ipv6Addr::from(ip))
        }
        libc::AF_UNIX => unix_path(addr),
        _ => format!("family {family}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    /// Addresses are kept as getsockname gives them, of their struct's length, and go back
    /// to a form that binds.
    #[test]
    fn addresses_round_trip_at_their_own_length() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let fd = OwnedFd::from(l);
        let addr = local_address(&fd).unwrap();
        assert_eq!(addr.len(), std::mem::size_of::<libc::sockaddr_in>());
        assert!(valid_address(libc::AF_INET, &addr));
        assert_eq!(display(libc::AF_INET, &addr), format!("127.0.0.1:{port}"));
        let back = storage_of(&addr).unwrap();
        assert_eq!(back.as_sockaddr_in().map(|a| a.port()), Some(port));
        let dir = std::env::temp_dir().join(format!("ckpt-sock-{}", std::process::id()));
        let u = std::os::unix::net::UnixListener::bind(&dir).unwrap();
        let addr = local_address(&OwnedFd::from(u)).unwrap();
        assert!(valid_address(libc::AF_UNIX, &addr));
        assert_eq!(unix_path(&addr), dir.to_string_lossy());
        std::fs::remove_file(dir).unwrap();
    }
}
