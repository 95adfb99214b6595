//! Reading an image: [`Image::open`] verifies every byte before returning it.

use super::header::{Header, HEADER_LEN};
use super::{corrupt, Envelope, ImageError, Meta, Section, Validate, PAGE, PAGES};
use serde::de::DeserializeOwned;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh64::{xxh64, Xxh64};

/// The manifest is JSON metadata; anything larger than this is not a ckpt image.
const MAX_MANIFEST: u64 = 256 << 20;

/// An image whose every byte has been verified.
#[derive(Debug)]
pub struct Image<M> {
    pub path: PathBuf,
    pub file: File,
    pub file_len: u64,
    pub meta: Meta,
    pub sections: Vec<Section>,
    pub manifest: M,
}

impl<M: DeserializeOwned + Validate> Image<M> {
    /// Opens and fully verifies an image: header, manifest, every section's checksum, zero
    /// gaps, and the manifest's internal consistency.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        Self::open_checking(path, true)
    }

    /// Opens an image, verifying its header and manifest (checksum, consistency) but not
    /// its sections' bytes: for reading what it describes (an incremental checkpoint's
    /// parent), never for restoring from it.
    pub fn open_manifest(path: &Path) -> Result<Self, ImageError> {
        Self::open_checking(path, false)
    }

    fn open_checking(path: &Path, sections: bool) -> Result<Self, ImageError> {
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
        let image = Image {
            path: path.into(),
            file,
            file_len: h.file_len,
            meta,
            sections: envelope.sections,
            manifest: envelope.manifest,
        };
        if sections {
            image.verify_sections(h.manifest_offset)?;
        }
        image
            .manifest
            .validate(&image.sections)
            .map_err(|what| corrupt(path, what))?;
        Ok(image)
    }
}

impl<M> Image<M> {
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
        for (i, s) in self.sections.iter().enumerate() {
            let end = s
                .offset
                .checked_add(s.len)
                .ok_or_else(|| corrupt(path, "section overflow"))?;
            if s.offset < pos || end > data_end {
                return Err(corrupt(path, format!("section {i} out of place")));
            }
            if s.kind == PAGES && (s.offset % PAGE != 0 || s.len % PAGE != 0) {
                return Err(corrupt(path, format!("pages section {i} not page-aligned")));
            }
            check_zero(pos, s.offset, &self.file)?;
            let mut sum = Xxh64::new(0);
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
            if sum.digest() != s.xxh64 {
                return Err(corrupt(
                    path,
                    format!("section {i} ({:?}) checksum mismatch", s.kind),
                ));
            }
            pos = end;
        }
        check_zero(pos, data_end, &self.file)
    }

    /// Reads a whole (small) section.
    pub fn read_section(&self, index: usize) -> Result<Vec<u8>, ImageError> {
        let s = self
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
