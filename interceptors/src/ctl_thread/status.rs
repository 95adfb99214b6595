//! What the rest of the library needs to know about the control thread. Kept apart from the
//! code that sets it so that every part can read it without depending on that code.

use core::sync::atomic::{AtomicBool, AtomicI32};

/// The control thread runs in this process.
pub static RUNNING: AtomicBool = AtomicBool::new(false);

/// The control thread's kernel tid.
pub static CTL_TID: AtomicI32 = AtomicI32::new(0);
