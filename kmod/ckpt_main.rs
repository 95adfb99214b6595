// SPDX-License-Identifier: GPL-2.0
//! ckpt: checkpoint/restore of Linux processes. This module registers `/dev/ckpt` (mode 0600:
//! root only; with `group=GID`, root and the members of GID, see `registration.rs`) and serves
//! the ioctls defined in `abi/src/abi.rs`, which user space compiles too. See docs/design.md.

use kernel::{
    fs::File,
    ioctl::{_IOC_SIZE, _IOR, _IOW, _IOWR},
    miscdevice::{MiscDevice, MiscDeviceRegistration},
    prelude::*,
    transmute::{AsBytes, FromBytes},
    uaccess::{UserPtr, UserSlice},
};

// The shared ABI file is `pub` for user space; here only part of it is used.
#[allow(unreachable_pub, dead_code)]
#[path = "../abi/src/abi.rs"]
mod abi;
mod dump_pages;
mod dump_task;
mod helpers;
mod layout;
mod page_copy;
mod query;
mod registration;
mod restore;
mod target;
#[allow(unreachable_pub, dead_code)]
#[path = "../abi/src/xxh64.rs"]
mod xxh64;

use abi::{
    CkptDumpPages, CkptItimers, CkptQuery, CkptRestore, CkptRestoreImage, CkptRestoreRun,
    CkptRestoreVma, CkptTaskState, CkptVersionInfo, CKPT_IOC_DUMP_PAGES, CKPT_IOC_DUMP_TASK,
    CKPT_IOC_ITIMERS, CKPT_IOC_QUERY, CKPT_IOC_RESTORE, CKPT_IOC_VERSION,
};

// SAFETY: `repr(C)` structs of integers with no padding (abi.rs asserts the sizes): every bit
// pattern is valid and every byte is initialised.
unsafe impl FromBytes for CkptQuery {}
// SAFETY: as above.
unsafe impl AsBytes for CkptQuery {}
// SAFETY: as above.
unsafe impl AsBytes for CkptVersionInfo {}
// SAFETY: as above (abi.rs pins the size, which leaves no room for padding).
unsafe impl FromBytes for CkptTaskState {}
// SAFETY: as above.
unsafe impl AsBytes for CkptTaskState {}
// SAFETY: as above.
unsafe impl FromBytes for CkptRestore {}
// SAFETY: as above.
unsafe impl FromBytes for CkptRestoreVma {}
// SAFETY: as above.
unsafe impl FromBytes for CkptRestoreRun {}
// SAFETY: as above.
unsafe impl AsBytes for CkptRestoreRun {}
// SAFETY: as above.
unsafe impl FromBytes for CkptDumpPages {}
// SAFETY: as above (two `i32`/`u32`, size pinned to 8 in abi.rs).
unsafe impl FromBytes for CkptRestoreImage {}
// SAFETY: as above.
unsafe impl AsBytes for CkptDumpPages {}
// SAFETY: as above.
unsafe impl FromBytes for abi::CkptRange {}
// SAFETY: as above (four `i32`/`u32`, size pinned to 16 in abi.rs).
unsafe impl FromBytes for CkptItimers {}
// SAFETY: as above.
unsafe impl AsBytes for CkptItimers {}

// The shared ABI file computes ioctl numbers itself; they must equal the kernel's macros.
const _: () = {
    assert!(CKPT_IOC_VERSION == _IOR::<CkptVersionInfo>(abi::CKPT_IOC_MAGIC, 0x01));
    assert!(CKPT_IOC_QUERY == _IOWR::<CkptQuery>(abi::CKPT_IOC_MAGIC, 0x02));
    assert!(CKPT_IOC_DUMP_TASK == _IOWR::<CkptTaskState>(abi::CKPT_IOC_MAGIC, 0x03));
    assert!(CKPT_IOC_RESTORE == _IOW::<CkptRestore>(abi::CKPT_IOC_MAGIC, 0x04));
    assert!(CKPT_IOC_DUMP_PAGES == _IOWR::<CkptDumpPages>(abi::CKPT_IOC_MAGIC, 0x05));
    assert!(CKPT_IOC_ITIMERS == _IOWR::<CkptItimers>(abi::CKPT_IOC_MAGIC, 0x06));
};

module! {
    type: CkptModule,
    name: "ckpt",
    authors: ["ckpt developers"],
    description: "Checkpoint and restore of Linux processes (/dev/ckpt)",
    license: "GPL",
    params: {
        group: i64 {
            default: -1,
            description: "Group (numeric gid) whose members may open /dev/ckpt; -1: root only",
        },
    },
}

/// The `group` parameter: None (root only), or the gid whose members may open the device.
fn device_group() -> Result<Option<u32>> {
    let gid = *module_parameters::group.value();
    group_from_param(gid).inspect_err(|_| {
        pr_err!("group={gid} is not a gid (0 to 4294967294, or -1 for root only)\n");
    })
}

/// The `group` parameter's value checked: -1 is root only, else it must be a valid gid.
fn group_from_param(gid: i64) -> Result<Option<u32>> {
    match gid {
        -1 => Ok(None),
        // u32::MAX is the kernel's invalid id.
        0..=0xffff_fffe => Ok(Some(gid as u32)),
        _ => Err(EINVAL),
    }
}

#[pin_data]
struct CkptModule {
    #[pin]
    _dev: registration::Registration,
}

impl kernel::InPlaceModule for CkptModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            _dev <- {
                // Refuse to load before anything is registered if bindgen mis-laid a struct.
                layout::check()?;
                registration::Registration::register(device_group()?)
            },
        })
    }
}

/// One open `/dev/ckpt`. It holds no state: every ioctl names its target.
pub(crate) struct CkptDevice;

#[vtable]
impl MiscDevice for CkptDevice {
    type Ptr = ();

    fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<()> {
        // The node is 0666 when a group is configured: the group's rule is applied here, with
        // the opener's credentials (open runs in its context).
        match device_group()? {
            Some(gid) if !helpers::may_open_as_group(gid) => Err(EACCES),
            _ => Ok(()),
        }
    }

    fn ioctl(_device: (), _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        let user = UserSlice::new(UserPtr::from_addr(arg), _IOC_SIZE(cmd));
        match cmd {
            CKPT_IOC_VERSION => {
                let info = abi::ckpt_version_info();
                user.writer().write(&info)?;
            }
            CKPT_IOC_QUERY => {
                let (mut reader, mut writer) = user.reader_writer();
                let mut q: CkptQuery = reader.read()?;
                query::query(&mut q)?;
                writer.write(&q)?;
            }
            CKPT_IOC_DUMP_TASK => {
                let (mut reader, mut writer) = user.reader_writer();
                // About 2.7 KiB: kept off the kernel stack.
                let mut st = KBox::new(reader.read::<CkptTaskState>()?, GFP_KERNEL)?;
                dump_task::dump_task(&mut st)?;
                writer.write(&*st)?;
            }
            CKPT_IOC_RESTORE => {
                let req = KBox::new(user.reader().read::<CkptRestore>()?, GFP_KERNEL)?;
                restore::restore(&req)?;
            }
            CKPT_IOC_DUMP_PAGES => {
                let (mut reader, mut writer) = user.reader_writer();
                let mut req: CkptDumpPages = reader.read()?;
                dump_pages::dump_pages(&mut req)?;
                writer.write(&req)?;
            }
            CKPT_IOC_ITIMERS => {
                let (mut reader, mut writer) = user.reader_writer();
                let mut req: CkptItimers = reader.read()?;
                dump_task::itimers(&mut req)?;
                writer.write(&req)?;
            }
            _ => return Err(ENOTTY),
        }
        Ok(0)
    }

    #[cfg(CONFIG_COMPAT)]
    fn compat_ioctl(device: (), file: &File, cmd: u32, arg: usize) -> Result<isize> {
        // The ABI uses only fixed-size fields laid out alike for 32- and 64-bit callers, and
        // x86-64 compat pointers need no conversion.
        Self::ioctl(device, file, cmd, arg)
    }
}

#[kunit_tests(ckpt_main)]
mod tests {
    use super::*;

    #[test]
    fn group_parameter_is_root_only_or_a_valid_gid() {
        assert_eq!(group_from_param(-1), Ok(None));
        assert_eq!(group_from_param(0), Ok(Some(0)));
        assert_eq!(group_from_param(1000), Ok(Some(1000)));
        assert_eq!(group_from_param(0xffff_fffe), Ok(Some(0xffff_fffe)));
        // u32::MAX is the kernel's invalid id; the rest is not a gid at all.
        for bad in [0xffff_ffff, 1 << 32, -2, i64::MIN, i64::MAX] {
            assert_eq!(group_from_param(bad), Err(EINVAL));
        }
    }
}
