//! TCP repair mode (TCP_REPAIR and friends: a connection's sequence numbers, queues, options
//! and window read and set directly), and the socket queue sizes, which nix does not wrap.

use super::check_int;
use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// TCP_REPAIR_QUEUE values.
pub const TCP_RECV_QUEUE: i32 = 1;
pub const TCP_SEND_QUEUE: i32 = 2;
/// SIOCOUTQNSD: bytes in the send queue not sent yet.
const SIOCOUTQNSD: libc::Ioctl = 0x894B;

/// struct tcp_repair_window.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpRepairWindow {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

/// struct tcp_repair_opt.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TcpRepairOpt {
    pub code: u32,
    pub value: u32,
}

fn get<T: Copy>(fd: impl AsFd, level: i32, name: i32, mut v: T) -> io::Result<T> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` is plain data of `len` bytes that the kernel fills (at most `len`).
    check_int(unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (&mut v as *mut T).cast(),
            &mut len,
        )
    })?;
    Ok(v)
}

fn set<T>(fd: impl AsFd, level: i32, name: i32, v: &[T]) -> io::Result<()> {
    let len = std::mem::size_of_val(v) as libc::socklen_t;
    // SAFETY: the kernel reads `len` bytes of plain data from `v`.
    check_int(unsafe {
        libc::setsockopt(fd.as_fd().as_raw_fd(), level, name, v.as_ptr().cast(), len)
    })
    .map(drop)
}

/// TCP_REPAIR on or off.
pub fn tcp_set_repair(fd: impl AsFd, on: bool) -> io::Result<()> {
    set(fd, libc::SOL_TCP, libc::TCP_REPAIR, &[i32::from(on)])
}

/// TCP_REPAIR_QUEUE: which queue TCP_QUEUE_SEQ and MSG_PEEK/sends in repair mode act on.
pub fn tcp_select_queue(fd: impl AsFd, queue: i32) -> io::Result<()> {
    set(fd, libc::SOL_TCP, libc::TCP_REPAIR_QUEUE, &[queue])
}

/// TCP_QUEUE_SEQ of the selected queue (write_seq of the send queue, rcv_nxt of the
/// receive queue).
pub fn tcp_queue_seq(fd: impl AsFd) -> io::Result<u32> {
    get(fd, libc::SOL_TCP, libc::TCP_QUEUE_SEQ, 0u32)
}

pub fn tcp_set_queue_seq(fd: impl AsFd, seq: u32) -> io::Result<()> {
    set(fd, libc::SOL_TCP, libc::TCP_QUEUE_SEQ, &[seq])
}

/// TCP_INFO.
pub fn tcp_info(fd: impl AsFd) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain data; zero is a valid value.
    get(fd, libc::SOL_TCP, libc::TCP_INFO, unsafe {
        std::mem::zeroed()
    })
}

/// TCP_MAXSEG (in repair mode: the MSS clamp to restore).
pub fn tcp_maxseg(fd: impl AsFd) -> io::Result<u32> {
    get(fd, libc::SOL_TCP, libc::TCP_MAXSEG, 0u32)
}

/// TCP_TIMESTAMP: the connection's current timestamp clock.
pub fn tcp_timestamp(fd: impl AsFd) -> io::Result<u32> {
    get(fd, libc::SOL_TCP, libc::TCP_TIMESTAMP, 0u32)
}

pub fn tcp_set_timestamp(fd: impl AsFd, ts: u32) -> io::Result<()> {
    set(fd, libc::SOL_TCP, libc::TCP_TIMESTAMP, &[ts])
}

pub fn tcp_repair_window(fd: impl AsFd) -> io::Result<TcpRepairWindow> {
    get(
        fd,
        libc::SOL_TCP,
        libc::TCP_REPAIR_WINDOW,
        TcpRepairWindow::default(),
    )
}

pub fn tcp_set_repair_window(fd: impl AsFd, w: TcpRepairWindow) -> io::Result<()> {
    set(fd, libc::SOL_TCP, libc::TCP_REPAIR_WINDOW, &[w])
}

pub fn tcp_set_repair_options(fd: impl AsFd, opts: &[TcpRepairOpt]) -> io::Result<()> {
    set(fd, libc::SOL_TCP, libc::TCP_REPAIR_OPTIONS, opts)
}

fn ioctl_int(fd: impl AsFd, request: libc::Ioctl) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: `request` is a socket ioctl writing one int.
    check_int(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), request, &mut v) })?;
    Ok(v as u32)
}

/// SIOCOUTQ: bytes in the send queue (sent and not acknowledged, or not sent).
pub fn socket_send_queued(fd: impl AsFd) -> io::Result<u32> {
    ioctl_int(fd, libc::TIOCOUTQ)
}

/// SIOCOUTQNSD: bytes in the send queue not sent yet.
pub fn socket_send_unsent(fd: impl AsFd) -> io::Result<u32> {
    ioctl_int(fd, SIOCOUTQNSD)
}

/// SIOCINQ: bytes in the receive queue.
pub fn socket_recv_queued(fd: impl AsFd) -> io::Result<u32> {
    ioctl_int(fd, libc::FIONREAD)
}
