// SPDX-License-Identifier: GPL-2.0
//! `CKPT_IOC_QUERY`: thread count, VMA walk and a read of the target's memory.

use crate::abi::{CkptQuery, CKPT_QUERY_MAX_READ};
use crate::helpers;
use crate::target::Target;
use kernel::{
    alloc::KVVec,
    prelude::*,
    uaccess::{UserPtr, UserSlice},
};

/// Validates `q`'s inputs, fills its outputs and copies the bytes read to `q.read_buf`.
pub(crate) fn query(q: &mut CkptQuery) -> Result {
    let read_len = check_request(q)?;
    let target = Target::lookup(q.pid)?;
    // Held until the read is done: `access_process_vm()` takes the task's mm anew, and
    // without the lock an exec after the check would have it read the new image (say an
    // execute-only or setuid program the caller may not read) under the old one's check.
    let access = target.access()?;
    let mm = access.mm();

    q.thread_count = helpers::nr_threads(target.task());

    let (mut count, mut bytes) = (0u32, 0u64);
    {
        let lock = mm.mmap_read_lock();
        let mut addr = 0usize;
        while let Some(vma) = helpers::find_vma(mm, &lock, addr) {
            count = count.saturating_add(1);
            let (start, end) = (vma.start(), vma.end());
            bytes = bytes.saturating_add(end.saturating_sub(start) as u64);
            if end <= addr {
                // A VMA ending at or below where we searched would loop forever; the tree
                // never yields one, but never trust that in a loop in the kernel.
                return Err(EIO);
            }
            addr = end;
        }
    }
    q.vma_count = count;
    q.mapped_bytes = bytes;

    q.bytes_read = 0;
    if read_len == 0 {
        return Ok(());
    }
    let mut buf = KVVec::from_elem(0u8, read_len, GFP_KERNEL)?;
    // Under the lock the task's mm is the one checked (or none, once it exits: 0 bytes).
    let n = helpers::access_process_vm(target.task(), q.read_addr, &mut buf)?;
    // Released before the copy out: a fault on the caller's memory must not hold up the
    // target's exec.
    drop(access);
    if n == 0 {
        // Nothing is mapped readable at that address.
        return Err(EIO);
    }
    let data = buf.get(..n).ok_or(EIO)?;
    let dest = UserPtr::from_addr(usize::try_from(q.read_buf).map_err(|_| EFAULT)?);
    UserSlice::new(dest, n).writer().write_slice(data)?;
    q.bytes_read = n as u64;
    Ok(())
}

/// The request's flags are zero and its read length in bounds (EINVAL otherwise); returns
/// that length.
fn check_request(q: &CkptQuery) -> Result<usize> {
    if q.flags != 0 || q.read_len > CKPT_QUERY_MAX_READ {
        return Err(EINVAL);
    }
    usize::try_from(q.read_len).map_err(|_| EINVAL)
}

#[kunit_tests(ckpt_query)]
mod tests {
    use super::*;

    #[test]
    fn query_flags_and_read_length_are_checked() {
        let ok = CkptQuery::default();
        assert_eq!(check_request(&ok), Ok(0));
        let most = CkptQuery {
            read_len: CKPT_QUERY_MAX_READ,
            ..ok
        };
        assert_eq!(check_request(&most), Ok(CKPT_QUERY_MAX_READ as usize));
        assert_eq!(check_request(&CkptQuery { flags: 1, ..ok }), Err(EINVAL));
        let too_long = CkptQuery {
            read_len: CKPT_QUERY_MAX_READ + 1,
            ..ok
        };
        assert_eq!(check_request(&too_long), Err(EINVAL));
        assert_eq!(
            check_request(&CkptQuery {
                read_len: u64::MAX,
                ..ok
            }),
            Err(EINVAL)
        );
    }
}
