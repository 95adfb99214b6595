//! The checkpoint image: one file holding everything needed to restore a process tree.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! 0      header (HEADER_LEN bytes, zero-padded to PAGE): magic, format version, arch,
//!        kernel release, manifest offset/length/checksum, file length, header checksum
//! PAGE   sections: page data (4096-aligned, so a restore can map it), small binary blobs
//! ...    the manifest: serde_json of [`Manifest`], which lists the sections with a checksum each
//! ```
//!
//! Checksums are XXH3-64 (xxhash-rust): CRC32C was 4x slower under the test guest's emulated
//! CPU, where checksumming dominated checkpoint and restore times.
//!
//! ```text
//! ```
//!
//! Every byte is covered: the header by its own checksum, the manifest by the header's, each
//! section by the manifest's, and the gaps between sections must be zero. [`Image::open`]
//! verifies all of it before anyone acts on the image. Files are written under a temporary
//! name, fsynced and renamed ([`ImageWriter`]), so a final name never holds a partial image.
//!
//! Extending: new data goes into new optional manifest fields or new section kinds; a reader
//! refuses any other `FORMAT_VERSION`, naming both (like Firecracker's versioned state).

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

pub const MAGIC: [u8; 8] = *b"CKPTIMG\0";
pub const FORMAT_VERSION: u32 = 1;
pub const PAGE: u64 = 4096;
const HEADER_LEN: usize = 136;
/// The manifest is JSON metadata; anything larger than this is not a ckpt image.
const MAX_MANIFEST: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a ckpt image (bad magic)")]
    Magic { path: PathBuf },
    #[error(
        "{path} has image format version {found}; this ckpt reads version {FORMAT_VERSION} only"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("{path} is an image for {found}, this machine is {expected}")]
    Arch {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    #[error("{path} is truncated or extended: {actual} bytes, the header says {expected}")]
    Length {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    #[error("{path} is corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
}

fn corrupt(path: &Path, what: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        path: path.into(),
        what: what.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// The manifest schema. Field names are the format: renaming one is a format change.

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub ckpt_version: String,
    pub arch: String,
    pub kernel_release: String,
    pub created_unix_ms: u64,
    pub sections: Vec<Section>,
    pub processes: Vec<Process>,
    #[serde(default)]
    pub stats: Option<Stats>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SectionKind {
    /// Memory pages, 4096-aligned.
    Pages,
    /// A thread's FPU/SSE/AVX state in the portable XSAVE layout (PTRACE_GETREGSET
    /// NT_X86_XSTATE).
    Xstate,
    /// Bytes that were in a pipe, unread.
    PipeData,
    /// The content of an open file that had been deleted.
    FileData,
    /// Bytes queued in a socket, unread.
    SocketData,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Section {
    pub kind: SectionKind,
    pub offset: u64,
    pub len: u64,
    pub xxh3: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    pub exe: String,
    pub cwd: String,
    pub umask: u32,
    pub personality: u32,
    pub rlimits: Vec<Rlimit>,
    pub mm: MmLayout,
    pub vmas: Vec<Vma>,
    /// Signals whose disposition is not the default.
    pub sigactions: Vec<SigAction>,
    pub fds: Vec<Fd>,
    pub threads: Vec<Thread>,
    /// Signals pending for the whole process (a mask, bit n-1 for signal n).
    #[serde(default)]
    pub shared_pending: u64,
    /// Pipes with both ends in the process.
    #[serde(default)]
    pub pipes: Vec<Pipe>,
    /// UNIX stream socket pairs with both ends in the process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub socket_pairs: Vec<SocketPair>,
    /// Present when the process ran under `ckpt run`: where its interceptor keeps its state.
    /// `pid`, `ppid` and the threads' `tid` are then the ids the application sees (virtual),
    /// which may differ from the kernel's after an earlier restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interceptor: Option<InterceptorState>,
    /// Whether the process was dumpable (PR_GET_DUMPABLE), as far as /proc shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dumpable: Option<bool>,
}

/// A thread's credentials, from /proc/PID/task/TID/status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Creds {
    /// Real, effective, saved and filesystem uid.
    pub uid: [u32; 4],
    /// Real, effective, saved and filesystem gid.
    pub gid: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    pub no_new_privs: bool,
}

/// The kernel's limit on supplementary groups (NGROUPS_MAX).
pub const MAX_GROUPS: usize = 65536;

/// The interceptor library's state in a process checkpointed through it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InterceptorState {
    /// The application id `ckpt run` gave it.
    pub app_id: String,
    /// Address of the control block (pid/tid translation table) in the process's memory.
    pub ctl_addr: u64,
    /// Offset of the tid in glibc's thread descriptor (at each thread's fs base), if known:
    /// rewritten on restore when a thread gets another kernel tid.
    pub tid_offset: Option<u64>,
    /// Regular files the library fdatasync'ed before the snapshot.
    pub fsynced_files: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: u32,
    pub cur: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct MmLayout {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: Vec<u64>,
}

/// Conversions between the image's mm layout and the ioctl ABI's, with the field list once.
macro_rules! mm_layout_conversions {
    ($($field:ident),* $(,)?) => {
        impl From<&ckpt_abi::CkptMmLayout> for MmLayout {
            fn from(m: &ckpt_abi::CkptMmLayout) -> Self {
                MmLayout { $($field: m.$field,)* auxv: m.auxv.to_vec() }
            }
        }

        impl MmLayout {
            /// The ABI form; auxv words beyond the ABI's room are dropped (the kernel keeps
            /// fewer).
            pub fn to_abi(&self) -> ckpt_abi::CkptMmLayout {
                let mut auxv = [0u64; ckpt_abi::CKPT_AUXV_WORDS];
                for (d, s) in auxv.iter_mut().zip(&self.auxv) {
                    *d = *s;
                }
                ckpt_abi::CkptMmLayout { $($field: self.$field,)* auxv }
            }
        }
    };
}
mm_layout_conversions!(
    start_code,
    end_code,
    start_data,
    end_data,
    start_brk,
    brk,
    start_stack,
    arg_start,
    arg_end,
    env_start,
    env_end,
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_READ | PROT_WRITE | PROT_EXEC.
    pub prot: u32,
    pub shared: bool,
    pub growsdown: bool,
    pub backing: Backing,
    /// Saved page contents, sorted by address.
    pub pages: Vec<PageRun>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Backing {
    Anonymous,
    /// A file mapping: clean pages come from the file, so the file must be there on restore.
    File {
        path: String,
        offset: u64,
        dev: String,
        inode: u64,
    },
    /// A kernel-provided mapping ([vdso], [vvar], [vvar_vclock], [vsyscall]): never saved; the
    /// restorer moves its own to the same place.
    Special {
        name: String,
    },
}

/// `len` bytes of memory at `addr`, stored at `offset` of the image (inside a pages section).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PageRun {
    pub addr: u64,
    pub len: u64,
    pub offset: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SigAction {
    pub signo: u32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fd {
    pub fd: i32,
    /// open(2) flags as /proc/PID/fdinfo shows them.
    pub flags: u32,
    pub kind: FdKind,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum FdKind {
    /// A regular file or a device node, reopened by path.
    Path { path: String, pos: u64 },
    /// Standard input/output/error connected outside the process (a terminal, a pipe to
    /// another program, a socket): on restore, connected to `ckpt restore`'s own.
    InheritStdio { was: String },
    /// One end of a pipe whose both ends the process holds; `pipe` indexes `Process::pipes`.
    Pipe { pipe: usize, write_end: bool },
    /// A listening socket (TCP, TCP over IPv6, or UNIX stream), bound again to its address.
    Listen {
        /// AF_INET, AF_INET6 or AF_UNIX.
        family: i32,
        /// The socket's local address (a `struct sockaddr_*`, as getsockname gives it).
        addr: Vec<u8>,
        /// The address for humans.
        display: String,
        backlog: i32,
        reuse_addr: bool,
        reuse_port: bool,
        /// IPV6_V6ONLY (AF_INET6 only).
        v6_only: bool,
    },
    /// An eventfd with its counter.
    EventFd { count: u64, semaphore: bool },
    /// A signalfd with the signals it takes (a mask, bit n-1 for signal n).
    SignalFd { mask: u64 },
    /// A timerfd: its clock, the time left until it fires and its interval (nanoseconds),
    /// and expirations not read yet.
    TimerFd {
        clockid: i32,
        value_ns: u64,
        interval_ns: u64,
        ticks: u64,
    },
    /// An epoll instance and what it watches (fds of the same process, added again on
    /// restore once every other fd exists).
    Epoll { watches: Vec<EpollWatch> },
    /// One end of a connected pair of UNIX stream sockets whose both ends the process holds
    /// (socketpair(2)); `pair` indexes `Process::socket_pairs`, `end` is 0 or 1.
    SocketPairEnd { pair: usize, end: usize },
    /// A file that was deleted while open: recreated (unlinked again) from the saved content.
    Deleted {
        path: String,
        pos: u64,
        mode: u32,
        data_section: usize,
    },
}

/// One file an epoll instance watches: its fd number, the event mask (with EPOLLET,
/// EPOLLONESHOT... as the kernel keeps them) and the user data.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct EpollWatch {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
}

/// A socket pair inside the process, with what was queued at each end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SocketPair {
    /// The two sockets' inode numbers when checkpointed (for humans).
    pub inodes: [u64; 2],
    /// Per end, the `SocketData` section with the bytes waiting to be read there, if any.
    pub data_sections: [Option<usize>; 2],
}

/// A pipe inside the process, with what was in it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pipe {
    /// The pipe's inode number when checkpointed (for humans).
    pub inode: u64,
    /// Its capacity (F_GETPIPE_SZ).
    pub capacity: u32,
    /// Index of the `PipeData` section with the unread bytes, if any.
    pub data_section: Option<usize>,
}

/// The x86-64 general registers (`struct user_regs_struct`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Thread {
    pub tid: i32,
    pub regs: Regs,
    /// Index into `Manifest::sections` of this thread's XSAVE blob.
    pub xstate_section: usize,
    pub sigmask: u64,
    pub sigaltstack: SigAltStack,
    pub clear_child_tid: u64,
    pub robust_list: RobustList,
    pub rseq: Option<Rseq>,
    /// Signals pending for this thread only (a mask, bit n-1 for signal n).
    #[serde(default)]
    pub pending: u64,
    /// The thread's name (/proc/PID/task/TID/comm).
    #[serde(default)]
    pub comm: String,
    /// The kernel's tid when checkpointed, if it differed from `tid` (a thread of a restored
    /// process that could not get its original tid back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_tid: Option<i32>,
    /// The thread's credentials (absent in images of older versions: then the restored
    /// thread keeps the restorer's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds: Option<Creds>,
    /// The thread has its own fd table and fs context (created without CLONE_FILES and
    /// CLONE_FS, like the interceptor's control thread); restored with an empty fd table.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub own_files: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SigAltStack {
    pub sp: u64,
    pub size: u64,
    pub flags: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RobustList {
    pub head: u64,
    pub len: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub sig: u32,
}

/// Figures like CRIU's `--display-stats`, recorded by the checkpoint.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Stats {
    pub frozen_us: u64,
    pub memdump_us: u64,
    pub total_us: u64,
    pub pages_scanned: u64,
    pub pages_skipped_zero: u64,
    pub pages_written: u64,
    pub image_bytes: u64,
    /// Taken through the interceptor library (flushed, ids virtual) rather than the plain path.
    #[serde(default)]
    pub interceptor: bool,
    /// Time the interceptor took to flush, before the freeze.
    #[serde(default)]
    pub flush_us: u64,
    /// The program's stdio buffers were flushed before the snapshot.
    #[serde(default)]
    pub stdio_flushed: bool,
}

// ---------------------------------------------------------------------------------------------
// Header

struct Header {
    version: u32,
    arch: String,
    kernel_release: String,
    manifest_offset: u64,
    manifest_len: u64,
    file_len: u64,
    manifest_sum: u64,
}

fn put_str(buf: &mut [u8], s: &str) {
    let n = s.len().min(buf.len() - 1);
    buf[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn get_str(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        put_str(&mut b[16..32], &self.arch);
        put_str(&mut b[32..96], &self.kernel_release);
        b[96..104].copy_from_slice(&self.manifest_offset.to_le_bytes());
        b[104..112].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[112..120].copy_from_slice(&self.file_len.to_le_bytes());
        b[120..128].copy_from_slice(&self.manifest_sum.to_le_bytes());
        let sum = xxh3_64(&b[..128]);
        b[128..136].copy_from_slice(&sum.to_le_bytes());
        b
    }

    fn decode(path: &Path, b: &[u8; HEADER_LEN]) -> Result<Self, ImageError> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        if b[0..8] != MAGIC {
            return Err(ImageError::Magic { path: path.into() });
        }
        // The version comes before the checksum test, so an image of another version gets a
        // message naming both versions rather than "corrupt".
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(ImageError::Version {
                path: path.into(),
                found: version,
            });
        }
        if xxh3_64(&b[..128]) != u64_at(128) {
            return Err(corrupt(path, "header checksum mismatch"));
        }
        if u32_at(12) as usize != HEADER_LEN {
            return Err(corrupt(path, "unexpected header length"));
        }
        Ok(Header {
            version,
            arch: get_str(&b[16..32]),
            kernel_release: get_str(&b[32..96]),
            manifest_offset: u64_at(96),
            manifest_len: u64_at(104),
            file_len: u64_at(112),
            manifest_sum: u64_at(120),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Writes an image under a temporary name in the destination directory; [`finish`] makes it
/// durable and gives it its name. Dropped unfinished, it removes the temporary file.
///
/// [`finish`]: ImageWriter::finish
pub struct ImageWriter {
    file: File,
    tmp: PathBuf,
    dest: PathBuf,
    pos: u64,
    sections: Vec<Section>,
    /// The pages section being appended to: (index in `sections`, running checksum).
    open_pages: Option<(usize, Box<Xxh3>)>,
    /// Sections written by someone else (the kernel module): their checksum is computed at
    /// `finish`, by reading them back.
    unchecked: Vec<usize>,
    done: bool,
}

impl ImageWriter {
    pub fn create(dest: &Path) -> io::Result<Self> {
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = dest
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let tmp = dir.join(format!(
            ".{}.ckpt-tmp.{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&tmp)?;
        let mut w = ImageWriter {
            file,
            tmp,
            dest: dest.into(),
            pos: 0,
            sections: Vec::new(),
            open_pages: None,
            unchecked: Vec::new(),
            done: false,
        };
        w.write_all(&[0u8; PAGE as usize])?; // header placeholder
        Ok(w)
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.pos += data.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, align: u64) -> io::Result<()> {
        let pad = (align - self.pos % align) % align;
        if pad > 0 {
            self.write_all(&vec![0u8; pad as usize])?;
        }
        Ok(())
    }

    /// Appends page data (a multiple of 4096 bytes) to the current pages section, opening one
    /// if needed. Returns the file offset the data landed at.
    pub fn append_pages(&mut self, data: &[u8]) -> io::Result<u64> {
        assert_eq!(data.len() as u64 % PAGE, 0, "page data must be whole pages");
        if self.open_pages.is_none() {
            self.pad_to(PAGE)?;
            self.sections.push(Section {
                kind: SectionKind::Pages,
                offset: self.pos,
                len: 0,
                xxh3: 0,
            });
            self.open_pages = Some((self.sections.len() - 1, Box::new(Xxh3::new())));
        }
        let offset = self.pos;
        self.write_all(data)?;
        let (idx, sum) = self.open_pages.as_mut().unwrap();
        sum.update(data);
        self.sections[*idx].len += data.len() as u64;
        self.sections[*idx].xxh3 = sum.digest();
        Ok(offset)
    }

    /// Where pages written into the file by someone else must start (page-aligned); call
    /// [`ImageWriter::external_pages_written`] after they are.
    pub fn external_pages_offset(&mut self) -> io::Result<u64> {
        self.open_pages = None;
        self.pad_to(PAGE)?;
        Ok(self.pos)
    }

    /// Records `len` bytes of pages written by someone else at the offset
    /// `external_pages_offset` returned, as a new pages section.
    pub fn external_pages_written(&mut self, len: u64) -> io::Result<()> {
        assert_eq!(len % PAGE, 0);
        if len == 0 {
            return Ok(());
        }
        self.sections.push(Section {
            kind: SectionKind::Pages,
            offset: self.pos,
            len,
            xxh3: 0,
        });
        self.unchecked.push(self.sections.len() - 1);
        self.pos += len;
        self.file.seek(SeekFrom::Start(self.pos))?;
        Ok(())
    }

    /// Computes the checksums of externally written sections (by reading them back).
    pub fn checksum_external(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        for &i in &self.unchecked {
            let s = self.sections[i];
            let (mut at, end, mut sum) = (s.offset, s.offset + s.len, Xxh3::new());
            while at < end {
                let n = ((end - at) as usize).min(buf.len());
                self.file.read_exact_at(&mut buf[..n], at)?;
                sum.update(&buf[..n]);
                at += n as u64;
            }
            self.sections[i].xxh3 = sum.digest();
        }
        self.unchecked.clear();
        Ok(())
    }

    /// The file the image is being written to (for the kernel module to write into).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Adds a small binary section; returns its index in the manifest's section list.
    pub fn add_blob(&mut self, kind: SectionKind, data: &[u8]) -> io::Result<usize> {
        self.open_pages = None;
        let offset = self.pos;
        self.write_all(data)?;
        self.sections.push(Section {
            kind,
            offset,
            len: data.len() as u64,
            xxh3: xxh3_64(data),
        });
        Ok(self.sections.len() - 1)
    }

    /// The sections written so far, to put in the manifest.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// Writes the manifest and the header, fsyncs, and renames into place. Returns the size.
    /// Sections written externally must have been checksummed ([`checksum_external`]) and the
    /// manifest must list [`sections`] as they are now.
    ///
    /// [`checksum_external`]: ImageWriter::checksum_external
    /// [`sections`]: ImageWriter::sections
    pub fn finish(mut self, manifest: &Manifest) -> io::Result<u64> {
        assert!(
            self.unchecked.is_empty(),
            "external sections not checksummed"
        );
        let json = serde_json::to_vec(manifest).map_err(io::Error::other)?;
        let manifest_offset = self.pos;
        self.write_all(&json)?;
        let header = Header {
            version: FORMAT_VERSION,
            arch: manifest.arch.clone(),
            kernel_release: manifest.kernel_release.clone(),
            manifest_offset,
            manifest_len: json.len() as u64,
            file_len: self.pos,
            manifest_sum: xxh3_64(&json),
        };
        self.file.write_all_at(&header.encode(), 0)?;
        self.file.sync_all()?;
        std::fs::rename(&self.tmp, &self.dest)?;
        self.done = true;
        if let Some(dir) = self.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(self.pos)
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// An image whose every byte has been verified.
#[derive(Debug)]
pub struct Image {
    pub path: PathBuf,
    pub file: File,
    pub manifest: Manifest,
    pub file_len: u64,
}

impl Image {
    /// Opens and fully verifies an image: header, manifest, every section's checksum, zero
    /// gaps, and the manifest's internal consistency.
    pub fn open(path: &Path) -> Result<Image, ImageError> {
        let io_err = |source| ImageError::Io {
            path: path.into(),
            source,
        };
        let mut file = File::open(path).map_err(io_err)?;
        let actual = file.metadata().map_err(io_err)?.len();
        let mut hb = [0u8; HEADER_LEN];
        if actual < PAGE {
            return Err(ImageError::Length {
                path: path.into(),
                actual,
                expected: PAGE,
            });
        }
        file.read_exact(&mut hb).map_err(io_err)?;
        let h = Header::decode(path, &hb)?;
        if h.file_len != actual {
            return Err(ImageError::Length {
                path: path.into(),
                actual,
                expected: h.file_len,
            });
        }
        if h.arch != std::env::consts::ARCH {
            return Err(ImageError::Arch {
                path: path.into(),
                found: h.arch,
                expected: std::env::consts::ARCH,
            });
        }
        let mut rest = vec![0u8; PAGE as usize - HEADER_LEN];
        file.read_exact(&mut rest).map_err(io_err)?;
        if rest.iter().any(|&b| b != 0) {
            return Err(corrupt(path, "non-zero bytes in the header padding"));
        }
        let manifest_end = h.manifest_offset.checked_add(h.manifest_len);
        if h.manifest_offset < PAGE
            || manifest_end != Some(h.file_len)
            || h.manifest_len > MAX_MANIFEST
        {
            return Err(corrupt(path, "manifest location out of range"));
        }
        let mut json = vec![0u8; h.manifest_len as usize];
        file.read_exact_at(&mut json, h.manifest_offset)
            .map_err(io_err)?;
        if xxh3_64(&json) != h.manifest_sum {
            return Err(corrupt(path, "manifest checksum mismatch"));
        }
        let manifest: Manifest =
            serde_json::from_slice(&json).map_err(|e| corrupt(path, format!("manifest: {e}")))?;
        if manifest.format_version != h.version
            || manifest.arch != h.arch
            || manifest.kernel_release != h.kernel_release
        {
            return Err(corrupt(path, "manifest and header disagree"));
        }
        let image = Image {
            path: path.into(),
            file,
            manifest,
            file_len: h.file_len,
        };
        image.verify_sections(h.manifest_offset)?;
        image.verify_structure()?;
        Ok(image)
    }

    /// Sections lie between the header and the manifest, in order, without overlap; their
    /// checksums match; every byte between them is zero.
    fn verify_sections(&self, data_end: u64) -> Result<(), ImageError> {
        let path = &self.path;
        let io_err = |source| ImageError::Io {
            path: path.clone(),
            source,
        };
        let mut pos = PAGE;
        let mut buf = vec![0u8; 1 << 20];
        let mut check_zero = |from: u64, to: u64, file: &File| -> Result<(), ImageError> {
            let mut at = from;
            while at < to {
                let n = ((to - at) as usize).min(buf.len());
                file.read_exact_at(&mut buf[..n], at).map_err(io_err)?;
                if buf[..n].iter().any(|&b| b != 0) {
                    return Err(corrupt(
                        path,
                        format!("non-zero bytes between sections at {at}"),
                    ));
                }
                at += n as u64;
            }
            Ok(())
        };
        for (i, s) in self.manifest.sections.iter().enumerate() {
            let end = s
                .offset
                .checked_add(s.len)
                .ok_or_else(|| corrupt(path, "section overflow"))?;
            if s.offset < pos || end > data_end {
                return Err(corrupt(path, format!("section {i} out of place")));
            }
            if s.kind == SectionKind::Pages && (s.offset % PAGE != 0 || s.len % PAGE != 0) {
                return Err(corrupt(path, format!("pages section {i} not page-aligned")));
            }
            check_zero(pos, s.offset, &self.file)?;
            let mut sum = Xxh3::new();
            let mut at = s.offset;
            let mut chunk = vec![0u8; 1 << 20];
            while at < end {
                let n = ((end - at) as usize).min(chunk.len());
                self.file
                    .read_exact_at(&mut chunk[..n], at)
                    .map_err(io_err)?;
                sum.update(&chunk[..n]);
                at += n as u64;
            }
            if sum.digest() != s.xxh3 {
                return Err(corrupt(
                    path,
                    format!("section {i} ({:?}) checksum mismatch", s.kind),
                ));
            }
            pos = end;
        }
        check_zero(pos, data_end, &self.file)
    }

    /// The manifest makes sense: VMAs sorted and page-aligned, page runs inside their VMA and
    /// inside a pages section, thread sections of the right kind.
    fn verify_structure(&self) -> Result<(), ImageError> {
        let path = &self.path;
        let m = &self.manifest;
        if m.processes.is_empty() {
            return Err(corrupt(path, "no process in the image"));
        }
        for p in &m.processes {
            if p.threads.is_empty() {
                return Err(corrupt(path, format!("process {} has no thread", p.pid)));
            }
            let mut prev_end = 0;
            for v in &p.vmas {
                if v.start % PAGE != 0
                    || v.end % PAGE != 0
                    || v.start >= v.end
                    || v.start < prev_end
                {
                    return Err(corrupt(
                        path,
                        format!("bad VMA {:#x}-{:#x}", v.start, v.end),
                    ));
                }
                prev_end = v.end;
                let mut prev_run_end = v.start;
                for r in &v.pages {
                    let end = r.addr.saturating_add(r.len);
                    let in_section = m.sections.iter().any(|s| {
                        s.kind == SectionKind::Pages
                            && r.offset >= s.offset
                            && r.offset
                                .checked_add(r.len)
                                .is_some_and(|e| e <= s.offset + s.len)
                    });
                    if r.addr % PAGE != 0
                        || r.len % PAGE != 0
                        || r.offset % PAGE != 0
                        || r.len == 0
                        || r.addr < prev_run_end
                        || end > v.end
                        || !in_section
                    {
                        return Err(corrupt(path, format!("bad page run at {:#x}", r.addr)));
                    }
                    prev_run_end = end;
                }
            }
            let kind_at = |i: usize| m.sections.get(i).map(|s| s.kind);
            for pipe in &p.pipes {
                if pipe
                    .data_section
                    .is_some_and(|i| kind_at(i) != Some(SectionKind::PipeData))
                {
                    return Err(corrupt(path, "bad pipe data section"));
                }
            }
            for sp in &p.socket_pairs {
                if sp
                    .data_sections
                    .iter()
                    .flatten()
                    .any(|&i| kind_at(i) != Some(SectionKind::SocketData))
                {
                    return Err(corrupt(path, "bad socket data section"));
                }
            }
            for f in &p.fds {
                let ok = match &f.kind {
                    FdKind::Pipe { pipe, .. } => *pipe < p.pipes.len(),
                    FdKind::SocketPairEnd { pair, end } => *pair < p.socket_pairs.len() && *end < 2,
                    FdKind::Epoll { watches } => watches.iter().all(|w| {
                        w.fd >= 0
                            && p.fds
                                .iter()
                                .any(|o| o.fd == w.fd && !matches!(o.kind, FdKind::Epoll { .. }))
                    }),
                    FdKind::Listen { family, addr, .. } => {
                        crate::socket::valid_address(*family, addr)
                    }
                    FdKind::Deleted { data_section, .. } => {
                        kind_at(*data_section) == Some(SectionKind::FileData)
                    }
                    _ => true,
                };
                if !ok || f.fd < 0 {
                    return Err(corrupt(path, format!("bad fd {}", f.fd)));
                }
            }
            if p.interceptor
                .as_ref()
                .and_then(|i| i.tid_offset)
                .is_some_and(|o| o >= 4096 || o % 4 != 0)
            {
                return Err(corrupt(path, "bad interceptor tid offset"));
            }
            for t in &p.threads {
                if t.creds
                    .as_ref()
                    .is_some_and(|c| c.groups.len() > MAX_GROUPS)
                {
                    return Err(corrupt(path, format!("thread {}: too many groups", t.tid)));
                }
                match m.sections.get(t.xstate_section) {
                    Some(s) if s.kind == SectionKind::Xstate => {}
                    _ => {
                        return Err(corrupt(
                            path,
                            format!("thread {}: bad xstate section", t.tid),
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads a whole (small) section.
    pub fn read_section(&self, index: usize) -> Result<Vec<u8>, ImageError> {
        let s = self
            .manifest
            .sections
            .get(index)
            .ok_or_else(|| corrupt(&self.path, "no such section"))?;
        let mut buf = vec![0u8; s.len as usize];
        self.file
            .read_exact_at(&mut buf, s.offset)
            .map_err(|source| ImageError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small, valid image with two page runs and an xstate blob.
    pub(crate) fn sample_image(path: &Path) -> Manifest {
        let mut w = ImageWriter::create(path).unwrap();
        let pages: Vec<u8> = (0..3 * PAGE as usize)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let off = w.append_pages(&pages).unwrap();
        let xs = w.add_blob(SectionKind::Xstate, &[7u8; 832]).unwrap();
        let m = Manifest {
            format_version: FORMAT_VERSION,
            ckpt_version: "test".into(),
            arch: std::env::consts::ARCH.into(),
            kernel_release: "7.2.13".into(),
            created_unix_ms: 1,
            sections: w.sections().to_vec(),
            processes: vec![Process {
                pid: 42,
                ppid: 1,
                comm: "sample".into(),
                exe: "/bin/sample".into(),
                cwd: "/".into(),
                umask: 0o22,
                personality: 0,
                rlimits: vec![],
                mm: MmLayout::default(),
                vmas: vec![Vma {
                    start: 0x10000,
                    end: 0x20000,
                    prot: 3,
                    shared: false,
                    growsdown: false,
                    backing: Backing::Anonymous,
                    pages: vec![
                        PageRun {
                            addr: 0x10000,
                            len: PAGE,
                            offset: off,
                        },
                        PageRun {
                            addr: 0x12000,
                            len: 2 * PAGE,
                            offset: off + PAGE,
                        },
                    ],
                }],
                sigactions: vec![],
                fds: vec![Fd {
                    fd: 0,
                    flags: 0,
                    kind: FdKind::InheritStdio { was: "pipe".into() },
                }],
                threads: vec![Thread {
                    tid: 42,
                    regs: Regs::default(),
                    xstate_section: xs,
                    sigmask: 0,
                    sigaltstack: SigAltStack::default(),
                    clear_child_tid: 0,
                    robust_list: RobustList::default(),
                    rseq: None,
                    pending: 0,
                    comm: String::new(),
                    kernel_tid: None,
                    own_files: false,
                    creds: None,
                }],
                shared_pending: 0,
                pipes: vec![],
                interceptor: None,
                dumpable: None,
                socket_pairs: vec![],
            }],
            stats: None,
        };
        w.finish(&m).unwrap();
        m
    }

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ckpt-image-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip() {
        let d = tmpdir();
        let p = d.join("img");
        let m = sample_image(&p);
        let img = Image::open(&p).unwrap();
        assert_eq!(img.manifest, m);
        assert_eq!(img.read_section(1).unwrap(), vec![7u8; 832]);
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn every_flipped_byte_and_truncation_is_rejected() {
        let d = tmpdir();
        let p = d.join("img");
        sample_image(&p);
        let good = std::fs::read(&p).unwrap();
        let bad = d.join("bad");
        let mut rng = fastrand::Rng::with_seed(0xC4EC);
        for i in 0..1200 {
            let mut data = good.clone();
            if i % 4 == 3 {
                data.truncate(rng.usize(..good.len()));
            } else {
                let at = rng.usize(..data.len());
                data[at] ^= rng.u8(1..);
            }
            std::fs::write(&bad, &data).unwrap();
            assert!(Image::open(&bad).is_err(), "variant {i} was accepted");
        }
        // One byte appended is caught too.
        let mut data = good.clone();
        data.push(0);
        std::fs::write(&bad, &data).unwrap();
        assert!(matches!(Image::open(&bad), Err(ImageError::Length { .. })));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn another_version_is_named() {
        let d = tmpdir();
        let p = d.join("img");
        sample_image(&p);
        let mut data = std::fs::read(&p).unwrap();
        data[8..12].copy_from_slice(&7u32.to_le_bytes());
        std::fs::write(&p, &data).unwrap();
        let err = Image::open(&p).unwrap_err().to_string();
        assert!(
            err.contains("format version 7") && err.contains(&format!("version {FORMAT_VERSION}")),
            "{err}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn abandoned_writer_leaves_nothing() {
        let d = tmpdir();
        let p = d.join("img");
        {
            let mut w = ImageWriter::create(&p).unwrap();
            w.append_pages(&[1u8; PAGE as usize]).unwrap();
        }
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        std::fs::remove_dir_all(d).unwrap();
    }
}
