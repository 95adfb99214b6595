//! Following the program's credentials.
//!
//! glibc's set*id broadcast reaches only glibc's threads, so the control thread, which is
//! not one, would keep the ids it started with. The library interposes the credential calls:
//! after a successful one the calling thread asks the control thread (`CREDS TID`) to take
//! its uids, gids and groups. The control thread also takes the main thread's whenever it
//! starts listening and before serving any request.

use super::config::{app_path, socket_path, unix_addr};
use super::line_io::{read_line, send_all};
use super::status::RUNNING;
use crate::raw::{self, Buf};
use core::sync::atomic::Ordering::Acquire;

/// Takes the credentials of thread `tid` (decimal; empty: the main thread) of this process:
/// the program changed its own (setuid and friends, interposed), and glibc changes them in its
/// threads only. Groups, then gids, then uids, from /proc/self/task/TID/status.
pub fn adopt_credentials(tid: &[u8]) -> bool {
    let mut text = [0u8; 16384];
    let Some(len) = read_status(tid, &mut text) else {
        return false;
    };
    let Some(ids) = parse_ids(text.get(..len).unwrap_or_default()) else {
        return false;
    };
    // Dropping root: hand the application's directory and our socket to the new user first,
    // so that this thread can still make its endpoint there later (after a restore).
    if raw::geteuid() == 0 && ids.uid[1] != 0 {
        hand_app_dir_to(ids.uid[1] as u32, ids.gid[1] as u32);
    }
    take_ids(&ids)
}

/// A thread's ids as its status file gives them: real, effective and saved uid and gid, and
/// the supplementary groups.
struct Ids {
    uid: [u64; 3],
    gid: [u64; 3],
    groups: [u32; 1024],
    ngroups: usize,
}

/// Reads the status file of thread `tid` into `text`; returns its length.
fn read_status(tid: &[u8], text: &mut [u8]) -> Option<usize> {
    let mut path = Buf::<64>::new();
    if tid.is_empty() {
        // The thread group leader (the program's main thread).
        path.push(b"/proc/self/status");
    } else {
        path.push(b"/proc/self/task/").push(tid).push(b"/status");
    }
    let fd = raw::open(path.c_str(), libc::O_RDONLY | libc::O_CLOEXEC, 0);
    if fd < 0 {
        return None;
    }
    let mut len = 0;
    loop {
        let n = raw::read(fd as i32, text.get_mut(len..).unwrap_or_default());
        if n <= 0 {
            break;
        }
        len += n as usize;
    }
    raw::close(fd as i32);
    Some(len)
}

/// The ids of the Uid, Gid and Groups lines of a status file (None if one is missing).
fn parse_ids(text: &[u8]) -> Option<Ids> {
    let mut ids = Ids {
        uid: [0; 3],
        gid: [0; 3],
        groups: [0; 1024],
        ngroups: 0,
    };
    let (mut have_uid, mut have_gid, mut ngroups) = (false, false, None);
    for line in text.split(|&b| b == b'\n') {
        if let Some(rest) = line.strip_prefix(b"Uid:") {
            have_uid = parse_numbers(rest, &mut ids.uid) == 3;
        } else if let Some(rest) = line.strip_prefix(b"Gid:") {
            have_gid = parse_numbers(rest, &mut ids.gid) == 3;
        } else if let Some(rest) = line.strip_prefix(b"Groups:") {
            let mut g = [0u64; 1024];
            let n = parse_numbers(rest, &mut g);
            for (d, s) in ids.groups.iter_mut().zip(g) {
                *d = s as u32;
            }
            ngroups = Some(n);
        }
    }
    let (true, true, Some(ngroups)) = (have_uid, have_gid, ngroups) else {
        return None;
    };
    ids.ngroups = ngroups;
    Some(ids)
}

/// The blank-separated decimal numbers of `rest`, into `out` as far as they fit; how many.
fn parse_numbers(rest: &[u8], out: &mut [u64]) -> usize {
    let mut n = 0;
    for w in rest
        .split(|&b| b == b'\t' || b == b' ')
        .filter(|w| !w.is_empty())
    {
        if n < out.len() {
            out[n] = w.iter().fold(0u64, |a, d| {
                a.saturating_mul(10)
                    .saturating_add(u64::from(d.wrapping_sub(b'0')))
            });
            n += 1;
        }
    }
    n
}

/// Makes the application's directory and this process's socket belong to `uid`/`gid`.
fn hand_app_dir_to(uid: u32, gid: u32) {
    let mut dir = app_path(b"");
    raw::chown(dir.c_str(), uid, gid);
    raw::chown(socket_path().c_str(), uid, gid);
}

/// Takes `ids` for this thread: groups and gids first, while it may still change them.
fn take_ids(ids: &Ids) -> bool {
    let Ids {
        uid,
        gid,
        groups,
        ngroups,
    } = ids;
    // Changing effective ids resets the process's (mm-wide) dumpable flag: keep the program's.
    // SAFETY: prctl calls without pointers; credential calls on this thread, `groups` holds
    // `ngroups` entries.
    unsafe {
        let dumpable = raw::syscall6(
            libc::SYS_prctl,
            [libc::PR_GET_DUMPABLE as u64, 0, 0, 0, 0, 0],
        );
        raw::syscall6(
            libc::SYS_setgroups,
            [*ngroups as u64, groups.as_ptr() as u64, 0, 0, 0, 0],
        );
        let ok = raw::syscall6(libc::SYS_setresgid, [gid[0], gid[1], gid[2], 0, 0, 0]) == 0
            && raw::syscall6(libc::SYS_setresuid, [uid[0], uid[1], uid[2], 0, 0, 0]) == 0;
        if dumpable >= 0 {
            raw::syscall6(
                libc::SYS_prctl,
                [libc::PR_SET_DUMPABLE as u64, dumpable as u64, 0, 0, 0, 0],
            );
        }
        ok
    }
}

/// In a program thread, after it changed its credentials: makes the control thread take the
/// same (it is not a glibc thread, so glibc's broadcast does not reach it). Keeps errno.
pub fn follow_credentials() {
    if !RUNNING.load(Acquire) {
        return;
    }
    // SAFETY: __errno_location is this (glibc) thread's errno.
    let saved = unsafe { *libc::__errno_location() };
    ask_control_thread_to_follow();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// Sends `CREDS TID` (the calling thread) to the control thread and waits for its answer.
fn ask_control_thread_to_follow() {
    let Some(addr) = unix_addr(&mut socket_path()) else {
        return;
    };
    // Non-blocking connect: if the control thread is busy (a checkpoint in progress) and
    // its backlog full, give up; it takes our credentials at its next request anyway.
    let fd = raw::socket(
        libc::AF_UNIX,
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
    );
    if fd < 0 {
        return;
    }
    let fd = fd as i32;
    raw::set_rcv_timeout(fd, 5);
    if raw::connect_unix(fd, &addr) == 0 && raw::fcntl(fd, libc::F_SETFL, 0) == 0 {
        let mut req = Buf::<48>::new();
        req.push(b"CREDS ")
            .num(i64::from(raw::gettid()))
            .push(b"\n");
        if send_all(fd, &req) {
            let mut line = Buf::<256>::new();
            let _ = read_line(fd, &mut line);
        }
    }
    raw::close(fd);
}
