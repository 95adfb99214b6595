//! `ckpt_interceptor_flush`, the stdio flush of a single-threaded program: ckpt calls it in
//! the frozen main thread (see `userspace/ckpt/src/flush.rs`). READY gives its address
//! (`flush=`) and its context block's (`ctx=`).

// The single-threaded flush: ckpt makes the frozen main thread run `ckpt_interceptor_flush`
// (through ptrace) when it stopped at a safe point. The trampoline saves the FPU/SSE/AVX state
// itself (XSAVE), calls fflush(NULL), signals the end with the marker getpid, then restores
// the XSAVE state and the general registers ckpt left in `ckpt_flush_context` and jumps back
// to where the thread was. ckpt normally takes the thread back at the marker; if ckpt dies or
// gives up first, the thread still returns to its own code by itself.
core::arch::global_asm!(
    ".pushsection .bss.ckpt_flush,\"aw\",@nobits",
    ".balign 64",
    "ckpt_flush_xsave_area: .zero 16384",
    ".globl ckpt_flush_context",
    ".hidden ckpt_flush_context",
    "ckpt_flush_context: .zero 144",
    ".popsection",
    ".pushsection .text.ckpt_flush,\"ax\",@progbits",
    ".globl ckpt_interceptor_flush",
    ".type ckpt_interceptor_flush,@function",
    "ckpt_interceptor_flush:",
    "and rsp, -64",
    "mov eax, -1",
    "mov edx, -1",
    "xsave [rip + ckpt_flush_xsave_area]",
    // The thread may have been stopped with the direction flag set; the ABI wants it clear.
    "cld",
    "call {flush}",
    "mov rdi, rax",
    "movabs rsi, {magic}",
    "mov eax, 39",
    "syscall",
    "mov eax, -1",
    "mov edx, -1",
    "xrstor [rip + ckpt_flush_xsave_area]",
    "lea rax, [rip + ckpt_flush_context]",
    "push qword ptr [rax + 120]",
    "popfq",
    "mov rbx, [rax + 8]",
    "mov rcx, [rax + 16]",
    "mov rdx, [rax + 24]",
    "mov rsi, [rax + 32]",
    "mov rdi, [rax + 40]",
    "mov rbp, [rax + 48]",
    "mov r8, [rax + 56]",
    "mov r9, [rax + 64]",
    "mov r10, [rax + 72]",
    "mov r11, [rax + 80]",
    "mov r12, [rax + 88]",
    "mov r13, [rax + 96]",
    "mov r14, [rax + 104]",
    "mov r15, [rax + 112]",
    "mov rsp, [rax + 128]",
    "mov rax, [rax]",
    "jmp qword ptr [rip + ckpt_flush_context + 136]",
    ".size ckpt_interceptor_flush, . - ckpt_interceptor_flush",
    ".popsection",
    flush = sym flush_all_streams,
    magic = const ckpt_abi::interceptor::FLUSH_DONE_MAGIC,
);

extern "C" {
    fn ckpt_interceptor_flush();
    static ckpt_flush_context: [u64; 18];
}

extern "C" fn flush_all_streams() -> i64 {
    // SAFETY: fflush(NULL) flushes every stdio stream.
    i64::from(unsafe { libc::fflush(core::ptr::null_mut()) })
}

/// Where ckpt points the thread (`flush=` in READY).
pub fn entry_address() -> u64 {
    ckpt_interceptor_flush as *const () as u64
}

/// Where ckpt leaves the registers the trampoline returns with (`ctx=` in READY).
pub fn context_address() -> u64 {
    core::ptr::addr_of!(ckpt_flush_context) as u64
}
