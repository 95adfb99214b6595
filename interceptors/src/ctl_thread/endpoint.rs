//! The control socket's life: `RUNTIME_DIR/APP/PID.sock` made (and the application
//! registered again if its registration is gone), served one connection at a time, and made
//! again when lost: in a restored process the thread's fd table starts empty.

use super::config::{app_path, config, socket_path, unix_addr};
use super::status::RUNNING;
use super::{creds, protocol};
use crate::raw::{self, Buf};
use ckpt_abi::interceptor::APP_FILE;
use core::sync::atomic::{AtomicI32, Ordering::Relaxed};

/// The listening socket and the connection being served (-1: none).
static LISTEN_FD: AtomicI32 = AtomicI32::new(-1);
static CONN_FD: AtomicI32 = AtomicI32::new(-1);

/// In a fork child: the parent's endpoint is not the child's.
pub fn forget() {
    LISTEN_FD.store(-1, Relaxed);
    CONN_FD.store(-1, Relaxed);
}

/// The control thread's work once set up: makes an endpoint and serves it, again whenever
/// it is lost. Ends the thread after 31 failed attempts to make one, a second apart.
pub fn serve_forever() -> ! {
    let mut failures = 0u32;
    loop {
        match Endpoint::create() {
            Some(ep) => {
                failures = 0;
                // Listening now, so a later change of the program's credentials reaches us;
                // one made before is taken here.
                creds::adopt_credentials(b"");
                ep.serve();
            }
            None => {
                failures += 1;
                if failures > 30 {
                    // The runtime directory is gone for good: stay out of the way.
                    RUNNING.store(false, Relaxed);
                    raw::exit_thread(0);
                }
                raw::nanosleep_ms(1000);
            }
        }
    }
}

struct Endpoint {
    fd: i32,
}

impl Endpoint {
    /// Makes the socket, and the directories and registration it goes with.
    fn create() -> Option<Endpoint> {
        make_app_dir();
        // A restored or forked process of an application whose registration is gone (another
        // host, a cleaned runtime directory): register it again.
        register_if_unregistered();
        let fd = listen_at(socket_path())?;
        LISTEN_FD.store(fd, Relaxed);
        Some(Endpoint { fd })
    }

    /// Serves requests until the endpoint is lost.
    fn serve(&self) {
        loop {
            let conn = raw::accept4(self.fd, libc::SOCK_CLOEXEC);
            if conn < 0 {
                let e = -conn as i32;
                if [libc::EINTR, libc::ECONNABORTED, libc::EMFILE, libc::ENFILE].contains(&e) {
                    raw::nanosleep_ms(10);
                    continue;
                }
                // EBADF in a restored process (its table was emptied); anything else is
                // unexpected: start over with a new endpoint, not in a tight loop. The table is
                // this thread's own, so closing the number harms nobody.
                raw::close(self.fd);
                LISTEN_FD.store(-1, Relaxed);
                if e != libc::EBADF {
                    raw::nanosleep_ms(100);
                }
                return;
            }
            let conn = conn as i32;
            CONN_FD.store(conn, Relaxed);
            let lost = protocol::serve_one(conn);
            CONN_FD.store(-1, Relaxed);
            raw::close(conn);
            if lost {
                raw::close(self.fd);
                LISTEN_FD.store(-1, Relaxed);
                return;
            }
        }
    }
}

/// `RUNTIME_DIR` and `RUNTIME_DIR/APP`, the latter only traversable by others (the socket in
/// it is open to anyone: see `spawn.rs`).
fn make_app_dir() {
    let mut dir = Buf::<256>::new();
    dir.push(&config().runtime_dir);
    raw::mkdir(dir.c_str(), 0o755);
    let mut dir = app_path(b"");
    raw::mkdir(dir.c_str(), 0o711);
}

/// Writes `RUNTIME_DIR/APP/app.json` (this process as the root) unless it exists.
fn register_if_unregistered() {
    let c = config();
    let pid = raw::getpid();
    let mut json_path = app_path(b"/");
    json_path.push(APP_FILE.as_bytes());
    let fd = raw::open(
        json_path.c_str(),
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
        0o600,
    );
    if fd >= 0 {
        let mut j = Buf::<160>::new();
        j.push(b"{\"id\":\"")
            .push(&c.app_id)
            .push(b"\",\"root_pid\":");
        j.num(i64::from(pid))
            .push(b",\"argv\":[],\"intercepted\":true}\n");
        raw::write(fd as i32, &j);
        raw::close(fd as i32);
    }
}

/// A socket listening at `path`, which replaces whatever was there.
fn listen_at(mut path: Buf<256>) -> Option<i32> {
    let addr = unix_addr(&mut path)?;
    raw::unlink(path.c_str());
    let fd = raw::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC);
    if fd < 0 {
        return None;
    }
    let fd = fd as i32;
    if raw::bind_unix(fd, &addr) != 0 || raw::listen(fd, 8) != 0 {
        raw::close(fd);
        return None;
    }
    Some(fd)
}
