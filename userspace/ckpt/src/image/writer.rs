//! Writing an image: sections appended (or written by the kernel module straight into the
//! file), then the manifest and the header, under a temporary name until it is durable.
//!
//! Compressing ([`ImageWriter::compress`]), every section is one zstd frame, except pages
//! zstd would not shrink, kept as they are. The module's pages go to a scratch memfd first,
//! in pieces of at most [`COMPRESSED_PAGES_CHUNK`], each streamed from there into a section
//! of its own; the content of each section gets a place in the image's uncompressed view
//! (`Section::offset`), which is what page runs point at.

use super::codec::{self, Codec, Compressed, FileRange};
use super::delta::{self, Delta};
use super::header::Header;
use super::mapped::MappedFile;
use super::{
    mac, Envelope, MacKey, Meta, Section, SectionKind, COMPRESSED_FORMAT_VERSION,
    DELTA_FORMAT_VERSION, PAGE, PAGES, PLAIN_FORMAT_VERSION, TABLES_FORMAT_VERSION,
};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use xxhash_rust::xxh64::{xxh64, Xxh64};

/// The most page content the module writes into the scratch memfd at once when compressing:
/// the memory a compressed checkpoint needs beyond the uncompressed one's.
pub const COMPRESSED_PAGES_CHUNK: u64 = 64 << 20;
/// From this size on, a blob copied from a file is copied by the kernel (`add_blob_copied`).
const COPY_IN_KERNEL_MIN: u64 = 1 << 20;

/// Compressing: the level, the scratch memfd pages go through, and the next free place in the
/// uncompressed view.
struct Compressing {
    level: i32,
    scratch: File,
    view_end: u64,
}

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
    open_pages: Option<(usize, Box<Xxh64>)>,
    /// Set by [`ImageWriter::compress`].
    compressing: Option<Compressing>,
    /// Set by [`ImageWriter::sign`]: the image gets a MAC.
    key: Option<MacKey>,
    /// Checksums of pages sections written without one, being taken on another thread.
    background: Option<BackgroundSums>,
    /// A part of the manifest was added as a section ([`ImageWriter::add_table`]).
    tables: bool,
    done: bool,
}

/// The checksums of pages sections the kernel wrote without one (`CKPT_DUMP_NO_HASH`) and of
/// large blobs the kernel copied, taken on another thread from a mapping of the image (no
/// copy) while the next section is being written: the checksum and the copy no longer take
/// turns on one CPU.
struct BackgroundSums {
    /// (section index, offset, length) to checksum.
    jobs: Option<mpsc::Sender<(usize, u64, u64)>>,
    thread: Option<JoinHandle<io::Result<SectionSums>>>,
}

/// (section index, XXH64) pairs.
type SectionSums = Vec<(usize, u64)>;

impl BackgroundSums {
    fn start(image: File) -> BackgroundSums {
        let (jobs, queue) = mpsc::channel::<(usize, u64, u64)>();
        let thread = std::thread::spawn(move || {
            let mut sums = Vec::new();
            for (section, offset, len) in queue {
                sums.push((section, checksum_of(&image, offset, len)?));
            }
            Ok(sums)
        });
        BackgroundSums {
            jobs: Some(jobs),
            thread: Some(thread),
        }
    }

    /// Queues section `section`, `len` bytes at `offset` of the image.
    fn add(&mut self, section: usize, offset: u64, len: u64) -> io::Result<()> {
        (self.jobs.as_ref())
            .and_then(|j| j.send((section, offset, len)).ok())
            .ok_or_else(|| io::Error::other("the checksum thread ended early"))
    }

    /// Every queued section's checksum, once taken.
    fn wait(mut self) -> io::Result<SectionSums> {
        self.jobs = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(sums)) => sums,
            _ => Err(io::Error::other("the checksum thread failed")),
        }
    }
}

/// The XXH64 of `len` bytes of `file` at `offset` (page-aligned), read from a mapping.
pub(super) fn checksum_of(file: &File, offset: u64, len: u64) -> io::Result<u64> {
    let mut sum = Xxh64::new(0);
    MappedFile::range(file, offset, len)?.for_each_mib((0, len), |b| sum.update(b))?;
    Ok(sum.digest())
}

impl Drop for BackgroundSums {
    fn drop(&mut self) {
        // An abandoned image: the thread ends once its queue (no longer fed) is done.
        self.jobs = None;
    }
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
            // The image holds the whole memory of the process, keys and passwords included:
            // only its owner reads it, whatever the umask.
            .mode(0o600)
            .open(&tmp)?;
        let mut w = ImageWriter {
            file,
            tmp,
            dest: dest.into(),
            pos: 0,
            sections: Vec::new(),
            open_pages: None,
            compressing: None,
            key: None,
            background: None,
            tables: false,
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
        if self.compressing.is_some() {
            let i = self.add_compressed(PAGES, data, (data.len() as u64, None))?;
            return Ok(self.sections[i].offset);
        }
        if self.open_pages.is_none() {
            self.pad_to(PAGE)?;
            self.sections.push(Section {
                kind: PAGES,
                offset: self.pos,
                len: 0,
                xxh64: 0,
                compressed: None,
                delta: None,
            });
            self.open_pages = Some((self.sections.len() - 1, Box::new(Xxh64::new(0))));
        }
        let offset = self.pos;
        self.write_all(data)?;
        let (idx, sum) = self.open_pages.as_mut().unwrap();
        sum.update(data);
        self.sections[*idx].len += data.len() as u64;
        self.sections[*idx].xxh64 = sum.digest();
        Ok(offset)
    }

    /// Gives the image a MAC with `key` (written by `finish`, over every byte).
    pub fn sign(&mut self, key: &MacKey) {
        self.key = Some(key.clone());
    }

    /// Compresses every section from now on, at zstd `level`.
    pub fn compress(&mut self, level: i32) -> io::Result<()> {
        let scratch =
            nix::sys::memfd::memfd_create(c"ckpt-pages", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
        self.open_pages = None;
        self.compressing = Some(Compressing {
            level,
            scratch: File::from(scratch),
            // Clear of the header, like the file's own first section.
            view_end: PAGE,
        });
        Ok(())
    }

    /// The most page content to have written at once through [`Self::external_pages_target`]
    /// (none: any).
    pub fn external_pages_limit(&self) -> Option<u64> {
        self.compressing.as_ref().map(|_| COMPRESSED_PAGES_CHUNK)
    }

    /// Where someone else (the kernel module) is to write pages: a file and a page-aligned
    /// offset in it, the image's own or the scratch memfd. Call
    /// [`Self::external_pages_written`] after they are.
    pub fn external_pages_target(&mut self) -> io::Result<(&File, u64)> {
        self.open_pages = None;
        if self.compressing.is_none() {
            self.pad_to(PAGE)?;
        }
        match &self.compressing {
            Some(c) => {
                // Emptied, so that its memory goes back.
                c.scratch.set_len(0)?;
                Ok((&c.scratch, 0))
            }
            None => Ok((&self.file, self.pos)),
        }
    }

    /// Reads back page content written at `offset` (not compressing: compressed content is
    /// not at hand).
    pub fn read_pages_back(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.compressing.is_some() {
            return Err(io::Error::other("compressed pages cannot be read back"));
        }
        self.file.read_exact_at(buf, offset)
    }

    /// Whether the pages someone else writes where `external_pages_target` says may come
    /// without their checksum (`external_pages_written` with `None`): when they are written
    /// into the image itself, not into the compressor's scratch file.
    pub fn external_pages_checksummed_here(&self) -> bool {
        self.compressing.is_none()
    }

    /// Records `len` bytes of pages written by someone else where
    /// `external_pages_target` said, whose XXH64 the writer computed while writing (`None`:
    /// taken here, on another thread, see `BackgroundSums`; only where
    /// `external_pages_checksummed_here`), as a new pages section. Returns the offset the
    /// image records for their first byte (page runs are moved by the difference).
    pub fn external_pages_written(&mut self, len: u64, xxh64: Option<u64>) -> io::Result<u64> {
        let Some(xxh64) = xxh64 else {
            return self.external_pages_unsummed(len);
        };
        assert_eq!(len % PAGE, 0);
        if let Some(c) = &self.compressing {
            if len == 0 {
                return Ok(c.view_end.next_multiple_of(PAGE));
            }
            let scratch = c.scratch.try_clone()?;
            let i = match codec::worth_compressing(&scratch, (0, len))? {
                true => {
                    let src = FileRange::new(&scratch, 0, len);
                    self.add_compressed(PAGES, src, (len, Some(xxh64)))?
                }
                false => self.add_stored_pages(&scratch, (len, xxh64))?,
            };
            return Ok(self.sections[i].offset);
        }
        let offset = self.pos;
        if len == 0 {
            return Ok(offset);
        }
        self.sections.push(Section {
            kind: PAGES,
            offset,
            len,
            xxh64,
            compressed: None,
            delta: None,
        });
        self.pos += len;
        self.file.seek(SeekFrom::Start(self.pos))?;
        Ok(offset)
    }

    /// As [`Self::external_pages_written`] (compressing), for pages of which those `bases`
    /// name are stored as their difference from an earlier image's (see [`delta`]): XORed
    /// with them in the scratch file, then compressed. `xxh64` is the pages' own checksum;
    /// `chain[k]` the k-th ancestor's file, where it can serve as a base. Without bases, or
    /// not compressing, or with a key (a MAC'd image stays version 5), the pages are stored
    /// as they are.
    pub fn external_pages_written_as_delta(
        &mut self,
        (len, xxh64): (u64, u64),
        bases: Vec<[u64; 4]>,
        chain: &[Option<File>],
    ) -> io::Result<u64> {
        let scratch = match &self.compressing {
            Some(c) if !bases.is_empty() && self.key.is_none() => c.scratch.try_clone()?,
            _ => return self.external_pages_written(len, Some(xxh64)),
        };
        delta::subtract((&scratch, len), &bases, chain)?;
        let src = FileRange::new(&scratch, 0, len);
        let i = self.add_compressed(PAGES, src, (len, None))?;
        self.sections[i].delta = Some(Delta { bases, xxh64 });
        Ok(self.sections[i].offset)
    }

    fn external_pages_unsummed(&mut self, len: u64) -> io::Result<u64> {
        if self.compressing.is_some() {
            return Err(io::Error::other("compressed pages need their checksum"));
        }
        let offset = self.external_pages_written(len, Some(0))?;
        if len > 0 {
            self.sum_later(self.sections.len() - 1)?;
        }
        Ok(offset)
    }

    /// Has the checksum of plain section `section` (written, its `xxh64` not yet known)
    /// taken on the background thread, which maps the image (no copy); [`Self::finish`]
    /// puts it in.
    fn sum_later(&mut self, section: usize) -> io::Result<()> {
        let (offset, len) = match self.sections.get(section) {
            Some(s) => (s.offset, s.len),
            None => return Err(io::Error::other("no such section")),
        };
        let background = match &mut self.background {
            Some(b) => b,
            None => self
                .background
                .insert(BackgroundSums::start(self.file.try_clone()?)),
        };
        background.add(section, offset, len)
    }

    /// Copies the `len` bytes of pages at the start of `scratch`, whose XXH64 is `xxh64`, into
    /// a new pages section kept as it is (compressing, for content zstd would not shrink);
    /// returns its index. The kernel copies (sendfile, which unlike copy_file_range crosses
    /// filesystems everywhere): nothing is read here.
    fn add_stored_pages(&mut self, scratch: &File, (len, xxh64): (u64, u64)) -> io::Result<usize> {
        let c = self
            .compressing
            .as_mut()
            .ok_or_else(|| io::Error::other("not compressing"))?;
        let offset = c.view_end.next_multiple_of(PAGE);
        c.view_end = offset + len;
        let at = self.pos;
        self.send_from(scratch, 0, len)?;
        self.sections.push(Section {
            kind: PAGES,
            offset,
            len,
            xxh64,
            compressed: Some(Compressed {
                codec: Codec::None,
                offset: at,
                len,
                xxh64,
            }),
            delta: None,
        });
        Ok(self.sections.len() - 1)
    }

    /// Compresses the `len` bytes of `src` (whose XXH64 is `xxh64` if known) into a new
    /// section of `kind` at the end of the file (compressing); returns its index.
    fn add_compressed(
        &mut self,
        kind: SectionKind,
        src: impl io::Read,
        (len, xxh64): (u64, Option<u64>),
    ) -> io::Result<usize> {
        let c = self
            .compressing
            .as_mut()
            .ok_or_else(|| io::Error::other("not compressing"))?;
        let offset = match kind == PAGES {
            true => c.view_end.next_multiple_of(PAGE),
            false => c.view_end,
        };
        let level = c.level;
        c.view_end = offset + len;
        let at = self.pos;
        let e = codec::encode(src, (len, xxh64), level, &mut self.file)?;
        self.pos += e.len;
        self.sections.push(Section {
            kind,
            offset,
            len,
            xxh64: e.raw_xxh64,
            compressed: Some(Compressed {
                codec: Codec::Zstd,
                offset: at,
                len: e.len,
                xxh64: e.xxh64,
            }),
            delta: None,
        });
        Ok(self.sections.len() - 1)
    }

    /// Adds a section of the `len` bytes at `start` of `from` (streamed, for content too large
    /// to hold in memory); returns its index.
    pub fn add_blob_from(
        &mut self,
        kind: SectionKind,
        from: &File,
        (start, len): (u64, u64),
    ) -> io::Result<usize> {
        self.open_pages = None;
        if self.compressing.is_some() {
            return self.add_compressed(kind, FileRange::new(from, start, len), (len, None));
        }
        if len >= COPY_IN_KERNEL_MIN {
            return self.add_blob_copied(kind, from, (start, len));
        }
        let offset = self.pos;
        let mut sum = Xxh64::new(0);
        let mut buf = vec![0u8; (1usize << 20).min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(buf.len());
            from.read_exact_at(&mut buf[..n], start + done)?;
            sum.update(&buf[..n]);
            self.write_all(&buf[..n])?;
            done += n as u64;
        }
        Ok(self.push_plain(kind, offset, len, sum.digest()))
    }

    /// `add_blob_from` for a large range: copied by the kernel (sendfile: one copy, where
    /// reading into a buffer and writing it out made two), at a page boundary so that the
    /// checksum is then taken from a mapping of the copy (no copy either, and what is
    /// checksummed is what the image holds even if the source changes meanwhile), on the
    /// background thread while this one goes on (a shared memory object's next piece, the
    /// next process).
    fn add_blob_copied(
        &mut self,
        kind: SectionKind,
        from: &File,
        (start, len): (u64, u64),
    ) -> io::Result<usize> {
        self.pad_to(PAGE)?;
        let offset = self.pos;
        self.send_from(from, start, len)?;
        let section = self.push_plain(kind, offset, len, 0);
        self.sum_later(section)?;
        Ok(section)
    }

    /// Appends `len` bytes of `from` at `start` to the image, copied by the kernel (sendfile,
    /// which unlike copy_file_range crosses filesystems everywhere).
    fn send_from(&mut self, from: &File, start: u64, len: u64) -> io::Result<()> {
        let mut at = libc::off_t::try_from(start).map_err(io::Error::other)?;
        let mut done = 0u64;
        while done < len {
            let left = (len - done).min(1 << 30) as usize;
            let n = nix::sys::sendfile::sendfile(&self.file, from, Some(&mut at), left)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            done += n as u64;
        }
        self.pos += len;
        Ok(())
    }

    /// Records an uncompressed section; returns its index.
    fn push_plain(&mut self, kind: SectionKind, offset: u64, len: u64, xxh64: u64) -> usize {
        self.sections.push(Section {
            kind,
            offset,
            len,
            xxh64,
            compressed: None,
            delta: None,
        });
        self.sections.len() - 1
    }

    /// Adds a small binary section; returns its index in the manifest's section list.
    pub fn add_blob(&mut self, kind: SectionKind, data: &[u8]) -> io::Result<usize> {
        self.open_pages = None;
        if self.compressing.is_some() {
            return self.add_compressed(kind, data, (data.len() as u64, None));
        }
        let offset = self.pos;
        self.write_all(data)?;
        Ok(self.push_plain(kind, offset, data.len() as u64, xxh64(data, 0)))
    }

    /// Whether [`Self::add_table`] adds a section (not to an image with a MAC).
    pub fn takes_tables(&self) -> bool {
        self.key.is_none()
    }

    /// Adds a part of the manifest (`kind`, a large table) as a section of its own; returns
    /// its index, or None for an image with a MAC, whose version (5) cannot tell an older
    /// ckpt that its manifest lacks the part: the caller keeps it in the manifest then.
    pub fn add_table(&mut self, kind: SectionKind, data: &[u8]) -> io::Result<Option<usize>> {
        if !self.takes_tables() {
            return Ok(None);
        }
        self.tables = true;
        self.add_blob(kind, data).map(Some)
    }

    /// Writes the manifest (the envelope with the sections, then `manifest`'s fields) and the
    /// header, fsyncs, and renames into place. Returns the size.
    pub fn finish<M: Serialize>(mut self, manifest: &M) -> io::Result<u64> {
        if let Some(background) = self.background.take() {
            for (section, sum) in background.wait()? {
                if let Some(s) = self.sections.get_mut(section) {
                    s.xxh64 = sum;
                }
            }
        }
        let version = match self.sections.iter().any(|s| s.compressed.is_some()) {
            _ if self.key.is_some() => mac::MAC_FORMAT_VERSION,
            _ if self.tables => TABLES_FORMAT_VERSION,
            _ if self.sections.iter().any(|s| s.delta.is_some()) => DELTA_FORMAT_VERSION,
            true => COMPRESSED_FORMAT_VERSION,
            false => PLAIN_FORMAT_VERSION,
        };
        let envelope = Envelope {
            meta: Meta::now(version),
            sections: std::mem::take(&mut self.sections),
            manifest,
        };
        let json = serde_json::to_vec(&envelope).map_err(io::Error::other)?;
        let manifest_offset = self.pos;
        self.write_all(&json)?;
        let header = Header {
            version,
            arch: envelope.meta.arch,
            kernel_release: envelope.meta.kernel_release,
            manifest_offset,
            manifest_len: json.len() as u64,
            file_len: self.pos,
            manifest_sum: xxh64(&json, 0),
        };
        self.file.write_all_at(&header.encode(), 0)?;
        if let Some(key) = &self.key {
            // Read back: the module wrote pages straight into the file.
            let sum = mac::compute(key, &self.file, self.pos)?;
            self.file.write_all_at(&sum, mac::MAC_AT as u64)?;
        }
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
