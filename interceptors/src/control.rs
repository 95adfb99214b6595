//! The control block: the pid/tid translation table, at a fixed layout (`ckpt_abi::interceptor`)
//! so that `ckpt restore` can fill it in a stopped process.
//!
//! Ids are "virtual" (what the application saw when it was checkpointed, and keeps seeing) or
//! "kernel" (what the kernel calls the same task now). Until a restore changes an id, the table
//! is inactive and every translation is the identity after one relaxed load.

use ckpt_abi::interceptor::{
    CTL_MAGIC, CTL_MAX_PAIRS, CTL_OFF_ACTIVE, CTL_OFF_COUNT, CTL_OFF_GENERATION, CTL_OFF_PAIRS,
    CTL_SIZE,
};
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::Relaxed};

#[repr(C)]
pub struct CtlBlock {
    /// Read by `ckpt restore` (through the process's memory), never here.
    #[allow(dead_code)]
    magic: AtomicU64,
    pub generation: AtomicU64,
    active: AtomicU32,
    count: AtomicU32,
    pairs: [[AtomicI32; 2]; CTL_MAX_PAIRS],
}

const _: () = assert!(core::mem::offset_of!(CtlBlock, generation) == CTL_OFF_GENERATION);
const _: () = assert!(core::mem::offset_of!(CtlBlock, active) == CTL_OFF_ACTIVE);
const _: () = assert!(core::mem::offset_of!(CtlBlock, count) == CTL_OFF_COUNT);
const _: () = assert!(core::mem::offset_of!(CtlBlock, pairs) == CTL_OFF_PAIRS);
const _: () = assert!(core::mem::size_of::<CtlBlock>() == CTL_SIZE);

#[allow(clippy::declare_interior_mutable_const)]
const ZERO_PAIR: [AtomicI32; 2] = [AtomicI32::new(0), AtomicI32::new(0)];

pub static CTL: CtlBlock = CtlBlock {
    magic: AtomicU64::new(CTL_MAGIC),
    generation: AtomicU64::new(0),
    active: AtomicU32::new(0),
    count: AtomicU32::new(0),
    pairs: [ZERO_PAIR; CTL_MAX_PAIRS],
};

impl CtlBlock {
    pub fn address(&self) -> usize {
        self as *const CtlBlock as usize
    }

    #[inline(always)]
    pub fn active(&self) -> bool {
        self.active.load(Relaxed) != 0
    }

    fn entries(&self) -> impl Iterator<Item = (i32, i32)> + '_ {
        let n = (self.count.load(Relaxed) as usize).min(CTL_MAX_PAIRS);
        self.pairs[..n]
            .iter()
            .map(|p| (p[0].load(Relaxed), p[1].load(Relaxed)))
    }

    /// The kernel's id for a virtual one (itself if not in the table).
    pub fn to_kernel(&self, virt: i32) -> i32 {
        if !self.active() {
            return virt;
        }
        self.entries()
            .find(|&(v, _)| v == virt)
            .map_or(virt, |(_, k)| k)
    }

    /// The virtual id for a kernel one (itself if not in the table).
    #[inline(always)]
    pub fn to_virtual(&self, kernel: i32) -> i32 {
        if !self.active() {
            return kernel;
        }
        self.to_virtual_slow(kernel)
    }

    #[inline(never)]
    fn to_virtual_slow(&self, kernel: i32) -> i32 {
        self.entries()
            .find(|&(_, k)| k == kernel)
            .map_or(kernel, |(v, _)| v)
    }

    /// The table as "v:k,v:k" for the READY answer (empty when inactive).
    pub fn describe<const N: usize>(&self, out: &mut crate::raw::Buf<N>) {
        if !self.active() {
            return;
        }
        for (i, (v, k)) in self.entries().enumerate() {
            if i > 0 {
                out.push(b",");
            }
            out.num(i64::from(v)).push(b":").num(i64::from(k));
        }
    }
}

/// A pid argument of kill/waitpid: positive is a process, below -1 a process group.
pub fn pid_arg_to_kernel(pid: i32) -> i32 {
    match pid {
        p if p > 0 => CTL.to_kernel(p),
        p if p < -1 => -CTL.to_kernel(-p),
        p => p,
    }
}
