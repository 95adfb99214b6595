//! Established TCP connections (IPv4, IPv6), carried with the kernel's repair mode: while the
//! tree is frozen and its connections' packets are held back (`crate::netlock`), each
//! connection's socket is put in repair mode for a moment, and its sequence numbers,
//! queued bytes (sent but unacknowledged, not yet sent, received but unread; peeked, not
//! consumed), options (MSS, window scaling, SACK, timestamps), timestamp clock and window are
//! read. Recorded once per tree, like listening sockets. On restore ckpt makes each again
//! before the restorers fork: a socket in repair mode with the recorded sequence numbers,
//! bound and "connected" without a handshake, its options, clock, queues and window set,
//! repair mode left (a window probe tells the peer it is there), then the bytes not yet sent
//! sent for real. A connection whose both ends are in the tree comes back whole.

use super::socket::{display, storage_of, valid_address};
use super::{unsupported, DumpCtx, DumpError, Fd, FdKind, FdState, RestoreCtx, View};
use crate::image::{section_is, Section, SectionKind};
use crate::sys;
use nix::sys::socket::{
    bind, connect, getpeername, getsockopt, recv, send, setsockopt, shutdown, socket, sockopt,
    AddressFamily, MsgFlags, Shutdown, SockFlag, SockType, SockaddrStorage,
};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// A connection's queued bytes: the send queue, then the receive queue.
pub const TCP_QUEUES: SectionKind = SectionKind::named("tcp_queues");

/// tcpi_state values (include/net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;
const TCP_FIN_WAIT1: u8 = 4;
const TCP_FIN_WAIT2: u8 = 5;
/// A socket never connected, or whose connection is over.
const TCP_CLOSE: u8 = 7;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_CLOSING: u8 = 11;
/// tcpi_options bits and TCP option codes (RFC 793/1323/2018).
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
const TCPOPT_MAXSEG: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TcpConnection {
    /// AF_INET or AF_INET6.
    pub family: i32,
    /// Local and peer addresses (`struct sockaddr_in*`).
    pub local: Vec<u8>,
    pub peer: Vec<u8>,
    /// "local -> peer", for humans.
    pub display: String,
    /// The sequence number after the send queue's last byte, and the next one expected.
    pub send_seq: u32,
    pub recv_seq: u32,
    /// Bytes in the send queue (of which `unsent` not sent yet) and the receive queue.
    pub send_len: u32,
    pub unsent: u32,
    pub recv_len: u32,
    /// The queues' bytes (`TCP_QUEUES`), when any.
    pub data_section: Option<usize>,
    pub mss: u32,
    /// tcpi_options and the two window scales.
    pub options: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    pub timestamp: u32,
    /// snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup.
    pub window: [u32; 5],
    pub nodelay: bool,
    pub keepalive: bool,
    /// The process (index in the image) as whose user it is made again.
    pub holder: usize,
    /// Where it was in closing: which FINs it had sent and received (each counted in
    /// `send_seq` or `recv_seq`, not in the queues' lengths).
    #[serde(default, skip_serializing_if = "TcpState::is_established")]
    pub state: TcpState,
}

/// The states of a connection ckpt carries.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    #[default]
    Established,
    /// The peer's FIN received.
    CloseWait,
    /// Ours sent, not acknowledged.
    FinWait1,
    /// Ours sent and acknowledged.
    FinWait2,
    /// The peer's FIN received, then ours sent, not acknowledged.
    LastAck,
    /// Ours sent, then the peer's received, ours not acknowledged.
    Closing,
}

impl TcpState {
    fn of(tcpi_state: u8) -> Option<TcpState> {
        Some(match tcpi_state {
            TCP_ESTABLISHED => TcpState::Established,
            TCP_CLOSE_WAIT => TcpState::CloseWait,
            TCP_FIN_WAIT1 => TcpState::FinWait1,
            TCP_FIN_WAIT2 => TcpState::FinWait2,
            TCP_LAST_ACK => TcpState::LastAck,
            TCP_CLOSING => TcpState::Closing,
            _ => return None,
        })
    }

    fn tcpi(self) -> u8 {
        match self {
            TcpState::Established => TCP_ESTABLISHED,
            TcpState::CloseWait => TCP_CLOSE_WAIT,
            TcpState::FinWait1 => TCP_FIN_WAIT1,
            TcpState::FinWait2 => TCP_FIN_WAIT2,
            TcpState::LastAck => TCP_LAST_ACK,
            TcpState::Closing => TCP_CLOSING,
        }
    }

    pub fn is_established(&self) -> bool {
        *self == TcpState::Established
    }

    pub fn fin_received(self) -> bool {
        matches!(
            self,
            TcpState::CloseWait | TcpState::LastAck | TcpState::Closing
        )
    }

    pub fn fin_sent(self) -> bool {
        matches!(
            self,
            TcpState::FinWait1 | TcpState::FinWait2 | TcpState::LastAck | TcpState::Closing
        )
    }

    pub fn name(self) -> &'static str {
        state_name(self.tcpi())
    }
}

/// An fd of a connection; `conn` indexes `Shared::tcp`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TcpEnd {
    pub conn: usize,
}

/// Whether `s` is a TCP socket (IPv4 or IPv6), whatever its state.
pub fn is_tcp(s: &OwnedFd) -> bool {
    let stream = getsockopt(s, sockopt::SockType).is_ok_and(|t| t == SockType::Stream);
    let family = super::socket::local_address(s)
        .ok()
        .and_then(|a| super::socket::family_of(&a));
    stream && matches!(family, Some(libc::AF_INET | libc::AF_INET6))
}

/// Whether TCP socket `s` is a connection ckpt carries: established, or closing (see
/// [`TcpState`]).
pub fn is_carried(s: &OwnedFd) -> bool {
    sys::tcp_info(s).is_ok_and(|i| TcpState::of(i.tcpi_state).is_some())
}

/// Records socket `s` (a copy of an fd of the process being dumped, inode `inode`), a
/// connection whose packets are held back (`crate::netlock`), once for the tree; with
/// `--tcp-close`, as closed. None if `s` is not a connected TCP socket.
pub fn dump_end(ctx: &mut DumpCtx, s: &OwnedFd, inode: u64) -> Result<Option<FdKind>, DumpError> {
    if !is_tcp(s) || getsockopt(s, sockopt::AcceptConn).unwrap_or(false) {
        return Ok(None);
    }
    if let Some(&conn) = ctx.shared.tcp_index.get(&inode) {
        return Ok(Some(FdKind::Tcp(TcpEnd { conn })));
    }
    let state = sys::tcp_info(s).map(|i| i.tcpi_state).unwrap_or(0);
    if ctx.shared.tcp_close && state != TCP_CLOSE {
        return super::tcp_closed::dump_closed(ctx, s, inode).map(|c| Some(FdKind::TcpClosed(c)));
    }
    let Some(state) = TcpState::of(state) else {
        return Err(unsupported(format!(
            "a TCP socket in state {} (connections ESTABLISHED, CLOSE_WAIT, FIN_WAIT1, \
             FIN_WAIT2, LAST_ACK or CLOSING and listening sockets are carried; --tcp-close \
             records connections as closed)",
            state_name(state)
        )));
    };
    dump_connection(ctx, s, inode, state).map(|e| Some(FdKind::Tcp(e)))
}

/// Reads connection `s` in repair mode and records it.
fn dump_connection(
    ctx: &mut DumpCtx,
    s: &OwnedFd,
    inode: u64,
    state: TcpState,
) -> Result<TcpEnd, DumpError> {
    sys::tcp_set_repair(s, true).map_err(super::io_error("TCP_REPAIR"))?;
    let read = read(s, state);
    // Back at once: the process must never run with it on (it could not read).
    let off = sys::tcp_set_repair(s, false);
    let (mut c, queues) = read.map_err(super::io_error("reading the TCP connection"))?;
    off.map_err(super::io_error("leaving TCP_REPAIR"))?;
    c.holder = ctx.process;
    if c.unsent > 0 && matches!(state, TcpState::LastAck | TcpState::Closing) {
        return Err(unsupported(format!(
            "a TCP connection in state {} whose FIN waits behind {} unsent bytes",
            state.name(),
            c.unsent
        )));
    }
    if !queues.is_empty() {
        c.data_section = Some(
            ctx.image
                .add_blob(TCP_QUEUES, &queues)
                .map_err(DumpError::Image)?,
        );
    }
    let table = &mut ctx.shared.table.tcp;
    table.push(c);
    ctx.shared.tcp_index.insert(inode, table.len() - 1);
    Ok(TcpEnd {
        conn: table.len() - 1,
    })
}

fn state_name(state: u8) -> &'static str {
    const NAMES: [&str; 13] = [
        "?",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    NAMES.get(usize::from(state)).copied().unwrap_or("?")
}

/// A connection in repair mode as it is now, and its queued bytes (send queue first).
fn read(s: &OwnedFd, state: TcpState) -> io::Result<(TcpConnection, Vec<u8>)> {
    let local = super::socket::local_address(s)?;
    let peer_addr: SockaddrStorage = getpeername(s.as_raw_fd())?;
    let peer = super::socket::sockaddr_bytes(&peer_addr);
    let family = super::socket::family_of(&local).unwrap_or(-1);
    let info = sys::tcp_info(s)?;
    let (mut send_len, mut unsent, recv_len) = (
        sys::socket_send_queued(s)?,
        sys::socket_send_unsent(s)?,
        sys::socket_recv_queued(s)?,
    );
    // Our FIN, in the send queue until acknowledged (and unsent until sent), is no byte.
    // (SIOCINQ leaves the peer's out already.)
    if state.fin_sent() {
        send_len = send_len.saturating_sub(1);
        unsent = unsent.saturating_sub(1);
    }
    sys::tcp_select_queue(s, sys::TCP_SEND_QUEUE)?;
    let send_seq = sys::tcp_queue_seq(s)?;
    let mut queues = peek(s, send_len)?;
    sys::tcp_select_queue(s, sys::TCP_RECV_QUEUE)?;
    let recv_seq = sys::tcp_queue_seq(s)?;
    queues.extend(peek(s, recv_len)?);
    let w = sys::tcp_repair_window(s)?;
    let c = TcpConnection {
        family,
        display: format!("{} -> {}", display(family, &local), display(family, &peer)),
        local,
        peer,
        send_seq,
        recv_seq,
        send_len,
        unsent,
        recv_len,
        data_section: None,
        mss: sys::tcp_maxseg(s)?,
        options: info.tcpi_options,
        snd_wscale: info.tcpi_snd_rcv_wscale & 0xf,
        rcv_wscale: info.tcpi_snd_rcv_wscale >> 4,
        timestamp: sys::tcp_timestamp(s)?,
        window: [w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup],
        nodelay: getsockopt(s, sockopt::TcpNoDelay).unwrap_or(false),
        keepalive: getsockopt(s, sockopt::KeepAlive).unwrap_or(false),
        holder: 0,
        state,
    };
    Ok((c, queues))
}

/// `len` bytes of the selected queue, peeked (repair mode reads the send queue too).
fn peek(s: &OwnedFd, len: u32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    if len == 0 {
        return Ok(buf);
    }
    let n = recv(
        s.as_raw_fd(),
        &mut buf,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    )?;
    if n != buf.len() {
        return Err(io::Error::other(format!(
            "peeked {n} of the {len} queued bytes"
        )));
    }
    Ok(buf)
}

impl TcpConnection {
    /// Makes the connection again (see the module documentation); `queues` is its section.
    pub fn make(&self, queues: &[u8]) -> io::Result<OwnedFd> {
        let family = AddressFamily::from_i32(self.family)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))?;
        let (sent, rest) = queues
            .split_at_checked((self.send_len - self.unsent) as usize)
            .ok_or(io::ErrorKind::InvalidData)?;
        let (unsent, received) = rest
            .split_at_checked(self.unsent as usize)
            .ok_or(io::ErrorKind::InvalidData)?;
        let s = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        sys::tcp_set_repair(&s, true)?;
        sys::tcp_select_queue(&s, sys::TCP_RECV_QUEUE)?;
        sys::tcp_set_queue_seq(&s, self.data_end().wrapping_sub(self.recv_len))?;
        sys::tcp_select_queue(&s, sys::TCP_SEND_QUEUE)?;
        sys::tcp_set_queue_seq(&s, self.send_end().wrapping_sub(self.send_len))?;
        bind(s.as_raw_fd(), &storage_of(&self.local)?)?;
        connect(s.as_raw_fd(), &storage_of(&self.peer)?)?;
        sys::tcp_set_repair_options(&s, &self.repair_options())?;
        if self.options & TCPI_OPT_TIMESTAMPS != 0 {
            sys::tcp_set_timestamp(&s, self.timestamp)?;
        }
        sys::tcp_select_queue(&s, sys::TCP_RECV_QUEUE)?;
        send_all(&s, received)?;
        sys::tcp_select_queue(&s, sys::TCP_SEND_QUEUE)?;
        send_all(&s, sent)?;
        sys::tcp_set_repair_window(&s, self.repair_window())?;
        self.close_as_it_was(&s)?;
        sys::tcp_set_repair(&s, false)?;
        send_all(&s, unsent)?;
        if self.state.fin_sent() && !unsent.is_empty() {
            // FIN_WAIT1 with bytes not sent yet: its FIN goes after them, for real.
            shutdown(s.as_raw_fd(), Shutdown::Write)?;
        }
        setsockopt(&s, sockopt::TcpNoDelay, &self.nodelay)?;
        setsockopt(&s, sockopt::KeepAlive, &self.keepalive)?;
        Ok(s)
    }

    /// The sequence number after the received bytes (before the peer's FIN, if any).
    fn data_end(&self) -> u32 {
        self.recv_seq
            .wrapping_sub(u32::from(self.state.fin_received()))
    }

    /// The sequence number after the bytes to send (before our FIN, if any).
    fn send_end(&self) -> u32 {
        self.send_seq.wrapping_sub(u32::from(self.state.fin_sent()))
    }

    /// In repair mode, once the queues are back: the FINs sent and received again, in the
    /// order they were, so that the kernel's state is the recorded one.
    fn close_as_it_was(&self, s: &OwnedFd) -> io::Result<()> {
        let fin_now = self.unsent == 0;
        match self.state {
            TcpState::Established => Ok(()),
            TcpState::CloseWait => self.receive_fin(s, TCP_CLOSE_WAIT),
            TcpState::FinWait1 if fin_now => send_fin_in_repair(s),
            TcpState::FinWait1 => Ok(()),
            TcpState::FinWait2 => {
                send_fin_in_repair(s)?;
                self.receive_ack_of_fin(s)
            }
            TcpState::LastAck => {
                self.receive_fin(s, TCP_CLOSE_WAIT)?;
                send_fin_in_repair(s)
            }
            TcpState::Closing => {
                send_fin_in_repair(s)?;
                self.receive_fin(s, TCP_CLOSING)
            }
        }
        .and_then(|()| match self.state {
            TcpState::FinWait1 if !fin_now => Ok(()),
            st => wait_state(s, st.tcpi()),
        })
    }

    /// The peer's window field, as it sent it.
    fn peer_window(&self) -> u16 {
        let scale = match self.options & TCPI_OPT_WSCALE {
            0 => 0,
            _ => self.snd_wscale,
        };
        u16::try_from(self.window[1] >> scale).unwrap_or(u16::MAX)
    }

    /// The peer's acknowledgement of our FIN (FIN_WAIT2), made as it sent it (`packet`).
    fn receive_ack_of_fin(&self, s: &OwnedFd) -> io::Result<()> {
        let (local, peer) = self.endpoints().ok_or_else(einval)?;
        let seg = super::packet::TcpSegment {
            seq: self.data_end(),
            ack: self.send_seq,
            flags: super::packet::TCP_ACK,
            window: self.peer_window(),
        };
        super::packet::send_tcp(peer, local, &seg)?;
        wait_state(s, TCP_FIN_WAIT2)
    }

    /// The window as recorded; before a FIN is received again, as it was before that FIN
    /// (which moved the window's start by one).
    fn repair_window(&self) -> sys::TcpRepairWindow {
        let [snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup] = self.window;
        let fin = u32::from(self.state.fin_received());
        sys::TcpRepairWindow {
            snd_wl1,
            snd_wnd,
            max_window,
            rcv_wnd: rcv_wnd.wrapping_add(fin),
            rcv_wup: rcv_wup.wrapping_sub(fin),
        }
    }

    /// The peer's FIN, received again (then the state is `expect`): nothing but the peer
    /// can put a FIN in the receive side, so a packet like the one it sent is made
    /// (`packet`), after the received bytes and acknowledging what it had acknowledged.
    fn receive_fin(&self, s: &OwnedFd, expect: u8) -> io::Result<()> {
        let (local, peer) = self.endpoints().ok_or_else(einval)?;
        let seg = super::packet::TcpSegment {
            seq: self.data_end(),
            ack: self.send_end().wrapping_sub(self.send_len),
            flags: super::packet::TCP_FIN | super::packet::TCP_ACK,
            window: self.peer_window(),
        };
        super::packet::send_tcp(peer, local, &seg)?;
        wait_state(s, expect)
    }

    fn repair_options(&self) -> Vec<sys::TcpRepairOpt> {
        let opt = |code, value| sys::TcpRepairOpt { code, value };
        let mut out = vec![opt(TCPOPT_MAXSEG, self.mss)];
        if self.options & TCPI_OPT_SACK != 0 {
            out.push(opt(TCPOPT_SACK_PERM, 0));
        }
        if self.options & TCPI_OPT_WSCALE != 0 {
            let scales = u32::from(self.snd_wscale) | (u32::from(self.rcv_wscale) << 16);
            out.push(opt(TCPOPT_WINDOW, scales));
        }
        if self.options & TCPI_OPT_TIMESTAMPS != 0 {
            out.push(opt(TCPOPT_TIMESTAMP, 0));
        }
        out
    }

    /// Local and peer address and port, for the network lock's rules.
    pub fn endpoints(&self) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
        Some((socket_addr(&self.local)?, socket_addr(&self.peer)?))
    }
}

/// A raw `sockaddr_in*` as a std address.
pub fn socket_addr(raw: &[u8]) -> Option<std::net::SocketAddr> {
    let storage = storage_of(raw).ok()?;
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(std::net::SocketAddr::from((v4.ip(), v4.port())));
    }
    let v6 = storage.as_sockaddr_in6()?;
    Some(std::net::SocketAddr::from((v6.ip(), v6.port())))
}

/// Our FIN, queued and counted as sent without going out (repair mode, send queue: as the
/// sent bytes were).
fn send_fin_in_repair(s: &OwnedFd) -> io::Result<()> {
    sys::tcp_select_queue(s, sys::TCP_SEND_QUEUE)?;
    shutdown(s.as_raw_fd(), Shutdown::Write)?;
    Ok(())
}

/// Waits for the made packets to be received: on this CPU at once, as a rule; not trusted
/// to be.
fn wait_state(s: &OwnedFd, state: u8) -> io::Result<()> {
    for _ in 0..200 {
        if sys::tcp_info(s)?.tcpi_state == state {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let now = sys::tcp_info(s)?.tcpi_state;
    Err(io::Error::other(format!(
        "closing it as it was: in state {} instead of {}",
        state_name(now),
        state_name(state)
    )))
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

fn send_all(s: &OwnedFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = send(s.as_raw_fd(), data, MsgFlags::empty())?;
        data = &data[n..];
    }
    Ok(())
}

impl FdState for TcpEnd {
    fn what(&self) -> &'static str {
        "the TCP connection"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()> {
        let made = ctx
            .shared
            .tcp
            .get(self.conn)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        super::place_copy(made, f)
    }

    fn valid(&self, _f: &Fd, v: &View) -> bool {
        self.conn < v.shared.tcp.len()
    }

    fn describe(&self, _f: &Fd, v: &View) -> String {
        match v.shared.tcp.get(self.conn) {
            Some(c) => format!(
                "TCP connection {} ({} bytes to send, {} received unread{})",
                c.display,
                c.send_len,
                c.recv_len,
                match c.state {
                    TcpState::Established => String::new(),
                    st => format!(", {}", st.name()),
                }
            ),
            None => "TCP connection ?".into(),
        }
    }
}

/// Connections have addresses of their family and queues that add up to their section
/// (image data is never trusted).
pub fn validate(
    conns: &[TcpConnection],
    sections: &[Section],
    processes: usize,
) -> Result<(), String> {
    for c in conns {
        let total = u64::from(c.send_len) + u64::from(c.recv_len);
        let data_ok = match c.data_section {
            None => total == 0,
            Some(i) => section_is(sections, i, &TCP_QUEUES) && sections[i].len == total,
        };
        let ok = data_ok
            && [libc::AF_INET, libc::AF_INET6].contains(&c.family)
            && valid_address(c.family, &c.local)
            && valid_address(c.family, &c.peer)
            && c.unsent <= c.send_len
            && c.holder < processes
            && c.snd_wscale <= 14
            && c.rcv_wscale <= 14;
        if !ok {
            return Err(format!("bad TCP connection {}", c.display));
        }
    }
    Ok(())
}

/// Keeps a made connection's fd for the restorers (the holder's user does not matter for a
/// connection already established).
pub fn make_all(
    conns: &[TcpConnection],
    read: &dyn Fn(Option<usize>) -> io::Result<Vec<u8>>,
) -> io::Result<Vec<OwnedFd>> {
    conns
        .iter()
        .map(|c| {
            c.make(&read(c.data_section)?).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("making TCP connection {} again: {e}", c.display),
                )
            })
        })
        .collect()
}

/// Copies of the TCP connections the processes `pids` hold that are carried (established or
/// closing; each once), with their local and peer addresses: what the network lock covers.
#[allow(clippy::type_complexity)]
pub fn connections_in(
    pids: &[i32],
) -> io::Result<(
    Vec<OwnedFd>,
    Vec<(std::net::SocketAddr, std::net::SocketAddr)>,
)> {
    let mut seen = std::collections::BTreeSet::new();
    let (mut sockets, mut endpoints) = (Vec::new(), Vec::new());
    for &pid in pids {
        for e in crate::proc::fds(pid)? {
            let Some(ino) = crate::proc::bracketed_inode(&e.target, "socket") else {
                continue;
            };
            if !seen.insert(ino) {
                continue;
            }
            let Ok(s) = sys::steal_fd(pid, e.fd) else {
                continue; // its dump says why
            };
            if !is_tcp(&s) || !is_carried(&s) {
                continue;
            }
            let local = super::socket::local_address(&s)
                .ok()
                .and_then(|a| socket_addr(&a));
            let peer = getpeername::<SockaddrStorage>(s.as_raw_fd())
                .ok()
                .and_then(|p| socket_addr(&super::socket::sockaddr_bytes(&p)));
            if let (Some(l), Some(p)) = (local, peer) {
                endpoints.push((l, p));
                sockets.push(s);
            }
        }
    }
    Ok((sockets, endpoints))
}
