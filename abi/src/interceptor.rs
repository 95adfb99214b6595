//! What `ckpt` and the preloaded interceptor library (`interceptors/`) share: the control
//! socket's protocol and the layout of the control block the library keeps in the
//! application's memory.
//!
//! The control block holds the pid/tid translation table (the ids the application believes in
//! against the kernel's). `ckpt restore` writes it directly into the restored process's memory
//! while every thread is still stopped, so no application thread ever runs with stale ids.

/// First word of the control block ("CKPTCTL1" little-endian): `ckpt restore` checks it before
/// writing anything.
pub const CTL_MAGIC: u64 = u64::from_le_bytes(*b"CKPTCTL1");
/// Capacity of the translation table.
pub const CTL_MAX_PAIRS: usize = 1024;

/// The control block as raw data. The library's own definition (with atomics) is pinned to
/// these offsets by const assertions; `ckpt restore` writes at them.
#[repr(C)]
pub struct CtlBlockLayout {
    pub magic: u64,
    /// Bumped by every restore.
    pub generation: u64,
    /// Non-zero when the table is in use (some id differs from the kernel's).
    pub active: u32,
    /// Number of valid entries in `pairs`.
    pub count: u32,
    /// (virtual id, kernel id) pairs.
    pub pairs: [[i32; 2]; CTL_MAX_PAIRS],
}

pub const CTL_OFF_MAGIC: usize = core::mem::offset_of!(CtlBlockLayout, magic);
pub const CTL_OFF_GENERATION: usize = core::mem::offset_of!(CtlBlockLayout, generation);
pub const CTL_OFF_ACTIVE: usize = core::mem::offset_of!(CtlBlockLayout, active);
pub const CTL_OFF_COUNT: usize = core::mem::offset_of!(CtlBlockLayout, count);
pub const CTL_OFF_PAIRS: usize = core::mem::offset_of!(CtlBlockLayout, pairs);
pub const CTL_SIZE: usize = core::mem::size_of::<CtlBlockLayout>();

const _: () = assert!(CTL_OFF_GENERATION == 8);
const _: () = assert!(CTL_OFF_ACTIVE == 16);
const _: () = assert!(CTL_OFF_COUNT == 20);
const _: () = assert!(CTL_OFF_PAIRS == 24);
const _: () = assert!(CTL_SIZE == 24 + 8 * CTL_MAX_PAIRS);

/// Environment variables `ckpt run` sets for the application (inherited by its children).
pub const ENV_APP_ID: &str = "CKPT_APP_ID";
pub const ENV_RUNTIME_DIR: &str = "CKPT_RUNTIME_DIR";

/// The control socket of process `pid` of application `app` is `RUNTIME_DIR/app/PID.sock`;
/// the application's registration is `RUNTIME_DIR/app/app.json`.
pub const SOCKET_SUFFIX: &str = ".sock";
pub const APP_FILE: &str = "app.json";

// The protocol: one request line, one answer line.
//   "INFO\n"    -> "INFO pid=<kernel pid> vpid=<virtual pid> generation=<n>\n"
//   "PREPARE\n" -> the library flushes stdio (or says how ckpt can) and fdatasyncs every regular
//                  file open for writing, then answers
//                  "READY ctl=<hex addr of the control block> tidoff=<offset of the tid in
//                   glibc's struct pthread, or -1> ctltid=<control thread's tid>
//                   fsynced=<n> stdio=done|infcall|skipped|timeout flush=<hex addr of the
//                   trampoline> ctx=<hex addr of its context block> map=<v:k,...>\n"
//                  and waits for "DONE\n" (or end of file) before it serves anyone else. ckpt
//                  freezes and dumps the process in between.
//   "CREDS <tid>\n" (from the program itself only) -> the control thread takes the
//                  credentials of thread <tid>; answers "OK\n" or "ERROR\n".
pub const REQ_INFO: &str = "INFO";
pub const REQ_PREPARE: &str = "PREPARE";
pub const REQ_DONE: &str = "DONE";

/// `ckpt_interceptor_flush` signals that fflush is done with a getpid system call (allowed by
/// every seccomp filter) whose second argument register (rsi) holds this value; ckpt stops it
/// there. Unstopped, the trampoline puts the thread back itself (see `FLUSH_CTX_*`).
pub const FLUSH_DONE_MAGIC: u64 = 0xc4c4_c4c4_c4c4;

/// The context the trampoline returns to if ckpt does not take the thread back itself: 18
/// words at the address READY gives as `ctx=`, in this order.
pub const FLUSH_CTX_REGS: [&str; 18] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
    "r15", "eflags", "rsp", "rip",
];
