//! The fixed-size header at the start of an image: magic, format version, where the manifest
//! is and its checksum, the file's length, and a checksum of the header itself.

use super::{corrupt, ImageError, FORMAT_VERSION, MAGIC, MIN_FORMAT_VERSION};
use std::path::Path;
use xxhash_rust::xxh64::xxh64;

pub(super) const HEADER_LEN: usize = 136;

pub(super) struct Header {
    pub(super) version: u32,
    pub(super) arch: String,
    pub(super) kernel_release: String,
    pub(super) manifest_offset: u64,
    pub(super) manifest_len: u64,
    pub(super) file_len: u64,
    pub(super) manifest_sum: u64,
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
    pub(super) fn encode(&self) -> [u8; HEADER_LEN] {
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
        let sum = xxh64(&b[..128], 0);
        b[128..136].copy_from_slice(&sum.to_le_bytes());
        b
    }

    pub(super) fn decode(path: &Path, b: &[u8; HEADER_LEN]) -> Result<Self, ImageError> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        if b[0..8] != MAGIC {
            return Err(ImageError::Magic { path: path.into() });
        }
        // The version comes before the checksum test, so an image of another version gets a
        // message naming both versions rather than "corrupt".
        let version = u32_at(8);
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(ImageError::Version {
                path: path.into(),
                found: version,
            });
        }
        if xxh64(&b[..128], 0) != u64_at(128) {
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
