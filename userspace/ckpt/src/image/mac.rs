//! Keyed MACs (`ckpt checkpoint --key FILE`, `ckpt restore --key FILE`): whoever can write
//! an image decides what a restore runs, and the checksums only catch accidents. An image
//! written with a key carries a keyed BLAKE3 of all of its bytes; read with the key, an image
//! without one, or whose MAC does not match, is refused.
//!
//! The MAC is in the header page, right after the header ([`MAC_AT`]); it is computed over the
//! whole file with those 32 bytes zero. Such an image names format version
//! [`MAC_FORMAT_VERSION`], so that an older ckpt refuses it by name instead of calling its
//! header padding corrupt; images written without a key keep their version.
//!
//! The key file holds any bytes (at least [`MIN_KEY_LEN`]: `head -c 32 /dev/urandom`), from
//! which the 256-bit BLAKE3 key is derived; like ssh with a private key, ckpt refuses a key
//! file that group or others may read or write, or that someone else owns.

use super::{ImageError, PAGE};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where the MAC is in the file: the header page, after the header.
pub const MAC_AT: usize = super::header::HEADER_LEN;
pub const MAC_LEN: usize = 32;
/// Images carrying a MAC name this version (and only they).
pub const MAC_FORMAT_VERSION: u32 = 5;
/// A shorter key file is a mistake (an empty file, a typo'd passphrase).
pub const MIN_KEY_LEN: usize = 16;
/// A key file is small; a larger file is not one.
const MAX_KEY_FILE: u64 = 4096;
/// BLAKE3's key derivation context: keys for this purpose only.
const CONTEXT: &str = "ckpt image MAC key, version 1";

/// A key for image MACs, read from a key file.
#[derive(Clone)]
pub struct MacKey {
    key: [u8; 32],
    /// The file it came from, for messages.
    pub path: PathBuf,
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MacKey({})", self.path.display()) // never the key
    }
}

impl MacKey {
    /// Reads the key file at `path`: a regular file owned by us (or root), that neither group
    /// nor others may read or write, of [`MIN_KEY_LEN`] to 4096 bytes.
    pub fn load(path: &Path) -> Result<MacKey, ImageError> {
        let refuse = |why: String| ImageError::Key {
            path: path.into(),
            why,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| refuse(e.to_string()))?;
        // Checked on the opened file: what is read is what was checked.
        let meta = file.metadata().map_err(|e| refuse(e.to_string()))?;
        let me = nix::unistd::geteuid().as_raw();
        if !meta.is_file() {
            return Err(refuse("not a regular file".into()));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(refuse(format!(
                "group or others may read or write it (mode {:o}): `chmod 600 {}`",
                meta.mode() & 0o777,
                path.display()
            )));
        }
        if meta.uid() != me && meta.uid() != 0 {
            return Err(refuse(format!(
                "it is owned by uid {}, not by you (uid {me}) or root",
                meta.uid()
            )));
        }
        if meta.len() > MAX_KEY_FILE {
            return Err(refuse(format!("{} bytes: not a key file", meta.len())));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| refuse(e.to_string()))?;
        if bytes.len() < MIN_KEY_LEN {
            return Err(refuse(format!(
                "it holds {} bytes, a key needs at least {MIN_KEY_LEN} \
                 (make one with `head -c 32 /dev/urandom > FILE`)",
                bytes.len()
            )));
        }
        Ok(MacKey {
            key: blake3::derive_key(CONTEXT, &bytes),
            path: path.into(),
        })
    }

    /// A hasher computing the MAC of an image, fed its bytes in order (the MAC field zero).
    pub fn hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.key)
    }
}

/// The MAC of the `len`-byte image `file` (its MAC field read as zero), read from the start.
pub fn compute(key: &MacKey, file: &File, len: u64) -> std::io::Result<[u8; MAC_LEN]> {
    let mut h = key.hasher();
    let mut buf = vec![0u8; (1 << 20).min(len) as usize];
    let mut at = 0u64;
    while at < len {
        let n = ((len - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        if at == 0 {
            zero_field(&mut buf[..n]);
        }
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(*h.finalize().as_bytes())
}

/// Zeroes the MAC field in `page`, the start of the file.
pub fn zero_field(page: &mut [u8]) {
    let end = (MAC_AT + MAC_LEN).min(page.len());
    if MAC_AT < end {
        page[MAC_AT..end].fill(0);
    }
}

/// Whether `found` is the MAC `h` computed, in constant time (blake3's comparison).
pub fn matches(h: &blake3::Hasher, found: &[u8; MAC_LEN]) -> bool {
    h.finalize() == blake3::Hash::from_bytes(*found)
}

const _: () = assert!(MAC_AT + MAC_LEN <= PAGE as usize);
