//! SysV IPC, which nix does not cover. Shared memory: read or write a segment through a
//! temporary attach, create one, set its owner. Semaphore sets: read values and last pids,
//! create with values. Message queues: copy messages out without taking them, send, set.

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

/// semctl(GETALL) and GETPID for each: the values of set `id` (`nsems` semaphores) and the
/// pid of the last process that changed each.
pub fn sysv_sem_read(id: i32, nsems: usize) -> io::Result<(Vec<u16>, Vec<i32>)> {
    let mut values = vec![0u16; nsems];
    // SAFETY: GETALL writes nsems values (the set's size, which the caller read) to the array.
    check_int(unsafe { libc::semctl(id, 0, libc::GETALL, values.as_mut_ptr()) })?;
    let pids = (0..nsems)
        // SAFETY: plain syscall; GETPID takes no argument.
        .map(|i| check_int(unsafe { libc::semctl(id, i as i32, libc::GETPID) }))
        .collect::<io::Result<_>>()?;
    Ok((values, pids))
}

/// The kernel's view of semaphore set `id`.
pub fn sysv_sem_stat(id: i32) -> io::Result<libc::semid_ds> {
    // SAFETY: semid_ds is plain data that IPC_STAT fills.
    unsafe {
        let mut ds: libc::semid_ds = std::mem::zeroed();
        check_int(libc::semctl(
            id,
            0,
            libc::IPC_STAT,
            &mut ds as *mut libc::semid_ds,
        ))?;
        Ok(ds)
    }
}

/// semget(key, nsems, IPC_CREAT | IPC_EXCL | mode), then SETALL `values`: a new set.
pub fn sysv_sem_create(key: i32, values: &[u16], mode: u32) -> io::Result<i32> {
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32;
    // SAFETY: plain syscall.
    let id = check_int(unsafe { libc::semget(key, values.len() as i32, flags) })?;
    // SAFETY: SETALL reads nsems values, which is `values.len()`.
    let set = check_int(unsafe { libc::semctl(id, 0, libc::SETALL, values.as_ptr()) });
    if let Err(e) = set {
        let _ = sysv_sem_remove(id);
        return Err(e);
    }
    Ok(id)
}

/// semctl(IPC_SET): owner and mode.
pub fn sysv_sem_set_owner(id: i32, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    let mut ds = sysv_sem_stat(id)?;
    ds.sem_perm.uid = uid;
    ds.sem_perm.gid = gid;
    ds.sem_perm.mode = (mode & 0o777) as _;
    // SAFETY: IPC_SET reads the semid_ds IPC_STAT filled.
    check_int(unsafe { libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds) })
        .map(drop)
}

/// semctl(IPC_RMID).
pub fn sysv_sem_remove(id: i32) -> io::Result<()> {
    // SAFETY: plain syscall; IPC_RMID takes no argument.
    check_int(unsafe { libc::semctl(id, 0, libc::IPC_RMID) }).map(drop)
}

/// The kernel's view of message queue `id`.
pub fn sysv_msg_stat(id: i32) -> io::Result<libc::msqid_ds> {
    // SAFETY: msqid_ds is plain data that IPC_STAT fills.
    unsafe {
        let mut ds: libc::msqid_ds = std::mem::zeroed();
        check_int(libc::msgctl(id, libc::IPC_STAT, &mut ds))?;
        Ok(ds)
    }
}

/// A copy of message `index` (from 0) of queue `id`, left in the queue (MSG_COPY): its type
/// and text. `max` bounds the text.
pub fn sysv_msg_copy(id: i32, index: usize, max: usize) -> io::Result<(i64, Vec<u8>)> {
    // struct msgbuf: a long type, then the text.
    let mut buf = vec![0u8; std::mem::size_of::<libc::c_long>() + max];
    let flags = libc::IPC_NOWAIT | libc::MSG_COPY;
    // SAFETY: the buffer holds the type and `max` bytes of text, which is what msgrcv may
    // write; with MSG_COPY the type argument is the message's index.
    let n = unsafe {
        libc::msgrcv(
            id,
            buf.as_mut_ptr().cast(),
            max,
            index as libc::c_long,
            flags,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let (head, text) = buf.split_at(std::mem::size_of::<libc::c_long>());
    let mtype = libc::c_long::from_ne_bytes(head.try_into().unwrap_or_default());
    Ok((mtype, text[..n as usize].to_vec()))
}

/// msgget(key, IPC_CREAT | IPC_EXCL | mode): a new queue.
pub fn sysv_msg_create(key: i32, mode: u32) -> io::Result<i32> {
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32;
    // SAFETY: plain syscall.
    check_int(unsafe { libc::msgget(key, flags) })
}

/// msgctl(IPC_SET): owner, mode and the queue's byte limit.
pub fn sysv_msg_set(id: i32, (uid, gid, mode): (u32, u32, u32), max_bytes: u64) -> io::Result<()> {
    let mut ds = sysv_msg_stat(id)?;
    ds.msg_perm.uid = uid;
    ds.msg_perm.gid = gid;
    ds.msg_perm.mode = (mode & 0o777) as _;
    ds.msg_qbytes = max_bytes as _;
    // SAFETY: IPC_SET reads the msqid_ds IPC_STAT filled.
    check_int(unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) }).map(drop)
}

/// msgsnd without waiting: appends a message of type `mtype`.
pub fn sysv_msg_send(id: i32, mtype: i64, text: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(std::mem::size_of::<libc::c_long>() + text.len());
    buf.extend_from_slice(&(mtype as libc::c_long).to_ne_bytes());
    buf.extend_from_slice(text);
    // SAFETY: the buffer is a struct msgbuf whose text is `text.len()` bytes.
    check_int(unsafe { libc::msgsnd(id, buf.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) })
        .map(drop)
}

/// msgctl(IPC_RMID).
pub fn sysv_msg_remove(id: i32) -> io::Result<()> {
    // SAFETY: plain syscall; the kernel ignores the buffer for IPC_RMID.
    check_int(unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) }).map(drop)
}
