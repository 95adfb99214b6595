//! userfaultfd(2) ioctls and messages (include/uapi/linux/userfaultfd.h): nix has none of
//! them. Used by the lazy restore's page server (`crate::lazy`), on a userfaultfd that
//! belongs to another process's address space (every ioctl used here acts on the fd's
//! address space, not the caller's).

use super::{check, ioctl_with};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const UFFD_API: u64 = 0xAA;
const UFFDIO: u8 = 0xAA;

pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;

const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_FORK: u8 = 0x13;
const UFFD_EVENT_REMAP: u8 = 0x14;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_EVENT_UNMAP: u8 = 0x16;

const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Range {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: Range,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioZeropage {
    range: Range,
    mode: u64,
    zeropage: i64,
}

fn rw<T>(nr: u8) -> u32 {
    nix::request_code_readwrite!(UFFDIO, nr, std::mem::size_of::<T>()) as u32
}

fn r<T>(nr: u8) -> u32 {
    nix::request_code_read!(UFFDIO, nr, std::mem::size_of::<T>()) as u32
}

/// The flags a restored process's userfaultfd is made with (by an injected userfaultfd(2)):
/// non-blocking, so that the page server polls it.
pub const USERFAULTFD_FLAGS: u64 = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;

/// UFFDIO_API: the handshake, asking for `features` (refused with EINVAL if the kernel
/// lacks one, EPERM for EVENT_FORK without CAP_SYS_PTRACE).
pub fn api(fd: BorrowedFd, features: u64) -> io::Result<()> {
    let mut a = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    ioctl_with(fd.as_raw_fd(), rw::<UffdioApi>(0x3F), &mut a).map(drop)
}

/// UFFDIO_REGISTER in missing mode: from now on a fault on an absent page of
/// `[start, start + len)` waits for us. The range must cover whole mappings (else the
/// kernel splits them) that are private anonymous memory.
pub fn register_missing(fd: BorrowedFd, start: u64, len: u64) -> io::Result<()> {
    let mut reg = UffdioRegister {
        range: Range { start, len },
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    ioctl_with(fd.as_raw_fd(), rw::<UffdioRegister>(0x00), &mut reg).map(drop)
}

/// What UFFDIO_COPY or UFFDIO_ZEROPAGE did when it failed part way: the bytes it placed
/// before the error.
pub struct Partial {
    pub done: u64,
    pub error: io::Error,
}

/// UFFDIO_COPY: places `src` at `dst` of the fd's address space (page aligned, whole pages)
/// and wakes whoever waits there.
pub fn copy(fd: BorrowedFd, dst: u64, src: &[u8]) -> Result<(), Partial> {
    let mut c = UffdioCopy {
        dst,
        src: src.as_ptr() as u64,
        len: src.len() as u64,
        mode: 0,
        copy: 0,
    };
    let r = ioctl_with(fd.as_raw_fd(), rw::<UffdioCopy>(0x03), &mut c);
    r.map(drop).map_err(|error| Partial {
        done: c.copy.max(0) as u64,
        error,
    })
}

/// UFFDIO_ZEROPAGE: maps zeros at `[start, start + len)` and wakes whoever waits there.
pub fn zeropage(fd: BorrowedFd, start: u64, len: u64) -> Result<(), Partial> {
    let mut z = UffdioZeropage {
        range: Range { start, len },
        mode: 0,
        zeropage: 0,
    };
    let r = ioctl_with(fd.as_raw_fd(), rw::<UffdioZeropage>(0x04), &mut z);
    r.map(drop).map_err(|error| Partial {
        done: z.zeropage.max(0) as u64,
        error,
    })
}

/// UFFDIO_WAKE: wakes whoever waits on `[start, start + len)` (its pages are there already).
pub fn wake(fd: BorrowedFd, start: u64, len: u64) -> io::Result<()> {
    let mut range = Range { start, len };
    ioctl_with(fd.as_raw_fd(), r::<Range>(0x02), &mut range).map(drop)
}

/// One message read from a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A thread (or a remote access, such as /proc/PID/mem) waits for the page at `addr`.
    Fault {
        addr: u64,
    },
    /// The process forked: `uffd` (now open in our process) is the child's address space's.
    Fork {
        uffd: i32,
    },
    /// mremap moved `[from, from + len)` to `to`.
    Remap {
        from: u64,
        to: u64,
        len: u64,
    },
    /// MADV_DONTNEED/MADV_REMOVE or munmap dropped `[start, end)`.
    Removed {
        start: u64,
        end: u64,
    },
    Other(u8),
}

/// `struct uffd_msg`: 32 bytes, the event first, its arguments at offset 8.
const MSG_SIZE: usize = 32;

/// Reads the messages waiting on `fd` (non-blocking): empty when none are.
pub fn read_events(fd: BorrowedFd) -> io::Result<Vec<Event>> {
    let mut buf = [0u8; MSG_SIZE * 16];
    // SAFETY: reads into our own buffer of the given length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    match check(n as libc::c_long) {
        Ok(n) => Ok(buf[..n as usize]
            .chunks_exact(MSG_SIZE)
            .map(parse)
            .collect()),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn parse(m: &[u8]) -> Event {
    let word = |i: usize| {
        let at = 8 + 8 * i;
        m.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_ne_bytes)
    };
    match m.first().copied().unwrap_or(0) {
        // pagefault: flags, address, ptid.
        UFFD_EVENT_PAGEFAULT => Event::Fault { addr: word(1) },
        UFFD_EVENT_FORK => Event::Fork {
            uffd: word(0) as u32 as i32,
        },
        UFFD_EVENT_REMAP => Event::Remap {
            from: word(0),
            to: word(1),
            len: word(2),
        },
        UFFD_EVENT_REMOVE | UFFD_EVENT_UNMAP => Event::Removed {
            start: word(0),
            end: word(1),
        },
        other => Event::Other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(event: u8, words: [u64; 3]) -> [u8; MSG_SIZE] {
        let mut m = [0u8; MSG_SIZE];
        m[0] = event;
        for (i, w) in words.iter().enumerate() {
            m[8 + 8 * i..16 + 8 * i].copy_from_slice(&w.to_ne_bytes());
        }
        m
    }

    #[test]
    fn messages_are_read_at_their_offsets() {
        let fault = msg(UFFD_EVENT_PAGEFAULT, [0, 0x7000_1234, 77]);
        assert_eq!(parse(&fault), Event::Fault { addr: 0x7000_1234 });
        let remap = msg(UFFD_EVENT_REMAP, [0x1000, 0x9000, 0x2000]);
        let want = Event::Remap {
            from: 0x1000,
            to: 0x9000,
            len: 0x2000,
        };
        assert_eq!(parse(&remap), want);
        let unmap = msg(UFFD_EVENT_UNMAP, [0x1000, 0x3000, 0]);
        let want = Event::Removed {
            start: 0x1000,
            end: 0x3000,
        };
        assert_eq!(parse(&unmap), want);
        assert_eq!(
            parse(&msg(UFFD_EVENT_FORK, [9, 0, 0])),
            Event::Fork { uffd: 9 }
        );
    }

    #[test]
    fn request_codes_match_the_kernel_headers() {
        // Values of UFFDIO_API, UFFDIO_REGISTER, UFFDIO_COPY, UFFDIO_ZEROPAGE, UFFDIO_WAKE
        // on x86-64, from the C header.
        assert_eq!(rw::<UffdioApi>(0x3F), 0xc018_aa3f);
        assert_eq!(rw::<UffdioRegister>(0x00), 0xc020_aa00);
        assert_eq!(rw::<UffdioCopy>(0x03), 0xc028_aa03);
        assert_eq!(rw::<UffdioZeropage>(0x04), 0xc020_aa04);
        assert_eq!(r::<Range>(0x02), 0x8010_aa02);
    }
}
