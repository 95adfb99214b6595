//! Reading an image: [`Image::open`] verifies every byte before returning it.

use super::codec::{self, Codec, FileRange, MAX_RATIO};
use super::copy::{copy_range, splice_range};
use super::flat::FromRawObject;
use super::header::{Header, HEADER_LEN};
use super::mac::{self, MacKey};
use super::mapped::MappedFile;
use super::{corrupt, Envelope, ImageError, Meta, Section, SectionKind, Validate, PAGE, PAGES};
use crate::progress::Progress;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use xxhash_rust::xxh64::{xxh64, Xxh64};

/// The manifest is JSON metadata; anything larger than this is not a ckpt image.
const MAX_MANIFEST: u64 = 256 << 20;
/// The most a part of the manifest stored as a section (`ImageWriter::add_table`) may hold:
/// a process's mappings take a few dozen bytes each, and far fewer than 65,536 of them are
/// allowed by default (vm.max_map_count).
const MAX_TABLE: u64 = 64 << 20;

/// An image whose every byte has been verified.
#[derive(Debug)]
pub struct Image<M> {
    pub path: PathBuf,
    pub file: File,
    pub file_len: u64,
    pub meta: Meta,
    pub sections: Vec<Section>,
    pub manifest: M,
    /// It carries a MAC (`--key`); checked only if it was opened with a key.
    pub has_mac: bool,
}

/// How much of an image `open_checking` verifies.
enum Check {
    /// Every byte, compressed content included.
    All,
    /// Every byte, but compressed pages' content only as `pages_view` decompresses it.
    PagesLater,
    /// Every byte but uncompressed pages sections' content: a lazy restore's page server
    /// checks those in the background (`crate::lazy`).
    PagesInBackground,
    /// The header and the manifest only.
    ManifestOnly,
}

impl<M: FromRawObject + Validate> Image<M> {
    /// Opens and fully verifies an image: header, manifest, every section's checksum, zero
    /// gaps, and the manifest's internal consistency; compressed sections are decompressed
    /// (streamed) to check their content too. A MAC it carries is not checked (no key): see
    /// [`Image::open_keyed`].
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        Self::open_checking(path, (Check::All, &Progress::hidden()), None)
    }

    /// [`Image::open`], and with a key, the image's MAC checked too: an image without one,
    /// or whose MAC is not the key's, is refused.
    pub fn open_keyed(path: &Path, key: Option<&MacKey>) -> Result<Self, ImageError> {
        Self::open_checking(path, (Check::All, &Progress::hidden()), key)
    }

    /// Opens an image, verifying its header and manifest (checksum, consistency) but not
    /// its sections' bytes (nor its MAC, which covers them): for reading what it describes
    /// (an incremental checkpoint's parent, a periodic directory's chain), never for
    /// restoring from it.
    pub fn open_manifest(path: &Path) -> Result<Self, ImageError> {
        Self::open_checking(path, (Check::ManifestOnly, &Progress::hidden()), None)
    }

    /// [`Image::open_keyed`], except that compressed pages sections are checked where the
    /// file holds them only: [`Image::pages_view`] checks their content as it decompresses
    /// them. For a restore, which needs that view before it acts: the pages are decompressed
    /// once. (The MAC covers the bytes the file holds: it is checked here.) `progress`
    /// counts the bytes verified.
    pub fn open_pages_later(
        path: &Path,
        key: Option<&MacKey>,
        progress: &Progress,
    ) -> Result<Self, ImageError> {
        Self::open_checking(path, (Check::PagesLater, progress), key)
    }

    /// [`Image::open_pages_later`], except that uncompressed pages sections are not read at
    /// all (only their place is checked): a lazy restore must not read the whole image
    /// before the program runs. [`Image::unverified_pages`] lists what is left to check.
    /// Without every byte read, no MAC can be checked: a keyed restore opens with
    /// [`Image::open_pages_later`].
    pub fn open_pages_unverified(path: &Path) -> Result<Self, ImageError> {
        Self::open_checking(path, (Check::PagesInBackground, &Progress::hidden()), None)
    }

    fn open_checking(
        path: &Path,
        (check, progress): (Check, &Progress),
        key: Option<&MacKey>,
    ) -> Result<Self, ImageError> {
        let io_err = |source| ImageError::Io {
            path: path.into(),
            source,
        };
        let (file, h, page) = read_header(path)?;
        let found_mac = match h.version == mac::MAC_FORMAT_VERSION {
            true => Some(
                page[mac::MAC_AT..mac::MAC_AT + mac::MAC_LEN]
                    .try_into()
                    .unwrap_or([0; 32]),
            ),
            false => None,
        };
        // The MAC covers every byte in file order: the header page (the MAC's own field
        // zero), the sections and the gaps between them as they are verified, the manifest.
        let mut hasher = match (key, found_mac, &check) {
            (Some(_), None, _) => return Err(ImageError::MacMissing { path: path.into() }),
            (Some(k), Some(_), Check::All | Check::PagesLater) => {
                let mut h = k.hasher();
                let mut page = page;
                mac::zero_field(&mut page);
                h.update(&page);
                Some(h)
            }
            _ => None,
        };
        let mut json = vec![0u8; h.manifest_len as usize];
        file.read_exact_at(&mut json, h.manifest_offset)
            .map_err(io_err)?;
        if xxh64(&json, 0) != h.manifest_sum {
            return Err(corrupt(path, "manifest checksum mismatch"));
        }
        let envelope: Envelope<M> =
            serde_json::from_slice(&json).map_err(|e| corrupt(path, format!("manifest: {e}")))?;
        let meta = envelope.meta;
        if meta.format_version != h.version
            || meta.arch != h.arch
            || meta.kernel_release != h.kernel_release
        {
            return Err(corrupt(path, "manifest and header disagree"));
        }
        let mut image = Image {
            path: path.into(),
            file,
            file_len: h.file_len,
            meta,
            sections: envelope.sections,
            manifest: envelope.manifest,
            has_mac: found_mac.is_some(),
        };
        image.verify_sections(h.manifest_offset, (check, progress), &mut hasher)?;
        if let (Some(mut hasher), Some(found)) = (hasher, found_mac) {
            hasher.update(&json);
            if !mac::matches(&hasher, &found) {
                return Err(ImageError::MacMismatch { path: path.into() });
            }
        }
        let data = SectionData {
            path: &image.path,
            file: &image.file,
            sections: &image.sections,
        };
        // The path is named once, by the error made of what `load_tables` says.
        let read = |i, kind: &SectionKind| match data.read_table(i, kind) {
            Err(ImageError::Corrupt { what, .. }) => Err(what),
            other => other.map_err(|e| e.to_string()),
        };
        (image.manifest)
            .load_tables(&read)
            .map_err(|what| corrupt(path, what))?;
        image
            .manifest
            .validate(&image.sections)
            .map_err(|what| corrupt(path, what))?;
        Ok(image)
    }
}

/// From this size on, a plain section other than pages (a shared memory object's content,
/// say) is hashed from the mapping with the pages sections, not read through a buffer:
/// `pread`'s copy into user memory is what the emulated guest runs slowest.
const MAPPED_MIN: u64 = 1 << 20;

/// From this much to hash, the sections are hashed on as many threads as there are CPUs.
const THREADS_FROM: u64 = 16 << 20;

/// Checks the checksums of the plain sections `indexes` of `sections` (placed already) from
/// `map`, from [`THREADS_FROM`] bytes on as many threads as there are CPUs: each section's
/// XXH64 is sequential, but sections are independent (a dump writes one per 64 MiB of
/// memory). The calling thread then only advances `progress` with what the others report.
fn check_mapped_sections(
    path: &Path,
    sections: &[Section],
    (indexes, map): (&[usize], &MappedFile),
    progress: &Progress,
) -> Result<(), ImageError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(indexes.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let check_one = |i: usize, done: &dyn Fn(u64)| -> Result<(), ImageError> {
        let (offset, len, xxh64) = sections[i].stored();
        let mut sum = Xxh64::new(0);
        map.for_each_mib((offset, offset + len), |b| {
            sum.update(b);
            done(b.len() as u64);
        })
        .map_err(|source| ImageError::Io {
            path: path.into(),
            source,
        })?;
        match sum.digest() == xxh64 {
            true => Ok(()),
            false => Err(corrupt(
                path,
                format!(
                    "section {i} ({}) checksum mismatch",
                    sections[i].kind.name()
                ),
            )),
        }
    };
    // A small image is checked here: starting threads would cost more than they save (a
    // tiny process's restore spent 10 ms of the emulated guest's time on two).
    let total = indexes.iter().map(|&i| sections[i].stored().1).sum::<u64>();
    if total < THREADS_FROM {
        let advance = |n| progress.advance(n);
        return indexes.iter().try_for_each(|&i| check_one(i, &advance));
    }
    // Each thread takes the next section until none is left or one fails.
    let work = |done: mpsc::Sender<u64>| -> Result<(), ImageError> {
        let send = |n| {
            let _ = done.send(n);
        };
        while let Some(&i) = indexes.get(next.fetch_add(1, Ordering::Relaxed)) {
            check_one(i, &send).inspect_err(|_| next.store(indexes.len(), Ordering::Relaxed))?;
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let tx = tx.clone();
                scope.spawn(move || work(tx))
            })
            .collect();
        drop(tx);
        // Ends once every worker has dropped its sender.
        for n in rx {
            progress.advance(n);
        }
        workers.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(corrupt(path, "a checksum thread panicked")))
        })
    })
}

/// Opens the image at `path` and reads and checks its header page: the file, the header, and
/// the page (the MAC field in it, if the version has one, is not checked here).
fn read_header(path: &Path) -> Result<(File, Header, Vec<u8>), ImageError> {
    let io_err = |source| ImageError::Io {
        path: path.into(),
        source,
    };
    // Without waiting: a fifo named as an image (or as a parent in one) has no writer.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(corrupt(path, "not a regular file"));
    }
    let actual = meta.len();
    if actual < PAGE {
        return Err(corrupt(
            path,
            format!("{actual} bytes, shorter than an image's first page"),
        ));
    }
    let mut page = vec![0u8; PAGE as usize];
    file.read_exact(&mut page).map_err(io_err)?;
    let hb: &[u8; HEADER_LEN] = page[..HEADER_LEN].try_into().unwrap_or(&[0; HEADER_LEN]);
    let h = Header::decode(path, hb)?;
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
    let padding = match h.version == mac::MAC_FORMAT_VERSION {
        true => &page[mac::MAC_AT + mac::MAC_LEN..],
        false => &page[HEADER_LEN..],
    };
    if padding.iter().any(|&b| b != 0) {
        return Err(corrupt(path, "non-zero bytes in the header padding"));
    }
    let manifest_end = h.manifest_offset.checked_add(h.manifest_len);
    if h.manifest_offset < PAGE || manifest_end != Some(h.file_len) || h.manifest_len > MAX_MANIFEST
    {
        return Err(corrupt(path, "manifest location out of range"));
    }
    Ok((file, h, page))
}

impl<M> Image<M> {
    /// Sections lie between the header and the manifest, in order, without overlap (checked
    /// whatever `check` says: nothing may index past the file); their checksums match (not
    /// uncompressed pages' with [`Check::PagesInBackground`]); every byte between them is
    /// zero. Compressed sections decompress to their content (checked as it streams by, never
    /// held whole), pages sections only with [`Check::All`]. `mac` gets every byte read;
    /// `progress` counts the bytes of sections read.
    fn verify_sections(
        &self,
        data_end: u64,
        (check, progress): (Check, &Progress),
        mac: &mut Option<blake3::Hasher>,
    ) -> Result<(), ImageError> {
        let path = &self.path;
        let stored = self.sections.iter().map(|s| s.stored().1);
        progress.add_total(stored.fold(0, u64::saturating_add));
        let mut pos = PAGE;
        // One buffer for the whole image, never larger than its data.
        let mut buf = match check {
            Check::ManifestOnly => Vec::new(),
            _ => vec![0u8; (1 << 20).min(data_end.saturating_sub(PAGE)) as usize],
        };
        let compressed = self.sections.iter().any(|s| s.compressed.is_some());
        // Plain pages sections, and other plain ones from MAPPED_MIN, are read where they lie
        // in the page cache (no copy); without a MAC (which needs every byte in order) they
        // are hashed after the others, in parallel.
        let mut mapped: Option<MappedFile> = None;
        let mut from_map_later = Vec::new();
        let mut view_pos = 0;
        for (i, s) in self.sections.iter().enumerate() {
            let (offset, len, xxh64) = s.stored();
            let end = offset
                .checked_add(len)
                .ok_or_else(|| corrupt(path, format!("section {i}: its end is past 2^64")))?;
            if offset < pos || end > data_end {
                return Err(corrupt(path, format!("section {i} out of place")));
            }
            if compressed {
                view_pos = self.check_view_place(i, view_pos)?;
            }
            if s.kind == PAGES && (s.offset % PAGE != 0 || s.len % PAGE != 0) {
                return Err(corrupt(path, format!("pages section {i} not page-aligned")));
            }
            let gap = (pos, offset);
            pos = end;
            if matches!(check, Check::ManifestOnly) {
                continue;
            }
            self.check_zero(gap, &mut buf, mac)?;
            let plain_pages = s.kind == PAGES && s.compressed.is_none();
            if plain_pages && matches!(check, Check::PagesInBackground) {
                continue;
            }
            let from_map = s.compressed.is_none() && (s.kind == PAGES || s.len >= MAPPED_MIN);
            if from_map && mapped.is_none() {
                mapped = Some(MappedFile::new(&self.file).map_err(|e| self.io_err(e))?);
            }
            if from_map && mac.is_none() {
                from_map_later.push(i); // hashed after the loop, several at once
                continue;
            }
            let mut sum = Xxh64::new(0);
            let map = mapped.as_ref().filter(|_| from_map);
            self.read_range((offset, end), map, &mut buf, |b| {
                sum.update(b);
                if let Some(h) = mac.as_mut() {
                    h.update(b);
                }
                progress.advance(b.len() as u64);
            })?;
            if sum.digest() != xxh64 {
                return Err(corrupt(
                    path,
                    format!("section {i} ({}) checksum mismatch", s.kind.name()),
                ));
            }
            // A plain pages section's content is what was just checked.
            if !plain_pages && (matches!(check, Check::All) || s.kind != PAGES) {
                self.decode_section(i, |_| Ok(()))?;
            }
        }
        if let Some(map) = &mapped {
            check_mapped_sections(path, &self.sections, (&from_map_later, map), progress)?;
        }
        match check {
            Check::ManifestOnly => Ok(()),
            _ => self.check_zero((pos, data_end), &mut buf, mac),
        }
    }

    /// Hands the bytes from `from` to `to` to `each`: from `map` if given (no copy), else a
    /// buffer at a time, read into `buf`.
    fn read_range(
        &self,
        (from, to): (u64, u64),
        map: Option<&MappedFile>,
        buf: &mut [u8],
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), ImageError> {
        if let Some(map) = map {
            return map
                .for_each_mib((from, to), each)
                .map_err(|e| self.io_err(e));
        }
        let mut at = from;
        while at < to {
            let n = ((to - at) as usize).min(buf.len());
            self.file
                .read_exact_at(&mut buf[..n], at)
                .map_err(|e| self.io_err(e))?;
            each(&buf[..n]);
            at += n as u64;
        }
        Ok(())
    }

    fn io_err(&self, source: io::Error) -> ImageError {
        ImageError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// The bytes from `from` to `to` (a gap between sections) are zero; `mac` gets them.
    fn check_zero(
        &self,
        (from, to): (u64, u64),
        buf: &mut [u8],
        mac: &mut Option<blake3::Hasher>,
    ) -> Result<(), ImageError> {
        let mut zero = true;
        self.read_range((from, to), None, buf, |b| {
            zero &= b.iter().all(|&x| x == 0);
            if let Some(h) = mac.as_mut() {
                h.update(b);
            }
        })?;
        match zero {
            true => Ok(()),
            false => Err(corrupt(
                &self.path,
                format!("non-zero bytes between sections after {from}"),
            )),
        }
    }

    /// The uncompressed pages sections (offset, length, XXH64) that
    /// [`Image::open_pages_unverified`] left unchecked.
    pub fn unverified_pages(&self) -> Vec<(u64, u64, u64)> {
        let plain = self.sections.iter().filter(|s| s.compressed.is_none());
        plain
            .filter(|s| s.kind == PAGES)
            .map(|s| (s.offset, s.len, s.xxh64))
            .collect()
    }

    /// In an image with compressed sections, section `i` is one of them, its content placed
    /// in the uncompressed view after `view_pos`, no larger than zstd can make of its bytes.
    /// Returns the end of its place.
    fn check_view_place(&self, i: usize, view_pos: u64) -> Result<u64, ImageError> {
        let s = &self.sections[i];
        let c = s.compressed.as_ref().ok_or_else(|| {
            corrupt(
                &self.path,
                format!("section {i} is not compressed but others are"),
            )
        })?;
        if c.codec == Codec::None && c.len != s.len {
            return Err(corrupt(
                &self.path,
                format!("section {i} is stored as it is but its lengths differ"),
            ));
        }
        if c.len.saturating_mul(MAX_RATIO) < s.len {
            return Err(corrupt(
                &self.path,
                format!(
                    "section {i} ({}) declares {} bytes, more than {} compressed bytes can hold",
                    s.kind.name(),
                    s.len,
                    c.len
                ),
            ));
        }
        match s.offset.checked_add(s.len) {
            Some(end) if s.offset >= view_pos => Ok(end),
            _ => Err(corrupt(&self.path, format!("section {i} out of place"))),
        }
    }

    /// The image's file and section table, to read sections from.
    pub fn data(&self) -> SectionData<'_> {
        SectionData {
            path: &self.path,
            file: &self.file,
            sections: &self.sections,
        }
    }

    /// Reads a whole (small) section.
    pub fn read_section(&self, index: usize) -> Result<Vec<u8>, ImageError> {
        self.data().read(index)
    }

    /// Hands the content of compressed section `index` to `sink` as it decompresses (nothing
    /// for a plain section, which has no `compressed` record).
    fn decode_section(
        &self,
        index: usize,
        sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ImageError> {
        self.data().decode(index, sink)
    }

    /// A file holding every pages section's content at its `offset`, for the module and the
    /// restorers to read page runs from: `None` if that is the image file itself (nothing is
    /// compressed), else a memfd the compressed pages are decompressed into, sealed.
    /// `progress` counts the bytes decompressed. Pages stored as differences (`delta`) get
    /// their bases back from `chain` (`chain[k]`: the k-th ancestor's file).
    pub fn pages_view(
        &self,
        progress: &Progress,
        chain: &[&File],
    ) -> Result<Option<File>, ImageError> {
        if self.sections.iter().all(|s| s.compressed.is_none()) {
            return Ok(None);
        }
        let io_err = |source| ImageError::Io {
            path: self.path.clone(),
            source,
        };
        let memfd = memfd_create(
            c"ckpt-image-pages",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|e| io_err(e.into()))?;
        let view = File::from(memfd);
        let pages = self.sections.iter().filter(|s| s.kind == PAGES);
        progress.add_total(pages.map(|s| s.len).fold(0, u64::saturating_add));
        for (i, s) in self.sections.iter().enumerate() {
            if s.kind != PAGES {
                continue;
            }
            let mut at = s.offset;
            self.decode_section(i, |b| {
                view.write_all_at(b, at)?;
                at += b.len() as u64;
                progress.advance(b.len() as u64);
                Ok(())
            })?;
            if let Some(d) = &s.delta {
                d.apply(s, &view, chain).map_err(|e| ImageError::Corrupt {
                    path: self.path.clone(),
                    what: format!("pages section {i}: {e}"),
                })?;
            }
        }
        // Nobody changes it now: the restorers only read it.
        let seals = SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_SEAL;
        fcntl(view.as_fd(), FcntlArg::F_ADD_SEALS(seals)).map_err(|e| io_err(e.into()))?;
        Ok(Some(view))
    }
}

/// An image's file and section table: what reading a section needs.
#[derive(Debug, Clone, Copy)]
pub struct SectionData<'a> {
    path: &'a Path,
    file: &'a File,
    sections: &'a [Section],
}

impl SectionData<'_> {
    fn section(&self, index: usize) -> Result<&Section, ImageError> {
        self.sections
            .get(index)
            .ok_or_else(|| corrupt(self.path, format!("no section {index}")))
    }

    /// Reads a whole (small) section. A compressed one grows as it decompresses, up to the
    /// length the manifest declares.
    pub fn read(&self, index: usize) -> Result<Vec<u8>, ImageError> {
        let s = self.section(index)?;
        if s.compressed.is_some() {
            let mut out = Vec::new();
            self.decode(index, |b| {
                out.extend_from_slice(b);
                Ok(())
            })?;
            return Ok(out);
        }
        let mut buf = vec![0u8; s.len as usize];
        self.file
            .read_exact_at(&mut buf, s.offset)
            .map_err(|source| ImageError::Io {
                path: self.path.into(),
                source,
            })?;
        Ok(buf)
    }

    /// Reads whole section `index` if it is of `kind`, checked against its checksum even
    /// if the image was opened without checking its sections (a compressed one is as it
    /// decompresses).
    pub fn read_table(&self, index: usize, kind: &SectionKind) -> Result<Vec<u8>, ImageError> {
        let s = self.section(index)?;
        let name = kind.name();
        if &s.kind != kind {
            let what = format!("section {index} is not a {name} section");
            return Err(corrupt(self.path, what));
        }
        // Decoded, a table takes a few times its size: bounded like the manifest.
        if s.len > MAX_TABLE {
            let what = format!(
                "section {index} ({name}) declares {} bytes, more than a table may hold",
                s.len
            );
            return Err(corrupt(self.path, what));
        }
        let data = self.read(index)?;
        if s.compressed.is_none() && xxh64(&data, 0) != s.xxh64 {
            let what = format!("section {index} ({name}) checksum mismatch");
            return Err(corrupt(self.path, what));
        }
        Ok(data)
    }

    /// Writes section `index`'s content into `to` at `at`, streamed.
    pub fn copy_to(&self, index: usize, to: &File, at: u64) -> std::io::Result<()> {
        let s = self.section(index).map_err(std::io::Error::other)?;
        let mut pos = at;
        let mut write = |b: &[u8]| {
            to.write_all_at(b, pos)?;
            pos += b.len() as u64;
            Ok(())
        };
        if s.compressed.is_some() {
            return self.decode(index, write).map_err(std::io::Error::other);
        }
        // One copy in the kernel where it can (copy_file_range within a file system, else
        // splice), else through a buffer.
        let copied = copy_range(self.file, s.offset, to, at, s.len)
            .or_else(|_| splice_range(self.file, s.offset, to, at, s.len));
        if copied.is_ok() {
            return Ok(());
        }
        let mut src = FileRange::new(self.file, s.offset, s.len);
        let mut buf = vec![0u8; (1 << 20).min(s.len as usize)];
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            write(&buf[..n])?;
        }
        match pos - at == s.len {
            true => Ok(()),
            false => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }

    /// Hands the content of compressed section `index` to `sink` as it decompresses (nothing
    /// for a plain section, which has no `compressed` record). Errors name the section.
    fn decode(
        &self,
        index: usize,
        sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ImageError> {
        let s = self.section(index)?;
        let Some(c) = &s.compressed else {
            return Ok(());
        };
        let src =
            std::io::BufReader::with_capacity(1 << 16, FileRange::new(self.file, c.offset, c.len));
        codec::decode(c.codec, src, (s.len, s.xxh64), sink).map_err(|e| {
            corrupt(
                self.path,
                format!("compressed section {index} ({}): {e}", s.kind.name()),
            )
        })
    }
}
