//! Terminal ioctls nix does not wrap (it has termios and openpty, not these): a pty's index,
//! lock and packet mode, the slave opened from its master, window size, the controlling
//! terminal, bytes waiting to be read, input handed to the line discipline.

use super::check_int;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

fn get_int(fd: impl AsFd, request: libc::Ioctl) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: `request` is a "get int" terminal ioctl writing one int.
    check_int(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), request, &mut v) })?;
    Ok(v)
}

fn set_int(fd: impl AsFd, request: libc::Ioctl, v: i32) -> io::Result<()> {
    // SAFETY: `request` is a "set int" terminal ioctl reading one int.
    check_int(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), request, &v) }).map(drop)
}

/// TIOCGPTN: the index of a pty master's slave (/dev/pts/N).
pub fn pty_index(master: impl AsFd) -> io::Result<u32> {
    get_int(master, libc::TIOCGPTN).map(|n| n as u32)
}

/// TIOCGPTLCK / TIOCSPTLCK: whether the slave may not be opened yet (before unlockpt).
pub fn pty_locked(master: impl AsFd) -> io::Result<bool> {
    get_int(master, libc::TIOCGPTLCK).map(|v| v != 0)
}

pub fn set_pty_locked(master: impl AsFd, locked: bool) -> io::Result<()> {
    set_int(master, libc::TIOCSPTLCK, i32::from(locked))
}

/// TIOCGPKT / TIOCPKT: packet mode on a master.
pub fn pty_packet_mode(master: impl AsFd) -> io::Result<bool> {
    get_int(master, libc::TIOCGPKT).map(|v| v != 0)
}

pub fn set_pty_packet_mode(master: impl AsFd, on: bool) -> io::Result<()> {
    set_int(master, libc::TIOCPKT, i32::from(on))
}

/// TIOCGPTPEER: the slave of `master`, opened without a path lookup (and never as a
/// controlling terminal).
pub fn pty_peer(master: impl AsFd) -> io::Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags as its argument and returns a new fd.
    let fd =
        check_int(unsafe { libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCGPTPEER, flags) })?;
    // SAFETY: the ioctl just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// TIOCGWINSZ: rows, columns, x and y pixels.
pub fn window_size(fd: impl AsFd) -> io::Result<[u16; 4]> {
    // SAFETY: winsize is plain data that TIOCGWINSZ fills.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one struct winsize.
    check_int(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) })?;
    Ok([ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel])
}

pub fn set_window_size(fd: impl AsFd, [rows, cols, x, y]: [u16; 4]) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: x,
        ws_ypixel: y,
    };
    // SAFETY: TIOCSWINSZ reads one struct winsize.
    check_int(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// TIOCSCTTY: makes the terminal the caller's controlling terminal (the caller leads a
/// session that has none).
pub fn set_controlling_terminal(fd: impl AsFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument by value (0: do not steal it from another
    // session).
    check_int(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSCTTY, 0) }).map(drop)
}

/// FIONREAD: bytes waiting to be read.
pub fn bytes_waiting(fd: impl AsFd) -> io::Result<u32> {
    get_int(fd, libc::FIONREAD).map(|n| n as u32)
}

/// TIOCSTI: hands one byte to the terminal's line discipline as if it had just arrived
/// (synchronously: the line discipline has processed it when the call returns). Needs
/// CAP_SYS_ADMIN on a terminal that is not the caller's controlling terminal.
pub fn push_input(fd: impl AsFd, byte: u8) -> io::Result<()> {
    // SAFETY: TIOCSTI reads one byte from the pointer it is given.
    check_int(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSTI, &byte) }).map(drop)
}

/// TIOCGETD: the terminal's line discipline (0: N_TTY).
pub fn line_discipline(fd: impl AsFd) -> io::Result<i32> {
    get_int(fd, libc::TIOCGETD)
}
