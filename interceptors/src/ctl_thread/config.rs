//! Where this process's endpoint lives: the runtime directory and application id `start` took
//! from the environment, and the paths made of them.

use crate::raw::{self, Buf};
use ckpt_abi::interceptor::SOCKET_SUFFIX;
use core::cell::UnsafeCell;

/// Written once by `start` (before the thread exists) and read by the thread afterwards.
pub struct Config {
    pub runtime_dir: Buf<160>,
    pub app_id: Buf<72>,
}
struct Shared(UnsafeCell<Config>);
// SAFETY: written only by `start`, before the control thread that reads it is created (and
// again only in a fork child, where that thread does not exist).
unsafe impl Sync for Shared {}
static CONFIG: Shared = Shared(UnsafeCell::new(Config {
    runtime_dir: Buf::new(),
    app_id: Buf::new(),
}));

/// Sets the runtime directory and application id. False if either was cut off or the id is
/// empty: then there is no endpoint to make.
///
/// # Safety
/// No control thread may run in this process (it reads the configuration without a lock):
/// call this before making one, or in a fork child.
pub unsafe fn set(runtime_dir: &[u8], app_id: &[u8]) -> bool {
    // SAFETY: see `Shared` and above: nobody reads while this writes.
    let c = unsafe { &mut *CONFIG.0.get() };
    c.runtime_dir.len = 0;
    c.app_id.len = 0;
    c.runtime_dir.push(runtime_dir);
    c.app_id.push(app_id);
    c.runtime_dir.fits() && c.app_id.fits() && !c.app_id.is_empty()
}

/// What `set` stored.
pub fn config() -> &'static Config {
    // SAFETY: see `Shared`: no writer runs while the thread reads.
    unsafe { &*CONFIG.0.get() }
}

/// `RUNTIME_DIR/APP` (+ `tail`).
pub fn app_path(tail: &[u8]) -> Buf<256> {
    let c = config();
    let mut p = Buf::<256>::new();
    p.push(&c.runtime_dir).push(b"/").push(&c.app_id).push(tail);
    p
}

/// This process's control socket, `RUNTIME_DIR/APP/PID.sock` (kernel pid).
pub fn socket_path() -> Buf<256> {
    let mut p = app_path(b"/");
    p.num(i64::from(raw::getpid()))
        .push(SOCKET_SUFFIX.as_bytes());
    p
}

/// The socket address of `path` (None if it does not fit).
pub fn unix_addr(path: &mut Buf<256>) -> Option<libc::sockaddr_un> {
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if !path.fits() {
        return None;
    }
    let bytes = path.c_str();
    if bytes.len() > addr.sun_path.len() {
        return None;
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Some(addr)
}
