//! The image container: one file holding a checkpoint, verified before anyone acts on it. It
//! knows sections, checksums and the atomic write, and nothing of what a process is: the
//! manifest's schema belongs to the caller (`crate::manifest`), which only has to be serde
//! and to check its own consistency ([`Validate`]).
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! 0      header (HEADER_LEN bytes, zero-padded to PAGE): magic, format version, arch,
//!        kernel release, manifest offset/length/checksum, file length, header checksum
//! PAGE   sections: page data (4096-aligned, so a restore can map it), small binary blobs
//! ...    the manifest: serde_json of the envelope (format version, ckpt version, arch, kernel
//!        release, creation time, the sections with a checksum each) and the caller's fields
//! ```
//!
//! Checksums are XXH3-64 (xxhash-rust): CRC32C was 4x slower under the test guest's emulated
//! CPU, where checksumming dominated checkpoint and restore times.
//!
//! Every byte is covered: the header by its own checksum, the manifest by the header's, each
//! section by the manifest's, and the gaps between sections must be zero. [`Image::open`]
//! verifies all of it before anyone acts on the image. Files are written under a temporary
//! name, fsynced and renamed ([`ImageWriter`]), so a final name never holds a partial image.
//!
//! Extending: new data goes into new optional manifest fields or new section kinds; a reader
//! refuses any other `FORMAT_VERSION`, naming both (like Firecracker's versioned state).

pub mod background;
pub mod codec;
mod copy;
pub mod delta;
pub mod flat;
mod header;
pub mod mac;
pub mod mapped;
mod reader;
mod writer;

pub use codec::{Codec, Compressed};
pub use delta::Delta;
pub use mac::MacKey;
pub use reader::{Image, SectionData};
pub use writer::ImageWriter;

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};

pub const MAGIC: [u8; 8] = *b"CKPTIMG\0";
/// 2: pipes and socket pairs moved from each process to the tree (`pipes`, `socket_pairs`
/// beside `processes`), processes gained `pgid` and `sid`, `zombies` was added.
/// 4: compressed sections (`Section::compressed`). An image without any is still written as
/// version 3, so that a ckpt of before reads it; one with them names version 4 to that ckpt
/// instead of failing on its section table.
/// 5: a keyed MAC after the header (`mac`), written with a key only; otherwise as 3 or 4.
/// 6: pages stored as differences from an earlier image's (`Section::delta`), written by
/// incremental checkpoints without a key only; otherwise as 3, 4 or 5.
/// 7: parts of the manifest in sections of their own ([`ImageWriter::add_table`]: a
/// process's mappings, `memory::table`), written without a key only; otherwise as 3 to 6.
pub const FORMAT_VERSION: u32 = TABLES_FORMAT_VERSION;
/// The version of an image with a part of its manifest in a section (and no MAC).
pub const TABLES_FORMAT_VERSION: u32 = 7;
/// The version of an image with a pages section stored as differences (and no MAC).
pub const DELTA_FORMAT_VERSION: u32 = 6;
/// The version of an image with compressed sections and no MAC.
pub const COMPRESSED_FORMAT_VERSION: u32 = 4;
/// The oldest version read.
pub const MIN_FORMAT_VERSION: u32 = 3;
/// The version of an image without compressed sections.
pub(crate) const PLAIN_FORMAT_VERSION: u32 = 3;
pub const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a ckpt image (bad magic)")]
    Magic { path: PathBuf },
    #[error(
        "{path} has image format version {found}; this ckpt reads versions \
         {MIN_FORMAT_VERSION} to {FORMAT_VERSION}"
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
    #[error("parent image {parent} of {path} is missing")]
    ParentMissing { path: PathBuf, parent: PathBuf },
    #[error(
        "parent image {parent} of {path} does not match: its id is {found}, expected {expected} \
         (it was replaced or taken again since)"
    )]
    ParentMismatch {
        path: PathBuf,
        parent: PathBuf,
        found: String,
        expected: String,
    },
    #[error("parent image {parent} of {path} cannot be used: {source}")]
    ParentBad {
        path: PathBuf,
        parent: PathBuf,
        source: Box<ImageError>,
    },
    #[error("key file {path}: {why}")]
    Key { path: PathBuf, why: String },
    #[error(
        "{path} carries no MAC but a key was given: it was written without --key, or its MAC \
         was removed"
    )]
    MacMissing { path: PathBuf },
    #[error(
        "{path}: its MAC does not match the key: it was written with another key, or changed \
         since"
    )]
    MacMismatch { path: PathBuf },
    #[error("the chain of parent images of {path} is longer than {max} images")]
    ChainTooLong { path: PathBuf, max: usize },
}

pub(crate) fn corrupt(path: &Path, what: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        path: path.into(),
        what: what.into(),
    }
}

/// What a section holds, as a name in the manifest. The container knows one kind, [`PAGES`]
/// (page-aligned, so that it can be mapped); every other kind is a blob whose name the
/// resource that writes it defines next to its code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SectionKind(Cow<'static, str>);

impl SectionKind {
    pub const fn named(name: &'static str) -> Self {
        SectionKind(Cow::Borrowed(name))
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

/// Memory pages, 4096-aligned.
pub const PAGES: SectionKind = SectionKind::named("pages");

/// A section: its content's place, length and XXH64. Stored compressed, `offset` is the
/// content's place in the image's uncompressed view (where page runs point, see
/// [`Image::pages_view`]) and `compressed` says where its bytes are in the file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Section {
    pub kind: SectionKind,
    pub offset: u64,
    pub len: u64,
    pub xxh64: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed: Option<Compressed>,
    /// Pages stored as differences from an earlier image's ([`delta`]; compressed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
}

impl Section {
    /// Where its bytes are in the file: (offset, length, XXH64).
    pub fn stored(&self) -> (u64, u64, u64) {
        match &self.compressed {
            Some(c) => (c.offset, c.len, c.xxh64),
            None => (self.offset, self.len, self.xxh64),
        }
    }

    /// Whether it is a pages section whose content holds the `len` bytes at `offset` (in the
    /// image's view), without overflow whatever the numbers.
    pub fn holds_pages(&self, offset: u64, len: u64) -> bool {
        self.kind == PAGES
            && offset >= self.offset
            && offset.checked_add(len).is_some_and(|e| {
                self.offset
                    .checked_add(self.len)
                    .is_some_and(|end| e <= end)
            })
    }
}

/// Facts about an image as a whole, kept in the manifest next to the caller's fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    pub format_version: u32,
    pub ckpt_version: String,
    pub arch: String,
    pub kernel_release: String,
    pub created_unix_ms: u64,
}

impl Meta {
    /// For an image written now, on this machine.
    fn now(format_version: u32) -> Self {
        Meta {
            format_version,
            ckpt_version: env!("CARGO_PKG_VERSION").into(),
            arch: std::env::consts::ARCH.into(),
            kernel_release: kernel_release(),
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }
}

/// The running kernel's release (uname -r).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The manifest as stored: the container's fields, then the caller's. Field names are the
/// format: renaming one is a format change. Read through [`flat`] (see there why).
#[derive(Serialize)]
struct Envelope<M> {
    #[serde(flatten)]
    meta: Meta,
    sections: Vec<Section>,
    #[serde(flatten)]
    manifest: M,
}

impl<'de, M: flat::FromRawObject> Deserialize<'de> for Envelope<M> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Own {
            sections: Vec<Section>,
        }
        let raw = flat::RawObject::deserialize(d)?;
        Ok(Envelope {
            meta: raw.part()?,
            sections: raw.part::<Own, _>()?.sections,
            manifest: M::from_raw(&raw)?,
        })
    }
}

/// A manifest checks its own consistency against the sections it refers to; the container
/// calls it after verifying every checksum. Image data is never trusted: anything a restore
/// indexes or sizes by must be checked here.
pub trait Validate {
    fn validate(&self, sections: &[Section]) -> Result<(), String>;

    /// Reads the parts of the manifest stored as sections of their own (large tables,
    /// written with [`ImageWriter::add_table`]) into it, before [`Validate::validate`].
    fn load_tables(&mut self, _read: &ReadTable) -> Result<(), String> {
        Ok(())
    }
}

/// Gives the content of section `index` if it is of `kind`, checked against its checksum
/// (whatever the image was opened to verify): what [`Validate::load_tables`] reads with.
pub type ReadTable<'a> = dyn Fn(usize, &SectionKind) -> Result<Vec<u8>, String> + 'a;

/// Whether section `index` exists and is of `kind`.
pub fn section_is(sections: &[Section], index: usize, kind: &SectionKind) -> bool {
    sections.get(index).is_some_and(|s| &s.kind == kind)
}

#[cfg(test)]
mod tests;
