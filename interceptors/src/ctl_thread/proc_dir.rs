//! The numeric entries of a /proc directory (`/proc/self/fd`, `/proc/self/task`), read with
//! getdents64 into a fixed buffer: the control thread has no allocator.

use crate::raw;

/// How many numeric entries the directory `fd` has (not counting `skip`).
pub fn count_numeric_entries(fd: i32, skip: &[i32]) -> usize {
    for_each_number(fd, skip, |_| {})
}

/// Calls `f` for every numeric entry of the directory `fd` (skipping `skip`); returns how many.
pub fn for_each_number(fd: i32, skip: &[i32], mut f: impl FnMut(i32)) -> usize {
    let mut buf = [0u8; 4096];
    let mut count = 0;
    loop {
        let n = raw::getdents64(fd, &mut buf);
        if n <= 0 {
            return count;
        }
        let mut off = 0usize;
        while off + 19 < n as usize {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 {
                return count;
            }
            let name = buf.get(off + 19..off + reclen).unwrap_or_default();
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            let mut v: i64 = 0;
            let numeric =
                !name.is_empty() && name.iter().all(u8::is_ascii_digit) && name.len() < 10;
            if numeric {
                for d in name {
                    v = v * 10 + i64::from(d - b'0');
                }
                if !skip.contains(&(v as i32)) {
                    count += 1;
                    f(v as i32);
                }
            }
            off += reclen;
        }
    }
}
