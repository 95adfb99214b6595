//! SysV shared memory, which nix does not cover: read or write a segment through a
//! temporary attach, create one, set its owner.

use super::check_int;
use std::io;

/// A temporary attach of segment `id` (detached on drop).
struct Attached {
    addr: *mut libc::c_void,
}

impl Attached {
    fn new(id: i32, read_only: bool) -> io::Result<Attached> {
        let flags = if read_only { libc::SHM_RDONLY } else { 0 };
        // SAFETY: attaches at an address the kernel picks; nothing of ours is there.
        let addr = unsafe { libc::shmat(id, std::ptr::null(), flags) };
        if addr as isize == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(Attached { addr })
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // SAFETY: detaches what `new` attached; no reference into it outlives `self`.
        unsafe { libc::shmdt(self.addr) };
    }
}

/// The first `len` bytes of segment `id` (its size).
pub fn sysv_shm_read(id: i32, len: usize) -> io::Result<Vec<u8>> {
    let a = Attached::new(id, true)?;
    // SAFETY: the segment is at least `len` bytes (its size) and attached while `a` lives.
    let bytes = unsafe { std::slice::from_raw_parts(a.addr.cast::<u8>(), len) };
    Ok(bytes.to_vec())
}

/// Writes `data` at the start of segment `id` (at least that large).
pub fn sysv_shm_write(id: i32, data: &[u8]) -> io::Result<()> {
    let a = Attached::new(id, false)?;
    // SAFETY: the segment was created with at least `data.len()` bytes and is attached
    // read-write while `a` lives; nobody else knows it yet.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), a.addr.cast::<u8>(), data.len()) };
    Ok(())
}

/// shmget(key, size, IPC_CREAT | IPC_EXCL | mode): a new segment; returns its id.
pub fn sysv_shm_create(key: i32, size: u64, mode: u32) -> io::Result<i32> {
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32;
    // SAFETY: plain syscall.
    check_int(unsafe { libc::shmget(key, size as usize, flags) })
}

/// shmctl(IPC_SET): owner and mode.
pub fn sysv_shm_set_owner(id: i32, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    // SAFETY: shmid_ds is plain data; IPC_STAT fills it, IPC_SET reads it.
    unsafe {
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        check_int(libc::shmctl(id, libc::IPC_STAT, &mut ds))?;
        ds.shm_perm.uid = uid;
        ds.shm_perm.gid = gid;
        ds.shm_perm.mode = (mode & 0o777) as _;
        check_int(libc::shmctl(id, libc::IPC_SET, &mut ds)).map(drop)
    }
}

/// shmctl(IPC_RMID).
pub fn sysv_shm_remove(id: i32) -> io::Result<()> {
    // SAFETY: plain syscall; the kernel ignores the buffer for IPC_RMID.
    check_int(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) }).map(drop)
}
