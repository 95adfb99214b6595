// SPDX-License-Identifier: GPL-2.0
//! `/dev/ckpt`'s misc device registration, with the node mode the module chooses.
//!
//! The Rust misc device API (`MiscDeviceOptions`) sets only a name: its node is 0600, root
//! only. With `group=GID` the node must be usable by GID's members, but a misc device can give
//! its node a mode and no group (the misc class's devnode callback returns only a mode). So
//! the node is made 0666 and `CkptDevice::open` applies the rule a root-owned node of mode 0660
//! and group GID would have (`helpers::may_open_as_group`): root, GID's members and
//! CAP_DAC_OVERRIDE open it, everyone else gets EACCES. An administrator's chmod of the node
//! still restricts it further.
//!
//! `MiscDeviceRegistration::register` cannot take a mode, hence this copy of it. The file
//! operations are the misc device API's own (`MiscDeviceOptions::into_raw`); their open casts
//! the registered `struct miscdevice` to `MiscDeviceRegistration<CkptDevice>`, which is
//! `repr(transparent)` over `Opaque<bindings::miscdevice>` like `Registration` below, and
//! `CkptDevice::open` does not look at it.

use crate::CkptDevice;
use kernel::{
    bindings, error::to_result, miscdevice::MiscDeviceOptions, prelude::*, types::Opaque,
};

/// The node's mode with a group configured (see the module documentation).
const GROUP_MODE: u16 = 0o666;

/// A registered `/dev/ckpt`; deregistered on drop.
///
/// # Invariants
///
/// `inner` holds a `struct miscdevice` registered with `misc_register()`, until drop.
#[repr(transparent)]
#[pin_data(PinnedDrop)]
pub(crate) struct Registration {
    #[pin]
    inner: Opaque<bindings::miscdevice>,
}

// SAFETY: `misc_deregister` may be called from any thread, and `Registration` has no `&self`
// methods (as for `MiscDeviceRegistration`).
unsafe impl Send for Registration {}
// SAFETY: as above.
unsafe impl Sync for Registration {}

impl Registration {
    /// Registers `/dev/ckpt`: mode 0600 (the device model's default), or 0666 with its open
    /// restricted to `group`'s members and root when a group is given.
    pub(crate) fn register(group: Option<u32>) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            inner <- Opaque::try_ffi_init(move |slot: *mut bindings::miscdevice| {
                let mut raw = MiscDeviceOptions { name: c"ckpt" }.into_raw::<CkptDevice>();
                // 0: the device model's default, 0600.
                raw.mode = if group.is_some() { GROUP_MODE } else { 0 };
                // SAFETY: the initializer may write to `slot`.
                unsafe { slot.write(raw) };
                // SAFETY: `slot` holds a valid miscdevice that stays pinned until `drop`
                // deregisters it.
                // INVARIANT: on success `slot` holds a registered misc device.
                to_result(unsafe { bindings::misc_register(slot) })
            }),
        })
    }
}

#[pinned_drop]
impl PinnedDrop for Registration {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: registered, by the type invariant, and deregistered only here.
        unsafe { bindings::misc_deregister(self.inner.get()) };
    }
}
