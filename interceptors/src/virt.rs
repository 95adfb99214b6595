//! Pid/tid virtualization: the libc functions that report or take process and thread ids,
//! interposed so that a restored application keeps seeing the ids it had even where the
//! kernel gave new ones.
//!
//! Each function first checks whether the translation table is in use (one relaxed load); if
//! not it does exactly what libc does. Calls made inside libc (raise, pthread_kill) use
//! glibc's own copy of the tid, which `ckpt restore` rewrites instead. Raw `syscall(2)` calls
//! are not seen.

use crate::control::{pid_arg_to_kernel, CTL};
use crate::raw::{self, Buf};
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use libc::{c_char, c_int, c_uint, c_void, pid_t, size_t};

/// The next definition of `name` (libc's), looked up once.
macro_rules! next {
    ($name:expr, $ty:ty) => {{
        static ADDR: AtomicUsize = AtomicUsize::new(0);
        let mut a = ADDR.load(Relaxed);
        if a == 0 {
            // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT finds libc's definition.
            a = unsafe { libc::dlsym(libc::RTLD_NEXT, concat!($name, "\0").as_ptr().cast()) }
                as usize;
            ADDR.store(a, Relaxed);
        }
        if a == 0 {
            None
        } else {
            // SAFETY: the symbol is libc's function of this exact C signature.
            Some(unsafe { core::mem::transmute::<usize, $ty>(a) })
        }
    }};
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

#[no_mangle]
pub extern "C" fn getpid() -> pid_t {
    CTL.to_virtual(raw::getpid())
}

#[no_mangle]
pub extern "C" fn gettid() -> pid_t {
    CTL.to_virtual(raw::gettid())
}

#[no_mangle]
pub extern "C" fn getppid() -> pid_t {
    CTL.to_virtual(raw::getppid())
}

#[no_mangle]
pub extern "C" fn kill(pid: pid_t, sig: c_int) -> c_int {
    // SAFETY: kill takes no pointers.
    unsafe { libc::syscall(libc::SYS_kill, pid_arg_to_kernel(pid), sig) as c_int }
}

#[no_mangle]
pub extern "C" fn tgkill(tgid: pid_t, tid: pid_t, sig: c_int) -> c_int {
    // SAFETY: tgkill takes no pointers.
    unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            CTL.to_kernel(tgid),
            CTL.to_kernel(tid),
            sig,
        ) as c_int
    }
}

#[no_mangle]
pub unsafe extern "C" fn waitpid(pid: pid_t, status: *mut c_int, options: c_int) -> pid_t {
    let Some(f) = next!(
        "waitpid",
        unsafe extern "C" fn(pid_t, *mut c_int, c_int) -> pid_t
    ) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    let r = f(pid_arg_to_kernel(pid), status, options);
    if r > 0 {
        CTL.to_virtual(r)
    } else {
        r
    }
}

#[no_mangle]
pub unsafe extern "C" fn wait4(
    pid: pid_t,
    status: *mut c_int,
    options: c_int,
    usage: *mut libc::rusage,
) -> pid_t {
    let Some(f) = next!(
        "wait4",
        unsafe extern "C" fn(pid_t, *mut c_int, c_int, *mut libc::rusage) -> pid_t
    ) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    let r = f(pid_arg_to_kernel(pid), status, options, usage);
    if r > 0 {
        CTL.to_virtual(r)
    } else {
        r
    }
}

#[no_mangle]
pub unsafe extern "C" fn wait(status: *mut c_int) -> pid_t {
    waitpid(-1, status, 0)
}

#[no_mangle]
pub unsafe extern "C" fn waitid(
    idtype: libc::idtype_t,
    id: libc::id_t,
    info: *mut libc::siginfo_t,
    options: c_int,
) -> c_int {
    let Some(f) = next!(
        "waitid",
        unsafe extern "C" fn(libc::idtype_t, libc::id_t, *mut libc::siginfo_t, c_int) -> c_int
    ) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    let id = if idtype == libc::P_PID || idtype == libc::P_PGID {
        CTL.to_kernel(id as i32) as libc::id_t
    } else {
        id
    };
    let r = f(idtype, id, info, options);
    if r == 0 && !info.is_null() && CTL.active() {
        // si_pid sits at offset 16 of siginfo_t on x86-64 (after signo, errno, code, padding).
        let pid = (info as *mut u8).add(16) as *mut i32;
        if *pid > 0 {
            *pid = CTL.to_virtual(*pid);
        }
    }
    r
}

/// The sched_* calls: pid 0 means the caller; others are translated.
macro_rules! sched_fn {
    ($name:ident, ($($arg:ident : $ty:ty),*), $ret:ty) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(pid: pid_t $(, $arg: $ty)*) -> $ret {
            let Some(f) = next!(stringify!($name), unsafe extern "C" fn(pid_t $(, $ty)*) -> $ret)
            else {
                set_errno(libc::ENOSYS);
                return -1;
            };
            f(CTL.to_kernel(pid) $(, $arg)*)
        }
    };
}

sched_fn!(sched_setaffinity, (size: size_t, mask: *const libc::cpu_set_t), c_int);
sched_fn!(sched_getaffinity, (size: size_t, mask: *mut libc::cpu_set_t), c_int);
sched_fn!(sched_setscheduler, (policy: c_int, param: *const libc::sched_param), c_int);
sched_fn!(sched_getscheduler, (), c_int);
sched_fn!(sched_setparam, (param: *const libc::sched_param), c_int);
sched_fn!(sched_getparam, (param: *mut libc::sched_param), c_int);
sched_fn!(sched_rr_get_interval, (tp: *mut libc::timespec), c_int);

/// "/proc/VPID/..." (and ".../task/VTID/...") with kernel ids, in `buf`. None if the path needs
/// no change. No allocation: open may be called from a signal handler.
unsafe fn proc_path(path: *const c_char, buf: &mut Buf<512>) -> Option<*const c_char> {
    if path.is_null() || !CTL.active() {
        return None;
    }
    let bytes = core::ffi::CStr::from_ptr(path).to_bytes();
    let rest = bytes.strip_prefix(b"/proc/")?;
    let (pid_part, mut rest) = split_number(rest)?;
    let kernel = CTL.to_kernel(pid_part);
    let mut changed = kernel != pid_part;
    buf.push(b"/proc/").num(i64::from(kernel));
    if let Some(after) = rest.strip_prefix(b"/task/") {
        if let Some((tid, tail)) = split_number(after) {
            let k = CTL.to_kernel(tid);
            changed |= k != tid;
            buf.push(b"/task/").num(i64::from(k));
            rest = tail;
        }
    }
    buf.push(rest);
    if !changed || !buf.fits() {
        return None;
    }
    Some(buf.c_str().as_ptr().cast())
}

/// A leading decimal number ending at '/' or the end.
fn split_number(s: &[u8]) -> Option<(i32, &[u8])> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 9 || (n < s.len() && s[n] != b'/') {
        return None;
    }
    let v = core::str::from_utf8(&s[..n]).ok()?.parse().ok()?;
    Some((v, &s[n..]))
}

// open and openat are variadic in C; on x86-64 a variadic int argument travels in the same
// register as a fixed one, so declaring `mode` as a fixed argument receives it (and passes it
// on unchanged when the caller gave none: libc ignores it then).
macro_rules! open_fn {
    ($name:ident) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
            let Some(f) = next!(
                stringify!($name),
                unsafe extern "C" fn(*const c_char, c_int, c_uint) -> c_int
            ) else {
                set_errno(libc::ENOSYS);
                return -1;
            };
            let mut buf = Buf::<512>::new();
            f(proc_path(path, &mut buf).unwrap_or(path), flags, mode)
        }
    };
}
macro_rules! openat_fn {
    ($name:ident) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dirfd: c_int,
            path: *const c_char,
            flags: c_int,
            mode: c_uint,
        ) -> c_int {
            let Some(f) = next!(
                stringify!($name),
                unsafe extern "C" fn(c_int, *const c_char, c_int, c_uint) -> c_int
            ) else {
                set_errno(libc::ENOSYS);
                return -1;
            };
            let mut buf = Buf::<512>::new();
            f(
                dirfd,
                proc_path(path, &mut buf).unwrap_or(path),
                flags,
                mode,
            )
        }
    };
}
macro_rules! fopen_fn {
    ($name:ident) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, mode: *const c_char) -> *mut c_void {
            let Some(f) = next!(
                stringify!($name),
                unsafe extern "C" fn(*const c_char, *const c_char) -> *mut c_void
            ) else {
                set_errno(libc::ENOSYS);
                return core::ptr::null_mut();
            };
            let mut buf = Buf::<512>::new();
            f(proc_path(path, &mut buf).unwrap_or(path), mode)
        }
    };
}
open_fn!(open);
open_fn!(open64);
openat_fn!(openat);
openat_fn!(openat64);
fopen_fn!(fopen);
fopen_fn!(fopen64);

/// pthread_create: the program's first thread starts this library's flush helper (see
/// `ctl_thread/flush.rs`).
#[no_mangle]
pub unsafe extern "C" fn pthread_create(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    start: extern "C" fn(*mut c_void) -> *mut c_void,
    arg: *mut c_void,
) -> c_int {
    let Some(f) = next!("pthread_create", crate::ctl_thread::PthreadCreate) else {
        return libc::ENOSYS;
    };
    let r = f(thread, attr, start, arg);
    if r == 0 {
        crate::ctl_thread::program_made_a_thread(f);
    }
    r
}

/// The credential calls: after a change, the control thread follows (see
/// `ctl_thread/creds.rs`).
macro_rules! cred_fn {
    ($name:ident, ($($arg:ident : $ty:ty),*)) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> c_int {
            let Some(f) = next!(stringify!($name), unsafe extern "C" fn($($ty),*) -> c_int) else {
                set_errno(libc::ENOSYS);
                return -1;
            };
            let r = f($($arg),*);
            if r == 0 {
                crate::ctl_thread::follow_credentials();
            }
            r
        }
    };
}
cred_fn!(setuid, (uid: libc::uid_t));
cred_fn!(setgid, (gid: libc::gid_t));
cred_fn!(seteuid, (uid: libc::uid_t));
cred_fn!(setegid, (gid: libc::gid_t));
cred_fn!(setreuid, (r: libc::uid_t, e: libc::uid_t));
cred_fn!(setregid, (r: libc::gid_t, e: libc::gid_t));
cred_fn!(setresuid, (r: libc::uid_t, e: libc::uid_t, s: libc::uid_t));
cred_fn!(setresgid, (r: libc::gid_t, e: libc::gid_t, s: libc::gid_t));
cred_fn!(setgroups, (n: size_t, list: *const libc::gid_t));
