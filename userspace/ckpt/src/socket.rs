//! Listening sockets: dump and restore side by side.
//!
//! A listening TCP (IPv4/IPv6) or UNIX stream socket is recorded by its address and options
//! and, on restore, bound again to the same address at the same fd. Connections waiting in its
//! accept queue cannot be carried (their other ends are elsewhere): a checkpoint with a
//! non-empty queue is refused rather than lose them. Connected sockets are not supported yet.

use crate::image::FdKind;
use crate::sys;
use std::os::fd::{AsRawFd, RawFd};

/// Is `addr` a well-formed address of `family`? (Image data is never trusted.)
pub fn valid_address(family: i32, addr: &[u8]) -> bool {
    let fam_ok = addr.len() >= 2 && i32::from(u16::from_ne_bytes([addr[0], addr[1]])) == family;
    fam_ok
        && match family {
            libc::AF_INET => addr.len() == std::mem::size_of::<libc::sockaddr_in>(),
            libc::AF_INET6 => addr.len() == std::mem::size_of::<libc::sockaddr_in6>(),
            libc::AF_UNIX => {
                addr.len() > 2 && addr.len() <= std::mem::size_of::<libc::sockaddr_un>()
            }
            _ => false,
        }
}

fn getsockopt_int(fd: i32, level: i32, opt: i32) -> std::io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: writes one c_int of the given length.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

fn setsockopt_int(fd: i32, level: i32, opt: i32, v: i32) -> std::io::Result<()> {
    // SAFETY: reads one c_int of the given length.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn local_address(fd: i32) -> std::io::Result<Vec<u8>> {
    // SAFETY: sockaddr_storage is plain data; getsockname writes at most `len` bytes.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let bytes = std::slice::from_raw_parts(
            (&ss as *const libc::sockaddr_storage).cast::<u8>(),
            len as usize,
        );
        Ok(bytes.to_vec())
    }
}

/// The path (or "@name" for the abstract namespace) of a UNIX address.
fn unix_path(addr: &[u8]) -> String {
    let p = addr.get(2..).unwrap_or_default();
    match p.first() {
        Some(0) => format!("@{}", String::from_utf8_lossy(&p[1..])),
        _ => {
            let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
            String::from_utf8_lossy(&p[..end]).into_owned()
        }
    }
}

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

/// Records socket `s` (a copy of one of `pid`'s fds, inode `inode`).
pub fn dump(pid: i32, s: RawFd, inode: u64) -> Result<FdKind, String> {
    let family = getsockopt_int(s, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(|e| e.to_string())?;
    let addr = local_address(s).map_err(|e| format!("getsockname: {e}"))?;
    let ty = getsockopt_int(s, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|e| e.to_string())?;
    let listening =
        getsockopt_int(s, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).map_err(|e| e.to_string())? != 0;
    if !listening {
        return Err(
            "connected and unbound sockets are not supported yet (only listening ones)".into(),
        );
    }
    if ty != libc::SOCK_STREAM || ![libc::AF_INET, libc::AF_INET6, libc::AF_UNIX].contains(&family)
    {
        return Err("only TCP and UNIX stream listening sockets are supported".into());
    }
    if !valid_address(family, &addr) {
        return Err("unexpected local address".into());
    }
    // Connections waiting to be accepted would be lost: refuse.
    let mut pfd = libc::pollfd {
        fd: s,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one pollfd, without waiting.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    if ready > 0 && pfd.revents & libc::POLLIN != 0 {
        return Err("connections are waiting in its accept queue; they cannot be carried over (retry when it has accepted them)".into());
    }
    let backlog = match family {
        libc::AF_INET | libc::AF_INET6 => tcp_backlog(pid, inode, family == libc::AF_INET6),
        _ => None,
    }
    .unwrap_or(libc::SOMAXCONN);
    let flag = |level, opt| {
        getsockopt_int(s, level, opt)
            .map(|v| v != 0)
            .unwrap_or(false)
    };
    Ok(FdKind::Listen {
        family,
        display: display(family, &addr),
        addr,
        backlog,
        reuse_addr: flag(libc::SOL_SOCKET, libc::SO_REUSEADDR),
        reuse_port: flag(libc::SOL_SOCKET, libc::SO_REUSEPORT),
        v6_only: family == libc::AF_INET6 && flag(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
    })
}

/// In the restorer (already in the process's directory, with its umask and filesystem ids):
/// a new listening socket like the recorded one, returned as a new fd. A UNIX socket file
/// nobody listens on any more is replaced; an address still in use (the original still
/// listens) fails with EADDRINUSE.
pub fn restore(kind: &FdKind, nonblock: bool) -> std::io::Result<i32> {
    let FdKind::Listen {
        family,
        addr,
        backlog,
        reuse_addr,
        reuse_port,
        v6_only,
        ..
    } = kind
    else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    if !valid_address(*family, addr) {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let ty = libc::SOCK_STREAM | if nonblock { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: creates a socket; the fd is ours.
    let fd = unsafe { libc::socket(*family, ty, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let r = (|| {
        // TCP: the checkpointed process's connections may linger in TIME_WAIT.
        if *reuse_addr || *family != libc::AF_UNIX {
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        }
        if *reuse_port {
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        if *family == libc::AF_INET6 {
            setsockopt_int(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                i32::from(*v6_only),
            )?;
        }
        if *family == libc::AF_UNIX {
            // A socket file left by the checkpointed process is replaced, but only if nobody
            // listens on it any more (else bind fails: the address is in use).
            let path = unix_path(addr);
            if !path.starts_with('@') {
                use std::os::unix::fs::FileTypeExt;
                let stale = std::fs::symlink_metadata(&path)
                    .is_ok_and(|m| m.file_type().is_socket())
                    && matches!(
                        std::os::unix::net::UnixStream::connect(&path),
                        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED)
                    );
                if stale {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        // SAFETY: `addr` is a validated sockaddr of its family, of its own length.
        let r = unsafe { libc::bind(fd, addr.as_ptr().cast(), addr.len() as libc::socklen_t) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: listen on our socket.
        if unsafe { libc::listen(fd, *backlog) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    })();
    match r {
        Ok(()) => Ok(fd),
        Err(e) => {
            sys::close(fd);
            Err(e)
        }
    }
}

/// What sock_diag tells of a UNIX socket: its peer's inode and whether it was shut down.
fn unix_diag(ino: u64) -> std::io::Result<(Option<u32>, u8)> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const UDIAG_SHOW_PEER: u32 = 4;
    const UNIX_DIAG_PEER: u16 = 2;
    const UNIX_DIAG_SHUTDOWN: u16 = 6;
    let ino32 = u32::try_from(ino).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a netlink socket of ours.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just made and is owned here.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // nlmsghdr (16) + unix_diag_req (24).
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.push(libc::AF_UNIX as u8);
    req.push(0); // protocol
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
    req.extend_from_slice(&ino32.to_ne_bytes());
    req.extend_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    let mut buf = vec![0u8; 8192];
    // SAFETY: sends the request buffer; receives into a buffer of the given length.
    let n = unsafe {
        if libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let buf = &buf[..n as usize];
    let u16_at = |i: usize| buf.get(i..i + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let u32_at = |i: usize| {
        buf.get(i..i + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    if u16_at(4) == Some(libc::NLMSG_ERROR as u16) {
        let errno = u32_at(16).map_or(libc::EIO, |e| -(e as i32));
        return Err(std::io::Error::from_raw_os_error(errno));
    }
    let msg_len = u32_at(0).unwrap_or(0) as usize;
    // Attributes follow nlmsghdr (16) and unix_diag_msg (16), each 4-byte aligned.
    let (mut peer, mut shutdown) = (None, 0u8);
    let mut at = 32;
    while at + 4 <= msg_len.min(buf.len()) {
        let (Some(len), Some(ty)) = (u16_at(at), u16_at(at + 2)) else {
            break;
        };
        let len = len as usize;
        if len < 4 {
            break;
        }
        match ty {
            UNIX_DIAG_PEER => peer = u32_at(at + 4),
            UNIX_DIAG_SHUTDOWN => shutdown = buf.get(at + 4).copied().unwrap_or(0),
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Ok((peer, shutdown))
}

/// One end of a connected UNIX stream socket, for pairing with its peer.
pub struct UnixStreamEnd {
    pub inode: u64,
    pub peer: u64,
    /// The bytes waiting to be read at this end (peeked, not consumed).
    pub queued: Vec<u8>,
}

/// If socket `s` (a copy of one of the target's fds, inode `inode`) is a connected UNIX
/// stream socket, its peer and queued bytes; None for any other kind of socket.
pub fn unix_stream_end(s: RawFd, inode: u64) -> Result<Option<UnixStreamEnd>, String> {
    let family = getsockopt_int(s, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(|e| e.to_string())?;
    let ty = getsockopt_int(s, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|e| e.to_string())?;
    if family != libc::AF_UNIX || ty != libc::SOCK_STREAM {
        return Ok(None);
    }
    let (peer, shutdown) = unix_diag(inode).map_err(|e| format!("sock_diag: {e}"))?;
    let Some(peer) = peer.filter(|&p| p != 0) else {
        return Ok(None);
    };
    if shutdown != 0 {
        return Err("sockets shut down in one direction are not supported yet".into());
    }
    let mut inq: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(s, libc::FIONREAD, &mut inq) } != 0 {
        return Err(format!("FIONREAD: {}", std::io::Error::last_os_error()));
    }
    let mut queued = vec![0u8; inq.max(0) as usize];
    if !queued.is_empty() {
        // SAFETY: peeks into a buffer of its length.
        let n = unsafe {
            libc::recv(
                s,
                queued.as_mut_ptr().cast(),
                queued.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 || n as usize != queued.len() {
            return Err(
                "its queued data cannot be read whole (file descriptors or credentials in \
                 flight?)"
                    .into(),
            );
        }
    }
    Ok(Some(UnixStreamEnd {
        inode,
        peer: u64::from(peer),
        queued,
    }))
}

/// In the restorer: a new connected pair of UNIX stream sockets holding `queued[e]` ready to
/// be read at end `e`. Returns the two fds.
pub fn restore_pair(queued: [&[u8]; 2]) -> std::io::Result<(i32, i32)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills the two fds.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    for (end, data) in queued.iter().enumerate() {
        if data.is_empty() {
            continue;
        }
        // What waits at this end was sent by the other: room for all of it first.
        let other = fds[1 - end];
        let room = (data.len() * 2 + 65536).min(i32::MAX as usize) as i32;
        let _ = setsockopt_int(other, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, room);
        let _ = setsockopt_int(fds[end], libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, room);
        if let Err(e) = sys::write_all_fd(other, data) {
            sys::close(fds[0]);
            sys::close(fds[1]);
            return Err(e);
        }
    }
    Ok((fds[0], fds[1]))
}
