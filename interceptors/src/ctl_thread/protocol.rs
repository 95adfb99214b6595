//! One connection, one request (the protocol is in `ckpt_abi::interceptor`): INFO; PREPARE,
//! answered READY once flushed, then waiting for DONE while ckpt freezes and dumps the
//! process; CREDS from the program itself.

use super::line_io::{read_line, send_all};
use super::status::CTL_TID;
use super::{creds, flush, sync_files, tid_offset, trampoline};
use crate::control::CTL;
use crate::raw::{self, Buf};
use ckpt_abi::interceptor::{REQ_DONE, REQ_INFO, REQ_PREPARE};
use core::sync::atomic::Ordering::Relaxed;

/// Serves one connection. Returns true if our fds vanished under us (a restore).
pub fn serve_one(conn: i32) -> bool {
    // Whatever the program did to its credentials (raw setuid calls included), this thread
    // serves with the main thread's.
    creds::adopt_credentials(b"");
    let Some(peer) = raw::peer_cred(conn) else {
        return false;
    };
    let own_process = peer.pid == raw::getpid();
    if !(own_process || peer.uid == 0 || peer.uid == raw::geteuid()) {
        return false;
    }
    raw::set_rcv_timeout(conn, 10);
    let mut line = Buf::<256>::new();
    match read_line(conn, &mut line) {
        Ok(true) => {}
        Ok(false) => return false,
        Err(e) => return e == libc::EBADF,
    }
    let req = line.as_slice();
    if req == REQ_INFO.as_bytes() {
        answer_info(conn);
        false
    } else if req == REQ_PREPARE.as_bytes() {
        prepare(conn, peer)
    } else if let (true, Some(tid)) = (own_process, req.strip_prefix(b"CREDS ")) {
        let ok = creds::adopt_credentials(tid);
        send_all(conn, if ok { b"OK\n" } else { b"ERROR\n" });
        false
    } else {
        send_all(conn, b"ERROR unknown request\n");
        false
    }
}

/// INFO: kernel pid, virtual pid, generation.
fn answer_info(conn: i32) {
    let pid = raw::getpid();
    let mut r = Buf::<256>::new();
    r.push(b"INFO pid=").num(i64::from(pid));
    r.push(b" vpid=").num(i64::from(CTL.to_virtual(pid)));
    r.push(b" generation=")
        .num(CTL.generation.load(Relaxed) as i64);
    r.push(b"\n");
    send_all(conn, &r);
}

/// Flushes, reports, and waits for the checkpoint to be over. True if our fds vanished
/// meanwhile (a restore).
fn prepare(conn: i32, peer: libc::ucred) -> bool {
    let stdio = flush::flush_stdio();
    let synced = sync_files::sync_written_files();
    let tracer = TracerDeclared::for_checkpoint(peer);
    if !send_ready(conn, stdio, synced) {
        return false;
    }
    let restored = wait_for_done(conn);
    drop(tracer);
    restored
}

/// Under Yama's ptrace_scope 1 only an ancestor (or CAP_SYS_PTRACE) may attach, and the
/// checkpointing `ckpt` (its worker) is never the program's ancestor: so that a user can
/// checkpoint their own `ckpt run` program there, the process names the peer (already checked
/// to be its own user) its tracer for the time of the checkpoint, and withdraws it after
/// (PR_SET_PTRACER 0, also when the connection fails). A program's own PR_SET_PTRACER is
/// lost by this (the kernel has no getter); it is done only under scope 1 and for a
/// non-root peer, which the scope does not stop.
struct TracerDeclared(bool);

impl TracerDeclared {
    fn for_checkpoint(peer: libc::ucred) -> TracerDeclared {
        let wanted = peer.uid != 0 && peer.pid != raw::getpid() && yama_scope_is_one();
        TracerDeclared(wanted && raw::prctl_set_ptracer(peer.pid) == 0)
    }
}

impl Drop for TracerDeclared {
    fn drop(&mut self) {
        if self.0 {
            raw::prctl_set_ptracer(0);
        }
    }
}

fn yama_scope_is_one() -> bool {
    let fd = raw::open(
        b"/proc/sys/kernel/yama/ptrace_scope\0",
        libc::O_RDONLY | libc::O_CLOEXEC,
        0,
    );
    if fd < 0 {
        return false;
    }
    let mut buf = [0u8; 4];
    let n = raw::read(fd as i32, &mut buf);
    raw::close(fd as i32);
    n >= 1 && buf[0] == b'1'
}

/// READY: everything ckpt needs to know about this process's library.
fn send_ready(conn: i32, stdio: &[u8], synced: i64) -> bool {
    let mut r = Buf::<256>::new();
    r.push(b"READY ctl=").hex(CTL.address() as u64);
    r.push(b" tidoff=").num(tid_offset::get());
    r.push(b" ctltid=").num(i64::from(CTL_TID.load(Relaxed)));
    r.push(b" fsynced=").num(synced);
    r.push(b" stdio=").push(stdio);
    r.push(b" flush=").hex(trampoline::entry_address());
    r.push(b" ctx=").hex(trampoline::context_address());
    r.push(b" map=");
    // The table can be long: it goes in a second buffer.
    let mut map = Buf::<16384>::new();
    CTL.describe(&mut map);
    map.push(b"\n");
    send_all(conn, &r) && send_all(conn, &map)
}

/// Waits, without a timeout, for DONE or the end of the connection. True if our fds vanished
/// meanwhile (a restore).
fn wait_for_done(conn: i32) -> bool {
    let generation = CTL.generation.load(Relaxed);
    raw::set_rcv_timeout(conn, 0);
    // ckpt freezes and dumps us now; in a restored process this read fails with EBADF.
    let mut line = Buf::<256>::new();
    let r = read_line(conn, &mut line);
    let restored = CTL.generation.load(Relaxed) != generation;
    match r {
        Ok(true) if line.as_slice() == REQ_DONE.as_bytes() => false,
        Ok(_) => false,
        Err(e) => restored || e == libc::EBADF,
    }
}
