//! Writing an image: sections appended (or written by the kernel module straight into the
//! file), then the manifest and the header, under a temporary name until it is durable.

use super::header::Header;
use super::{Envelope, Meta, Section, SectionKind, FORMAT_VERSION, PAGE, PAGES};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh64::{xxh64, Xxh64};

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
    /// Sections written by someone else (the kernel module): their checksum is computed at
    /// `finish`, by reading them back.
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
                kind: PAGES,
                offset: self.pos,
                len: 0,
                xxh64: 0,
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

    /// Where pages written into the file by someone else must start (page-aligned); call
    /// [`ImageWriter::external_pages_written`] after they are.
    pub fn external_pages_offset(&mut self) -> io::Result<u64> {
        self.open_pages = None;
        self.pad_to(PAGE)?;
        Ok(self.pos)
    }

    /// Records `len` bytes of pages written by someone else at the offset
    /// `external_pages_offset` returned, as a new pages section whose XXH64 the writer
    /// computed while writing (nothing is read back).
    pub fn external_pages_written(&mut self, len: u64, xxh64: u64) -> io::Result<()> {
        assert_eq!(len % PAGE, 0);
        if len == 0 {
            return Ok(());
        }
        self.sections.push(Section {
            kind: PAGES,
            offset: self.pos,
            len,
            xxh64,
        });
        self.pos += len;
        self.file.seek(SeekFrom::Start(self.pos))?;
        Ok(())
    }

    /// The file the image is being written to (for the kernel module to write into).
    pub fn file(&self) -> &File {
        &self.file
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
        self.sections.push(Section {
            kind,
            offset,
            len,
            xxh64: sum.digest(),
        });
        Ok(self.sections.len() - 1)
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
            xxh64: xxh64(data, 0),
        });
        Ok(self.sections.len() - 1)
    }

    /// Writes the manifest (the envelope with the sections, then `manifest`'s fields) and the
    /// header, fsyncs, and renames into place. Returns the size.
    pub fn finish<M: Serialize>(mut self, manifest: &M) -> io::Result<u64> {
        let envelope = Envelope {
            meta: Meta::now(),
            sections: std::mem::take(&mut self.sections),
            manifest,
        };
        let json = serde_json::to_vec(&envelope).map_err(io::Error::other)?;
        let manifest_offset = self.pos;
        self.write_all(&json)?;
        let header = Header {
            version: FORMAT_VERSION,
            arch: envelope.meta.arch,
            kernel_release: envelope.meta.kernel_release,
            manifest_offset,
            manifest_len: json.len() as u64,
            file_len: self.pos,
            manifest_sum: xxh64(&json, 0),
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
