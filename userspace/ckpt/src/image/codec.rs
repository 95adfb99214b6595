//! Compressed sections (`ckpt checkpoint --compress`): one zstd frame per section, streamed in
//! both directions so that neither side holds a section in memory.
//!
//! A compressed section keeps `offset`, `len` and `xxh64` for its content (what the rest of
//! ckpt sizes and indexes by; `offset` is then a place in the image's uncompressed view, see
//! `Image::pages_view`) and records where its compressed bytes are in the file, with their
//! own checksum ([`Compressed`]): corruption is caught before anything is decompressed, and
//! the decompressed bytes are checked against the declared length and checksum as they come.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::FileExt;
use xxhash_rust::xxh64::Xxh64;

/// The compressor. The names are the image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    Zstd,
    /// Kept as it is: a sample showed zstd would not shrink it (random or already compressed
    /// memory), and trying costs more than the pages' copy.
    None,
}

/// Where a compressed section's bytes are in the file, and their XXH64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compressed {
    pub codec: Codec,
    pub offset: u64,
    pub len: u64,
    pub xxh64: u64,
}

/// zstd's densest block is 4 bytes (an RLE block of 128 KiB): no frame of `n` bytes holds
/// more than `n * MAX_RATIO`. A manifest declaring more is refused before any allocation.
pub const MAX_RATIO: u64 = 128 << 10;

/// The default `--compress` level: zstd's own default, fast with a good ratio on memory.
pub const DEFAULT_LEVEL: i32 = 3;

/// Below this, a section is compressed on the calling thread: starting zstd's workers costs
/// more than they save.
const MT_THRESHOLD: u64 = 4 << 20;

/// What compressing a section produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    /// Compressed bytes written, and their XXH64.
    pub len: u64,
    pub xxh64: u64,
    /// XXH64 of the content.
    pub raw_xxh64: u64,
}

/// A writer counting and checksumming what goes through it.
struct Hashing<W> {
    inner: W,
    len: u64,
    sum: Xxh64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sum.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Compresses the `raw_len` bytes `src` yields into `out` (one zstd frame at `level`, with
/// several threads when large); returns the sizes and checksums. The content's XXH64 is
/// computed unless given (`raw_xxh64`: the module computed it while writing the pages).
/// Fails if `src` yields another length.
pub fn encode(
    mut src: impl Read,
    (raw_len, raw_xxh64): (u64, Option<u64>),
    level: i32,
    out: impl Write,
) -> io::Result<Encoded> {
    let sink = Hashing {
        inner: out,
        len: 0,
        sum: Xxh64::new(0),
    };
    let mut enc = zstd::stream::write::Encoder::new(sink, level)?;
    enc.include_checksum(false)?; // the section's own XXH64s cover it
    enc.include_contentsize(true)?;
    enc.set_pledged_src_size(Some(raw_len))?;
    if raw_len >= MT_THRESHOLD {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        enc.multithread(cpus as u32)?;
    }
    let mut raw_sum = Xxh64::new(0);
    let mut buf = vec![0u8; (1usize << 20).min(raw_len as usize)];
    let mut done = 0u64;
    while done < raw_len {
        let n = ((raw_len - done) as usize).min(buf.len());
        src.read_exact(&mut buf[..n])?;
        if raw_xxh64.is_none() {
            raw_sum.update(&buf[..n]);
        }
        enc.write_all(&buf[..n])?;
        done += n as u64;
    }
    let sink = enc.finish()?;
    Ok(Encoded {
        len: sink.len,
        xxh64: sink.sum.digest(),
        raw_xxh64: raw_xxh64.unwrap_or_else(|| raw_sum.digest()),
    })
}

/// Why a compressed section's content is not what its record declares.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("its compressed data is not valid zstd ({0})")]
    Invalid(String),
    #[error("it decompresses to {got} bytes, the manifest declares {declared}")]
    Short { got: u64, declared: u64 },
    #[error("it decompresses to more than the {declared} bytes the manifest declares")]
    Long { declared: u64 },
    #[error("its decompressed content does not match its checksum")]
    Checksum,
    #[error("{0}")]
    Io(String),
}

/// The share of a sample zstd must save for a section to be compressed: less, it is kept as
/// it is ([`Codec::None`]).
const WORTH: f64 = 0.05;
/// The sample: this many pieces of [`SAMPLE_PIECE`] bytes, spread evenly over the content
/// (many small ones, so that a few odd pages, such as a heap's first, do not decide for a
/// section of random bytes).
const SAMPLE_PIECES: u64 = 64;
const SAMPLE_PIECE: u64 = 4 << 10;

/// Whether compressing the `len` bytes at `offset` of `file` looks worth it, from a sample
/// compressed at zstd's fastest level.
pub fn worth_compressing(file: &File, (offset, len): (u64, u64)) -> io::Result<bool> {
    let piece = SAMPLE_PIECE.min(len / SAMPLE_PIECES);
    if piece == 0 {
        return Ok(true);
    }
    let mut sample = vec![0u8; (piece * SAMPLE_PIECES) as usize];
    for (k, chunk) in sample.chunks_mut(piece as usize).enumerate() {
        file.read_exact_at(chunk, offset + k as u64 * (len / SAMPLE_PIECES))?;
    }
    let packed = zstd::bulk::compress(&sample, 1)?;
    Ok((packed.len() as f64) < sample.len() as f64 * (1.0 - WORTH))
}

/// Hands the content of a section stored as `codec` made it (`src`) to `sink` in pieces of
/// at most 1 MiB: exactly `raw_len` bytes whose XXH64 is `raw_xxh64`, or an error (nothing
/// beyond `raw_len` is produced).
pub fn decode(
    codec: Codec,
    src: impl BufRead,
    sums: (u64, u64),
    sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<(), DecodeError> {
    match codec {
        Codec::None => copy_checked(src, sums, sink),
        Codec::Zstd => {
            let invalid = |e: io::Error| DecodeError::Invalid(e.to_string());
            // Reading from `src` as it is: no second input buffer.
            let mut dec = zstd::stream::read::Decoder::with_buffer(src).map_err(invalid)?;
            // The window (memory zstd allocates) a frame may ask for: what its declared
            // content needs, as `encode` makes it, not the 128 MiB zstd allows by default.
            dec.window_log_max(window_log(sums.0)).map_err(invalid)?;
            copy_checked(dec, sums, sink)
        }
    }
}

/// The window (as a power of two) zstd uses for `raw_len` bytes compressed with their size
/// pledged: the smallest holding them, at least its minimum (1 KiB), at most what its
/// levels use (128 MiB).
fn window_log(raw_len: u64) -> u32 {
    (64 - raw_len.saturating_sub(1).leading_zeros()).clamp(10, 27)
}

/// Copies what `src` yields to `sink`, checking it is `raw_len` bytes whose XXH64 is
/// `raw_xxh64`.
fn copy_checked(
    mut src: impl Read,
    (raw_len, raw_xxh64): (u64, u64),
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<(), DecodeError> {
    let invalid = |e: io::Error| DecodeError::Invalid(e.to_string());
    // Small and fixed: the declared length is the image's word, not yet checked.
    let mut buf = vec![0u8; raw_len.saturating_add(1).min(1 << 16) as usize];
    let mut sum = Xxh64::new(0);
    let mut got = 0u64;
    loop {
        // One byte more than is left, to see a frame longer than declared.
        let want = (raw_len - got).saturating_add(1).min(buf.len() as u64) as usize;
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(invalid(e)),
        };
        if got + n as u64 > raw_len {
            return Err(DecodeError::Long { declared: raw_len });
        }
        sum.update(&buf[..n]);
        sink(&buf[..n]).map_err(|e| DecodeError::Io(e.to_string()))?;
        got += n as u64;
    }
    if got != raw_len {
        return Err(DecodeError::Short {
            got,
            declared: raw_len,
        });
    }
    if sum.digest() != raw_xxh64 {
        return Err(DecodeError::Checksum);
    }
    Ok(())
}

/// `len` bytes of `file` from `offset`, as a reader.
pub struct FileRange<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl<'a> FileRange<'a> {
    pub fn new(file: &'a File, offset: u64, len: u64) -> Self {
        FileRange {
            file,
            at: offset,
            end: offset.saturating_add(len),
        }
    }
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = ((self.end - self.at) as usize).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..n], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(raw: &[u8]) -> (Vec<u8>, Encoded) {
        let mut out = Vec::new();
        let e = encode(raw, (raw.len() as u64, None), DEFAULT_LEVEL, &mut out).unwrap();
        (out, e)
    }

    fn decoded(z: &[u8], raw_len: u64, raw_xxh64: u64) -> Result<Vec<u8>, DecodeError> {
        let mut got = Vec::new();
        decode(Codec::Zstd, z, (raw_len, raw_xxh64), |b| {
            got.extend_from_slice(b);
            Ok(())
        })?;
        Ok(got)
    }

    /// A pattern that compresses well, long enough for several threads and pieces.
    fn pattern(len: usize) -> Vec<u8> {
        b"ckpt compresses this. "
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()
    }

    #[test]
    fn round_trip_small_large_and_random() {
        let random: Vec<u8> = (0..3 << 20).map(|_| fastrand::u8(..)).collect();
        for raw in [Vec::new(), vec![7u8; 832], pattern(9 << 20), random] {
            let (z, e) = encoded(&raw);
            assert_eq!(e.len, z.len() as u64);
            assert_eq!(e.xxh64, xxhash_rust::xxh64::xxh64(&z, 0));
            assert_eq!(e.raw_xxh64, xxhash_rust::xxh64::xxh64(&raw, 0));
            assert_eq!(decoded(&z, raw.len() as u64, e.raw_xxh64).unwrap(), raw);
        }
    }

    #[test]
    fn compressible_content_shrinks() {
        let raw = pattern(9 << 20);
        let (z, _) = encoded(&raw);
        assert!(
            z.len() * 100 < raw.len(),
            "{} bytes from {}",
            z.len(),
            raw.len()
        );
    }

    #[test]
    fn truncated_input_is_an_error() {
        let raw = pattern(2 << 20);
        let (z, e) = encoded(&raw);
        for cut in [0, 1, z.len() / 2, z.len() - 1] {
            let err = decoded(&z[..cut], raw.len() as u64, e.raw_xxh64).unwrap_err();
            assert!(
                matches!(err, DecodeError::Invalid(_) | DecodeError::Short { .. }),
                "cut at {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let raw = pattern(1 << 20);
        let (mut z, e) = encoded(&raw);
        let mid = z.len() / 2;
        z[mid] ^= 0x5a;
        assert!(decoded(&z, raw.len() as u64, e.raw_xxh64).is_err());
    }

    #[test]
    fn content_beyond_the_declared_size_is_refused_without_producing_it() {
        let raw = pattern(3 << 20);
        let (z, e) = encoded(&raw);
        // Within the window the declared size allows (4 MiB): refused as it goes past.
        let declared = 5 << 19;
        let mut produced = 0u64;
        let err = decode(Codec::Zstd, &z[..], (declared, e.raw_xxh64), |b| {
            produced += b.len() as u64;
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err, DecodeError::Long { declared });
        assert!(produced <= declared);
        // Declaring a third: its window is already too large.
        let err = decoded(&z, 1 << 20, e.raw_xxh64).unwrap_err();
        assert!(matches!(err, DecodeError::Invalid(_)), "{err:?}");
        let err = decoded(&z, 4 << 20, e.raw_xxh64).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Short {
                got: 3 << 20,
                declared: 4 << 20
            }
        );
    }

    #[test]
    fn wrong_content_checksum_is_refused() {
        let raw = pattern(100_000);
        let (z, e) = encoded(&raw);
        let err = decoded(&z, raw.len() as u64, e.raw_xxh64 ^ 1).unwrap_err();
        assert_eq!(err, DecodeError::Checksum);
    }

    #[test]
    fn encode_refuses_a_source_shorter_than_declared() {
        let mut out = Vec::new();
        assert!(encode(&[1u8; 10][..], (20, None), DEFAULT_LEVEL, &mut out).is_err());
    }

    /// Found by the reader fuzzing: a frame may ask zstd for a window (memory) of up to
    /// 128 MiB whatever its content; one asking more than its declared content needs is
    /// refused before zstd allocates it.
    #[test]
    fn a_frame_asking_a_larger_window_than_its_content_needs_is_refused() {
        let raw = pattern(3000);
        let mut z = Vec::new();
        let mut enc = zstd::stream::write::Encoder::new(&mut z, DEFAULT_LEVEL).unwrap();
        enc.include_contentsize(false).unwrap(); // the size unknown: the window is used
        enc.window_log(27).unwrap();
        enc.write_all(&raw).unwrap();
        enc.finish().unwrap();
        let sum = xxhash_rust::xxh64::xxh64(&raw, 0);
        let err = decoded(&z, raw.len() as u64, sum).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Invalid(e) if e.contains("memory")),
            "{err:?}"
        );
        // What encode makes, at every level, fits the window its content needs.
        for level in [1, DEFAULT_LEVEL, 19] {
            let mut z = Vec::new();
            let e = encode(&raw[..], (3000, None), level, &mut z).unwrap();
            assert_eq!(
                decoded(&z, 3000, e.raw_xxh64).unwrap(),
                raw,
                "level {level}"
            );
        }
    }

    #[test]
    fn a_given_content_checksum_is_recorded_as_it_is() {
        let mut out = Vec::new();
        let e = encode(&[1u8; 10][..], (10, Some(77)), DEFAULT_LEVEL, &mut out).unwrap();
        assert_eq!(e.raw_xxh64, 77);
    }
}

#[cfg(test)]
mod sample_tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn memfd_with(data: &[u8]) -> File {
        let fd =
            nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
        let f = File::from(fd);
        f.write_all_at(data, 0).unwrap();
        f
    }

    #[test]
    fn random_bytes_are_not_worth_compressing_a_pattern_is() {
        let random: Vec<u8> = (0..4 << 20).map(|_| fastrand::u8(..)).collect();
        let f = memfd_with(&random);
        assert!(!worth_compressing(&f, (0, random.len() as u64)).unwrap());
        // Random but for its first 64 KiB (a heap's start, say): still not worth it.
        let mut mostly = random.clone();
        mostly[..64 << 10].fill(0);
        let f = memfd_with(&mostly);
        assert!(!worth_compressing(&f, (0, mostly.len() as u64)).unwrap());
        let pattern: Vec<u8> = b"abc".iter().copied().cycle().take(4 << 20).collect();
        let f = memfd_with(&pattern);
        assert!(worth_compressing(&f, (0, pattern.len() as u64)).unwrap());
        // Too small to sample: compressed.
        assert!(worth_compressing(&f, (0, 3)).unwrap());
    }

    #[test]
    fn stored_content_is_checked_like_decompressed_content() {
        let data = vec![5u8; 3000];
        let sum = xxhash_rust::xxh64::xxh64(&data, 0);
        let mut got = Vec::new();
        decode(Codec::None, &data[..], (3000, sum), |b| {
            got.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, data);
        let short = decode(Codec::None, &data[..2000], (3000, sum), |_| Ok(()));
        assert!(matches!(short, Err(DecodeError::Short { got: 2000, .. })));
        let long = decode(Codec::None, &data[..], (2000, sum), |_| Ok(()));
        assert_eq!(long, Err(DecodeError::Long { declared: 2000 }));
        let wrong = decode(Codec::None, &data[..], (3000, sum ^ 1), |_| Ok(()));
        assert_eq!(wrong, Err(DecodeError::Checksum));
    }
}
