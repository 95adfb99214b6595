//! The control thread: the application's endpoint for `ckpt`.
//!
//! It is a raw thread (clone, its own stack and thread pointer), invisible to glibc: a glibc
//! thread would switch a single-threaded program into glibc's multi-threaded mode (locked
//! stdio and malloc arenas, cancellation bookkeeping around every blocking call). So this
//! thread runs only raw system calls (`raw.rs`) on fixed buffers, and never touches errno,
//! malloc or thread-local state.
//!
//! It also has its own fd table (no CLONE_FILES) and fs context (no CLONE_FS): a thread that
//! shares the fd table makes the kernel take a reference and the file-position lock on every
//! read and write of the program's (measured: +19 % on 1-byte writes). Its sockets are thus
//! not in the program's fd table at all; it reaches the program's files through
//! pidfd_getfd. `ckpt restore` recreates it the same way (`Thread::own_files`).
//!
//! Stdio is flushed by glibc code, in one of two ways:
//! - the program has threads of its own (it called pthread_create, interposed here): a glibc
//!   helper thread ("ckpt-flush", free at that point) runs fflush(NULL) before the freeze,
//!   with stdio's own locking;
//! - the program is single-threaded: ckpt, once it has frozen the process, makes the main
//!   thread call [`ckpt_interceptor_flush`] if it stopped at a safe point (see
//!   `userspace/ckpt/src/flush.rs`).
//!
//! In a restored process the thread's fd table starts empty (`ckpt restore` closes what the
//! new thread got): its pending accept or read fails with EBADF and it makes a new endpoint.

mod config;
mod creds;
mod flush;
mod line_io;
mod proc_dir;
mod protocol;
mod status;
mod sync_files;
mod tid_offset;
mod trampoline;

use crate::raw::{self, Buf};
use ckpt_abi::interceptor::{APP_FILE, ENV_APP_ID, ENV_RUNTIME_DIR};
use config::{app_path, config, socket_path, unix_addr};
use core::sync::atomic::AtomicI32;
use core::sync::atomic::Ordering::{Relaxed, Release};
use status::{CTL_TID, RUNNING};

/// The listening socket and the connection being served (-1: none).
static LISTEN_FD: AtomicI32 = AtomicI32::new(-1);
static CONN_FD: AtomicI32 = AtomicI32::new(-1);

const STACK_SIZE: usize = 128 * 1024;
/// Thread-pointer area: nothing of ours uses it, but anything that did would land here.
const TLS_SIZE: usize = 16 * 1024;

/// Starts the control thread, if the process runs under `ckpt run`. Called in a glibc thread
/// (the constructor, or a fork child).
pub fn start() {
    let (Some(rt), Some(app)) = (
        std::env::var_os(ENV_RUNTIME_DIR),
        std::env::var_os(ENV_APP_ID),
    ) else {
        return; // preloaded by hand: only the (inactive) id functions are here
    };
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: the control thread does not exist yet in this process.
    if !unsafe { config::set(rt.as_bytes(), app.as_bytes()) } {
        return;
    }
    tid_offset::find();
    if spawn_raw_thread().is_ok() {
        RUNNING.store(true, Release);
    }
}

/// In a child after fork: the parent's endpoint and threads are not the child's (the
/// endpoint's fds were in the control thread's own table, which the child does not have).
pub extern "C" fn after_fork_in_child() {
    LISTEN_FD.store(-1, Relaxed);
    CONN_FD.store(-1, Relaxed);
    flush::forget_helper();
    RUNNING.store(false, Relaxed);
    start();
}

fn spawn_raw_thread() -> Result<(), ()> {
    // SAFETY: anonymous private mappings of our own; the clone below gives the new thread
    // the top of the stack and the thread-pointer area, which nothing else uses.
    unsafe {
        let stack = libc::mmap(
            core::ptr::null_mut(),
            STACK_SIZE + TLS_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        );
        if stack == libc::MAP_FAILED {
            return Err(());
        }
        let base = stack as usize;
        let stack_top = (base + STACK_SIZE) & !15;
        // x86-64 thread pointer convention: the word at the thread pointer points to itself.
        let tp = base + STACK_SIZE + TLS_SIZE / 2;
        *(tp as *mut usize) = tp;
        *((tp + 16) as *mut usize) = tp;
        // The thread starts with every signal blocked: it never runs a handler of the
        // program's, and process-directed signals go to the program's threads.
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let flags = (libc::CLONE_VM
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS) as u64;
        let r = clone_thread(flags, stack_top as u64, tp as u64);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
        if r < 0 {
            libc::munmap(stack, STACK_SIZE + TLS_SIZE);
            return Err(());
        }
    }
    Ok(())
}

/// clone(2) whose child starts on `stack_top` in [`thread_main`] (and never returns here).
///
/// # Safety
/// `stack_top` must be the 16-byte aligned top of a stack nothing else uses, `tls` a
/// thread-pointer area likewise.
unsafe fn clone_thread(flags: u64, stack_top: u64, tls: u64) -> i64 {
    let ret: i64;
    core::arch::asm!(
        "syscall",
        "test rax, rax",
        "jnz 2f",
        // The child: a fresh stack, no frame to return to.
        "xor ebp, ebp",
        "call {entry}",
        "ud2",
        "2:",
        entry = sym thread_main,
        inlateout("rax") libc::SYS_clone => ret,
        in("rdi") flags,
        in("rsi") stack_top,
        in("rdx") 0u64,
        in("r10") 0u64,
        in("r8") tls,
        lateout("rcx") _,
        lateout("r11") _,
    );
    ret
}

extern "C" fn thread_main() -> ! {
    // The fd table is a copy of the program's: drop those references at once, or a file the
    // program closes would stay open here (a pipe would never see its end).
    raw::close_range_all();
    // Its own fs context too: this umask is not the program's. The socket is made connectable
    // by anyone (the directory only traversable): who is answered is decided by SO_PEERCRED,
    // and the program itself must still reach it after dropping privileges.
    raw::umask(0);
    CTL_TID.store(raw::gettid(), Relaxed);
    raw::prctl_set_name(b"ckpt-ctl\0");
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
    fn create() -> Option<Endpoint> {
        let c = config();
        let mut dir = Buf::<256>::new();
        dir.push(&c.runtime_dir);
        raw::mkdir(dir.c_str(), 0o755);
        let mut dir = app_path(b"");
        raw::mkdir(dir.c_str(), 0o711);
        let pid = raw::getpid();
        let mut json_path = app_path(b"/");
        json_path.push(APP_FILE.as_bytes());
        // A restored or forked process of an application whose registration is gone (another
        // host, a cleaned runtime directory): register it again.
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
        let mut path = socket_path();
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

pub use creds::follow_credentials;
pub use flush::{program_made_a_thread, PthreadCreate};
