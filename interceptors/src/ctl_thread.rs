//! The control thread: the application's endpoint for `ckpt`.
//!
//! It owns at most two fds, the listening socket and one connection, both moved high (just
//! under the fd limit, at most 1023) so that they stay out of the numbers an application uses.
//! If they vanish (the application closed every fd, or this is a restored process whose image
//! left them out) an accept or read fails and the thread makes a new endpoint.

use crate::control::CTL;
use crate::raw;
use ckpt_abi::interceptor::{
    APP_FILE, ENV_APP_ID, ENV_RUNTIME_DIR, REQ_DONE, REQ_INFO, REQ_PREPARE, SOCKET_SUFFIX,
};
use core::sync::atomic::{AtomicI32, AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::ffi::CString;
use std::sync::OnceLock;

struct Config {
    app_id: String,
    runtime_dir: String,
}

static CONFIG: OnceLock<Config> = OnceLock::new();
/// The listening socket and the connection being served (-1: none).
static LISTEN_FD: AtomicI32 = AtomicI32::new(-1);
static CONN_FD: AtomicI32 = AtomicI32::new(-1);
/// A thread other than the control thread, as (pthread_self, kernel tid), to confirm where
/// glibc keeps the tid in its thread descriptor.
static REF_THREAD: AtomicUsize = AtomicUsize::new(0);
static REF_TID: AtomicI32 = AtomicI32::new(0);
/// Offset of the tid in glibc's `struct pthread` (-1: not found).
static TID_OFFSET: AtomicI64 = AtomicI64::new(-1);

/// Starts the control thread, if the process runs under `ckpt run`.
pub fn start() {
    let config = CONFIG.get_or_init(|| Config {
        app_id: std::env::var(ENV_APP_ID).unwrap_or_default(),
        runtime_dir: std::env::var(ENV_RUNTIME_DIR).unwrap_or_default(),
    });
    if config.app_id.is_empty() || config.runtime_dir.is_empty() {
        return; // preloaded by hand: only the (inactive) id functions are here
    }
    // SAFETY: pthread_self has no preconditions.
    REF_THREAD.store(unsafe { libc::pthread_self() } as usize, Relaxed);
    REF_TID.store(raw::gettid(), Relaxed);
    // The thread inherits the creator's signal mask: block everything around its creation so
    // that it never runs a handler of the application's.
    // SAFETY: sigset_t is plain data; the calls only read and write the two sets.
    unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let spawned = std::thread::Builder::new()
            .name("ckpt-ctl".into())
            .stack_size(128 * 1024)
            .spawn(run);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
        drop(spawned);
    }
}

/// In a child after fork: the parent's endpoint is not ours (the fds are the parent's
/// sockets); the child gets its own control thread and endpoint.
pub extern "C" fn after_fork_in_child() {
    for fd in [&LISTEN_FD, &CONN_FD] {
        let n = fd.swap(-1, Relaxed);
        if n >= 0 {
            // SAFETY: closing the fd this library made (inherited across fork).
            unsafe { libc::close(n) };
        }
    }
    start();
}

fn run() {
    find_tid_offset();
    let mut failures = 0u32;
    loop {
        match Endpoint::create() {
            Ok(ep) => {
                failures = 0;
                ep.serve();
            }
            Err(_) => {
                failures += 1;
                if failures > 30 {
                    return; // the runtime directory is gone for good: stay out of the way
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
}

/// Where glibc's `struct pthread` (at the thread pointer on x86-64) keeps the kernel tid: the
/// offset where both this thread's and the reference thread's descriptors hold their tids.
/// `ckpt restore` rewrites that field when a thread comes back under another tid, so that
/// glibc's pthread_kill, raise and mutex owner checks address the right thread.
fn find_tid_offset() {
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    let other = REF_THREAD.load(Relaxed);
    let (my_tid, other_tid) = (raw::gettid(), REF_TID.load(Relaxed));
    let mut fs_base = 0usize;
    const ARCH_GET_FS: libc::c_int = 0x1003;
    // SAFETY: ARCH_GET_FS writes one word to the address given.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_FS, &mut fs_base) };
    if r != 0 || fs_base != me || other == 0 || my_tid == other_tid {
        return;
    }
    // glibc's struct pthread is larger than 2 KiB, so both reads stay inside the descriptors.
    for off in (0..2048usize).step_by(4) {
        // SAFETY: both addresses are inside live thread descriptors (see above); unaligned
        // reads are not needed (4-byte steps from aligned bases).
        let (a, b) = unsafe {
            (
                core::ptr::read_volatile((me + off) as *const i32),
                core::ptr::read_volatile((other + off) as *const i32),
            )
        };
        if a == my_tid && b == other_tid {
            TID_OFFSET.store(off as i64, Relaxed);
            return;
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Moves `fd` to the highest free number under min(fd limit, 1024), close-on-exec.
fn move_high(fd: i32) -> i32 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct given.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let top = lim.rlim_cur.min(1024) as i32;
    for want in (3.max(top - 64)..top).rev() {
        // SAFETY: F_GETFD only queries; F_DUPFD_CLOEXEC makes a new fd >= want.
        unsafe {
            if libc::fcntl(want, libc::F_GETFD) == -1 && errno() == libc::EBADF {
                let n = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, want);
                if n == want {
                    libc::close(fd);
                    return n;
                }
                if n >= 0 {
                    libc::close(n);
                }
            }
        }
    }
    fd
}

struct Endpoint {
    fd: i32,
    ino: u64,
}

impl Endpoint {
    fn create() -> std::io::Result<Endpoint> {
        let config = CONFIG.get().ok_or(std::io::ErrorKind::NotFound)?;
        let dir = format!("{}/{}", config.runtime_dir, config.app_id);
        std::fs::create_dir_all(&dir)?;
        let pid = raw::getpid();
        let path = format!("{dir}/{pid}{SOCKET_SUFFIX}");
        if !std::path::Path::new(&format!("{dir}/{APP_FILE}")).exists() {
            // A restored or forked process of an application whose registration was cleaned
            // up: register again, briefly.
            let _ = std::fs::write(
                format!("{dir}/{APP_FILE}"),
                format!(
                    "{{\"id\":\"{}\",\"root_pid\":{pid},\"argv\":[]}}\n",
                    config.app_id
                ),
            );
        }
        let _ = std::fs::remove_file(&path);
        let cpath = CString::new(path.clone()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        // SAFETY: plain socket calls on an fd we own; sockaddr_un is filled within bounds
        // (checked length).
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut addr: libc::sockaddr_un = core::mem::zeroed();
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            let bytes = cpath.as_bytes_with_nul();
            if bytes.len() > addr.sun_path.len() {
                libc::close(fd);
                return Err(std::io::ErrorKind::InvalidInput.into());
            }
            for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
                *d = *s as libc::c_char;
            }
            let len = core::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0
                || libc::listen(fd, 8) != 0
            {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
            let fd = move_high(fd);
            let mut st: libc::stat = core::mem::zeroed();
            libc::fstat(fd, &mut st);
            LISTEN_FD.store(fd, Relaxed);
            Ok(Endpoint { fd, ino: st.st_ino })
        }
    }

    /// Is `fd` still our socket (and not something the application put at its number)?
    fn still_ours(&self) -> bool {
        // SAFETY: fstat writes the struct given.
        unsafe {
            let mut st: libc::stat = core::mem::zeroed();
            libc::fstat(self.fd, &mut st) == 0 && st.st_ino == self.ino
        }
    }

    /// Serves requests until the endpoint is lost.
    fn serve(&self) {
        loop {
            // SAFETY: accept4 on our listening socket; no address wanted.
            let conn = unsafe {
                libc::accept4(
                    self.fd,
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if conn < 0 {
                match errno() {
                    libc::EINTR | libc::ECONNABORTED | libc::EMFILE | libc::ENFILE => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    }
                    _ => return, // EBADF, ENOTSOCK, EINVAL: lost (or restored)
                }
            }
            if !self.still_ours() {
                // SAFETY: conn is the fd accept4 just returned.
                unsafe { libc::close(conn) };
                return;
            }
            let conn = move_high(conn);
            CONN_FD.store(conn, Relaxed);
            let lost = serve_one(conn);
            if lost {
                // Our fds are gone (restored): do not close numbers that may now be someone
                // else's.
                CONN_FD.store(-1, Relaxed);
                LISTEN_FD.store(-1, Relaxed);
                return;
            }
            CONN_FD.store(-1, Relaxed);
            // SAFETY: conn is ours and still open.
            unsafe { libc::close(conn) };
        }
    }
}

fn peer_allowed(conn: i32) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = core::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes a ucred of the given length.
    let r = unsafe {
        libc::getsockopt(
            conn,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid has no preconditions.
    r == 0 && (cred.uid == 0 || cred.uid == unsafe { libc::geteuid() })
}

fn set_timeout(conn: i32, secs: i64) {
    let tv = libc::timeval {
        tv_sec: secs,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO reads a timeval of the given length.
    unsafe {
        libc::setsockopt(
            conn,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            core::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
}

/// Reads one line. Err(errno) on failure, Ok(None) at end of file.
fn read_line(conn: i32) -> Result<Option<String>, i32> {
    let mut line = Vec::new();
    loop {
        let mut b = 0u8;
        // SAFETY: reads one byte into `b`.
        let n = unsafe { libc::read(conn, (&mut b as *mut u8).cast(), 1) };
        match n {
            1 if b == b'\n' => return Ok(Some(String::from_utf8_lossy(&line).into_owned())),
            1 if line.len() < 256 => line.push(b),
            1 => return Err(libc::EMSGSIZE),
            0 => return Ok(None),
            _ if errno() == libc::EINTR => continue,
            _ => return Err(errno()),
        }
    }
}

fn write_all(conn: i32, s: &str) -> bool {
    let mut b = s.as_bytes();
    while !b.is_empty() {
        // SAFETY: writes from a live buffer of the given length.
        let n = unsafe { libc::send(conn, b.as_ptr().cast(), b.len(), libc::MSG_NOSIGNAL) };
        if n <= 0 {
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            return false;
        }
        b = &b[n as usize..];
    }
    true
}

/// Serves one connection. Returns true if our fds vanished under us (a restore).
fn serve_one(conn: i32) -> bool {
    if !peer_allowed(conn) {
        return false;
    }
    set_timeout(conn, 10);
    let req = match read_line(conn) {
        Ok(Some(r)) => r,
        Ok(None) => return false,
        Err(e) => return e == libc::EBADF,
    };
    match req.trim() {
        REQ_INFO => {
            let pid = raw::getpid();
            let reply = format!(
                "INFO pid={pid} vpid={} generation={}\n",
                CTL.to_virtual(pid),
                CTL.generation.load(Relaxed)
            );
            write_all(conn, &reply);
            false
        }
        REQ_PREPARE => prepare(conn),
        _ => {
            write_all(conn, "ERROR unknown request\n");
            false
        }
    }
}

/// Flushes, reports, and waits for the checkpoint to be over.
fn prepare(conn: i32) -> bool {
    // SAFETY: fflush(NULL) flushes every stdio stream, taking each stream's lock.
    unsafe { libc::fflush(core::ptr::null_mut()) };
    let own = [LISTEN_FD.load(Relaxed), conn];
    let synced = sync_written_files(&own);
    let reply = format!(
        "READY ctl={:#x} tidoff={} fds={},{} fsynced={synced} map={}\n",
        CTL.address(),
        TID_OFFSET.load(Relaxed),
        own[0],
        own[1],
        CTL.describe()
    );
    if !write_all(conn, &reply) {
        return false;
    }
    let generation = CTL.generation.load(Relaxed);
    set_timeout(conn, 0);
    // ckpt freezes and dumps us now; in a restored process this read fails with EBADF.
    let r = read_line(conn);
    let restored = CTL.generation.load(Relaxed) != generation;
    match r {
        Ok(Some(done)) if done.trim() == REQ_DONE => false,
        Ok(_) => false,
        Err(e) => restored || e == libc::EBADF,
    }
}

/// fdatasync of every regular file open for writing, so that what the image says was written
/// is on disk. Returns how many.
fn sync_written_files(own: &[i32]) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut n = 0;
    for fd in fds {
        if own.contains(&fd) {
            continue;
        }
        // SAFETY: queries on an fd number; a closed or foreign fd just fails.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl < 0 || fl & libc::O_ACCMODE == libc::O_RDONLY {
                continue;
            }
            let mut st: libc::stat = core::mem::zeroed();
            if libc::fstat(fd, &mut st) != 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
                continue;
            }
            if libc::fdatasync(fd) == 0 {
                n += 1;
            }
        }
    }
    n
}
