//! The container alone: round trip, every corruption caught, versions named, no leftovers.

use super::*;
use crate::progress::Progress;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// A manifest of the container's tests: it refers to one blob section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TestManifest {
    pub blob: usize,
    pub page_offset: u64,
}

const BLOB: SectionKind = SectionKind::named("test_blob");

impl super::flat::FromRawObject for TestManifest {}

impl Validate for TestManifest {
    fn validate(&self, sections: &[Section]) -> Result<(), String> {
        if !section_is(sections, self.blob, &BLOB) {
            return Err("bad blob section".into());
        }
        Ok(())
    }
}

fn sample_pages() -> Vec<u8> {
    (0..3 * PAGE as usize)
        .map(|i| (i * 31 % 251) as u8)
        .collect()
}

/// A small, valid image with three pages and a blob.
pub(crate) fn sample_image(path: &Path) -> TestManifest {
    sample_image_at(path, None)
}

/// The sample image, its sections compressed at `level` if given.
fn sample_image_at(path: &Path, level: Option<i32>) -> TestManifest {
    let mut w = ImageWriter::create(path).unwrap();
    if let Some(level) = level {
        w.compress(level).unwrap();
    }
    let pages = sample_pages();
    let page_offset = w.append_pages(&pages).unwrap();
    let blob = w.add_blob(BLOB, &[7u8; 832]).unwrap();
    let m = TestManifest { blob, page_offset };
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
    let img = Image::<TestManifest>::open(&p).unwrap();
    assert_eq!(img.manifest, m);
    assert_eq!(img.sections.len(), 2);
    // Nothing compressed: still the version a ckpt of before reads.
    assert_eq!(img.meta.format_version, PLAIN_FORMAT_VERSION);
    assert!(img.pages_view(&Progress::hidden(), &[]).unwrap().is_none());
    assert_eq!(img.read_section(1).unwrap(), vec![7u8; 832]);
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn every_flipped_byte_and_truncation_is_rejected() {
    every_flipped_byte_and_truncation_is_rejected_at(None);
}

#[test]
fn every_flipped_byte_and_truncation_of_a_compressed_image_is_rejected() {
    every_flipped_byte_and_truncation_is_rejected_at(Some(codec::DEFAULT_LEVEL));
}

fn every_flipped_byte_and_truncation_is_rejected_at(level: Option<i32>) {
    let d = tmpdir();
    let p = d.join("img");
    sample_image_at(&p, level);
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
        assert!(
            Image::<TestManifest>::open(&bad).is_err(),
            "variant {i} was accepted"
        );
    }
    // One byte appended is caught too.
    let mut data = good.clone();
    data.push(0);
    std::fs::write(&bad, &data).unwrap();
    assert!(matches!(
        Image::<TestManifest>::open(&bad),
        Err(ImageError::Length { .. })
    ));
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn another_version_is_named() {
    let d = tmpdir();
    let p = d.join("img");
    sample_image(&p);
    let mut data = std::fs::read(&p).unwrap();
    let future = FORMAT_VERSION + 1;
    data[8..12].copy_from_slice(&future.to_le_bytes());
    std::fs::write(&p, &data).unwrap();
    let err = Image::<TestManifest>::open(&p).unwrap_err().to_string();
    assert!(
        err.contains(&format!("format version {future}"))
            && err.contains(&format!(
                "versions {MIN_FORMAT_VERSION} to {FORMAT_VERSION}"
            )),
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

/// An image holds secrets: only its owner may read it, even when the umask would allow more,
/// and also when it replaces an older image that others could read.
#[test]
fn image_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let d = tmpdir();
    let p = d.join("img");
    std::fs::write(&p, b"an older, world-readable image").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    sample_image(&p);
    nix::sys::stat::umask(old);
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "image mode {mode:o}");
    std::fs::remove_dir_all(d).unwrap();
}

/// The module's XXH64 (the checksum of page sections, computed while it writes them)
/// agrees with the crate that verifies images, for whole stripes and pages.
#[test]
fn the_modules_xxh64_agrees_with_the_verifier() {
    let data: Vec<u8> = (0..3 * PAGE as usize + 96)
        .map(|i| (i * 31 + i / 7) as u8)
        .collect();
    for len in [0, 32, 64, 4096, 3 * 4096, 3 * 4096 + 96] {
        let mut h = ckpt_abi::xxh64::Xxh64::new();
        // Fed in pieces, as the module feeds pages.
        for piece in data[..len].chunks(4096) {
            h.update(piece);
        }
        assert_eq!(
            h.digest(),
            xxhash_rust::xxh64::xxh64(&data[..len], 0),
            "len {len}"
        );
    }
}

#[test]
fn compressed_round_trip() {
    let d = tmpdir();
    let (plain, packed) = (d.join("plain"), d.join("packed"));
    sample_image(&plain);
    let m = sample_image_at(&packed, Some(codec::DEFAULT_LEVEL));
    let img = Image::<TestManifest>::open(&packed).unwrap();
    assert_eq!(img.manifest, m);
    assert_eq!(img.meta.format_version, COMPRESSED_FORMAT_VERSION);
    assert!(img.sections.iter().all(|s| s.compressed.is_some()));
    assert_eq!(img.read_section(m.blob).unwrap(), vec![7u8; 832]);
    // The pages are where the manifest says, in the view.
    let view = img
        .pages_view(&Progress::hidden(), &[])
        .unwrap()
        .expect("a view of compressed pages");
    let mut pages = vec![0u8; 3 * PAGE as usize];
    view.read_exact_at(&mut pages, m.page_offset).unwrap();
    assert_eq!(pages, sample_pages());
    // Sealed: nobody writes into it.
    assert!(view.write_all_at(&[1], m.page_offset).is_err());
    // A section copied out streams the same content.
    let out = tempfile_in(&d);
    img.data().copy_to(m.blob, &out, 5).unwrap();
    let mut copied = vec![0u8; 832];
    out.read_exact_at(&mut copied, 5).unwrap();
    assert_eq!(copied, vec![7u8; 832]);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&packed) < size(&plain),
        "{} >= {}",
        size(&packed),
        size(&plain)
    );
    std::fs::remove_dir_all(d).unwrap();
}

fn tempfile_in(d: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(d.join("out"))
        .unwrap()
}

/// Rewrites the image's manifest through `edit`, with checksums and lengths that match: what
/// a writer with a bug (or a forger) could produce.
fn rewrite_manifest(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let data = std::fs::read(path).unwrap();
    let h = header::Header::decode(path, data[..header::HEADER_LEN].try_into().unwrap()).unwrap();
    let start = h.manifest_offset as usize;
    let mut json: serde_json::Value = serde_json::from_slice(&data[start..]).unwrap();
    edit(&mut json);
    let json = serde_json::to_vec(&json).unwrap();
    let mut out = data[..start].to_vec();
    out.extend_from_slice(&json);
    let h = header::Header {
        manifest_len: json.len() as u64,
        file_len: out.len() as u64,
        manifest_sum: xxhash_rust::xxh64::xxh64(&json, 0),
        ..h
    };
    out[..header::HEADER_LEN].copy_from_slice(&h.encode());
    std::fs::write(path, out).unwrap();
}

/// The error opening the compressed sample once `edit` changed the blob's section record.
fn error_with_blob_record(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let d = tmpdir();
    let p = d.join("img");
    let m = sample_image_at(&p, Some(codec::DEFAULT_LEVEL));
    rewrite_manifest(&p, |j| edit(&mut j["sections"][m.blob]));
    let err = Image::<TestManifest>::open(&p).unwrap_err().to_string();
    std::fs::remove_dir_all(d).unwrap();
    err
}

#[test]
fn a_compressed_section_of_another_length_is_refused_naming_it() {
    let err = error_with_blob_record(|s| s["len"] = 833.into());
    assert!(
        err.contains("compressed section 1 (test_blob)")
            && err.contains("decompresses to 832 bytes, the manifest declares 833"),
        "{err}"
    );
    let err = error_with_blob_record(|s| s["len"] = 831.into());
    assert!(
        err.contains("compressed section 1 (test_blob)")
            && err.contains("more than the 831 bytes the manifest declares"),
        "{err}"
    );
}

#[test]
fn a_compressed_section_declaring_more_than_zstd_can_hold_is_refused_before_decompressing() {
    let err = error_with_blob_record(|s| s["len"] = (1u64 << 50).into());
    assert!(
        err.contains("section 1") && err.contains("more than") && err.contains("can hold"),
        "{err}"
    );
}

#[test]
fn a_compressed_section_with_wrong_content_checksum_is_refused() {
    let err = error_with_blob_record(|s| {
        let sum = s["xxh64"].as_u64().unwrap();
        s["xxh64"] = (sum ^ 1).into();
    });
    assert!(
        err.contains("compressed section 1 (test_blob)") && err.contains("checksum"),
        "{err}"
    );
}

/// Compressed bytes that match their recorded checksum but are not zstd (a writer's bug):
/// named, not a panic or a huge allocation.
#[test]
fn garbage_under_a_matching_checksum_is_refused_naming_the_section() {
    let d = tmpdir();
    let p = d.join("img");
    let m = sample_image_at(&p, Some(codec::DEFAULT_LEVEL));
    let img = Image::<TestManifest>::open(&p).unwrap();
    let c = img.sections[m.blob].compressed.unwrap();
    drop(img);
    let mut data = std::fs::read(&p).unwrap();
    let stored = &mut data[c.offset as usize..(c.offset + c.len) as usize];
    stored.iter_mut().for_each(|b| *b = 0x5a);
    let sum = xxhash_rust::xxh64::xxh64(stored, 0);
    std::fs::write(&p, &data).unwrap();
    rewrite_manifest(&p, |j| {
        j["sections"][m.blob]["compressed"]["xxh64"] = sum.into()
    });
    let err = Image::<TestManifest>::open(&p).unwrap_err().to_string();
    assert!(
        err.contains("compressed section 1 (test_blob)") && err.contains("not valid zstd"),
        "{err}"
    );
    std::fs::remove_dir_all(d).unwrap();
}

/// The module's path when compressing: pages written into the scratch memfd in pieces, each
/// a compressed section whose content lands in the view where the returned offset says.
#[test]
fn external_pages_through_the_scratch_memfd() {
    let d = tmpdir();
    let p = d.join("img");
    let mut w = ImageWriter::create(&p).unwrap();
    assert_eq!(w.external_pages_limit(), None);
    w.compress(1).unwrap();
    assert!(w.external_pages_limit().is_some());
    let mut pieces: Vec<Vec<u8>> = (0..3u8).map(|k| vec![k + 1; 2 * PAGE as usize]).collect();
    // Random pages: zstd would not shrink them, they are kept as they are.
    pieces.push((0..8 * PAGE).map(|_| fastrand::u8(..)).collect());
    let mut at = Vec::new();
    for piece in &pieces {
        let (file, offset) = w.external_pages_target().unwrap();
        // What the module does: write at the offset, report the XXH64.
        file.write_all_at(piece, offset).unwrap();
        let sum = xxhash_rust::xxh64::xxh64(piece, 0);
        at.push(
            w.external_pages_written(piece.len() as u64, Some(sum))
                .unwrap(),
        );
    }
    let blob = w.add_blob(BLOB, &[7u8; 832]).unwrap();
    w.finish(&TestManifest {
        blob,
        page_offset: at[0],
    })
    .unwrap();
    let img = Image::<TestManifest>::open(&p).unwrap();
    let codecs: Vec<Codec> = img.sections[..4]
        .iter()
        .map(|s| s.compressed.unwrap().codec)
        .collect();
    assert_eq!(codecs, [Codec::Zstd, Codec::Zstd, Codec::Zstd, Codec::None]);
    let stored = img.sections[3].compressed.unwrap();
    assert_eq!(
        (stored.len, stored.xxh64),
        (8 * PAGE, img.sections[3].xxh64)
    );
    let view = img.pages_view(&Progress::hidden(), &[]).unwrap().unwrap();
    for (piece, &offset) in pieces.iter().zip(&at) {
        assert_eq!(offset % PAGE, 0);
        let mut got = vec![0u8; piece.len()];
        view.read_exact_at(&mut got, offset).unwrap();
        assert_eq!(&got, piece);
    }
    std::fs::remove_dir_all(d).unwrap();
}

/// For a restore, pages are decompressed once, into the view: their content is checked
/// there, still before anything is made; `open` checks it at once.
#[test]
fn page_content_is_checked_by_open_or_else_by_the_view() {
    let d = tmpdir();
    let p = d.join("img");
    sample_image_at(&p, Some(codec::DEFAULT_LEVEL));
    rewrite_manifest(&p, |j| {
        let sum = j["sections"][0]["xxh64"].as_u64().unwrap();
        j["sections"][0]["xxh64"] = (sum ^ 1).into();
    });
    let err = Image::<TestManifest>::open(&p).unwrap_err().to_string();
    assert!(err.contains("compressed section 0 (pages)"), "{err}");
    let img = Image::<TestManifest>::open_pages_later(&p, None, &Progress::hidden()).unwrap();
    let err = img
        .pages_view(&Progress::hidden(), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("compressed section 0 (pages)") && err.contains("checksum"),
        "{err}"
    );
    std::fs::remove_dir_all(d).unwrap();
}

/// Found by the reader fuzzing (tests/reader_fuzz.rs): an image only its manifest was read
/// of (a parent, a periodic directory's chain) still has its section table checked, so that
/// nothing computes past 2^64 or past the file from it.
#[test]
fn a_manifest_only_open_still_checks_where_sections_are() {
    let d = tmpdir();
    let p = d.join("img");
    sample_image(&p);
    rewrite_manifest(&p, |j| j["sections"][0]["offset"] = (u64::MAX - 1).into());
    let err = Image::<TestManifest>::open_manifest(&p)
        .unwrap_err()
        .to_string();
    assert!(err.contains("section 0: its end is past 2^64"), "{err}");
    sample_image(&p);
    rewrite_manifest(&p, |j| j["sections"][1]["len"] = (1u64 << 40).into());
    let err = Image::<TestManifest>::open_manifest(&p)
        .unwrap_err()
        .to_string();
    assert!(err.contains("section 1 out of place"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

/// Found by the reader fuzzing: a fifo named as an image (a parent reference may name any
/// file) is refused at once instead of waiting for a writer; a short file is said to be short.
#[test]
fn a_fifo_or_a_short_file_is_refused_at_once() {
    let d = tmpdir();
    let fifo = d.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let err = Image::<TestManifest>::open(&fifo).unwrap_err().to_string();
    assert!(err.contains("fifo is corrupt: not a regular file"), "{err}");
    let short = d.join("short");
    std::fs::write(&short, [0u8; 100]).unwrap();
    let err = Image::<TestManifest>::open(&short).unwrap_err().to_string();
    assert!(
        err.contains("100 bytes, shorter than an image's first page"),
        "{err}"
    );
    std::fs::remove_dir_all(d).unwrap();
}

/// A key file for the MAC tests, owner-only.
fn key_file(d: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = d.join(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// The sample image, compressed at `level` if given, with a MAC by `key`.
fn signed_sample(path: &Path, level: Option<i32>, key: &MacKey) -> TestManifest {
    let mut w = ImageWriter::create(path).unwrap();
    if let Some(level) = level {
        w.compress(level).unwrap();
    }
    w.sign(key);
    let page_offset = w.append_pages(&sample_pages()).unwrap();
    let blob = w.add_blob(BLOB, &[7u8; 832]).unwrap();
    let m = TestManifest { blob, page_offset };
    w.finish(&m).unwrap();
    m
}

/// An image written with a key opens with it (plain or compressed, fully or pages later),
/// and without one (its MAC then unchecked); another key, or no MAC at all, is refused.
#[test]
fn a_mac_is_checked_with_the_key() {
    let d = tmpdir();
    let key = MacKey::load(&key_file(&d, "key", &[1u8; 32])).unwrap();
    let other = MacKey::load(&key_file(&d, "other", &[2u8; 32])).unwrap();
    for level in [None, Some(codec::DEFAULT_LEVEL)] {
        let p = d.join("img");
        let m = signed_sample(&p, level, &key);
        let img = Image::<TestManifest>::open_keyed(&p, Some(&key)).unwrap();
        assert_eq!(img.manifest, m);
        assert!(img.has_mac);
        assert_eq!(img.meta.format_version, mac::MAC_FORMAT_VERSION);
        Image::<TestManifest>::open_pages_later(&p, Some(&key), &Progress::hidden()).unwrap();
        assert!(Image::<TestManifest>::open(&p).unwrap().has_mac);
        let err = Image::<TestManifest>::open_keyed(&p, Some(&other))
            .unwrap_err()
            .to_string();
        assert!(err.contains("its MAC does not match the key"), "{err}");
        std::fs::remove_file(&p).unwrap();
        sample_image_at(&p, level);
        let err = Image::<TestManifest>::open_pages_later(&p, Some(&key), &Progress::hidden())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("img carries no MAC but a key was given"),
            "{err}"
        );
        std::fs::remove_file(&p).unwrap();
    }
    std::fs::remove_dir_all(d).unwrap();
}

/// A change to the image at the path, whose manifest is given.
type Forgery = dyn Fn(&Path, &TestManifest);

/// Changes that keep every checksum right (what a forger does) are caught by the MAC: a
/// section's bytes, the manifest, the header's kernel release, the MAC itself.
#[test]
fn a_mac_catches_changes_whose_checksums_were_made_right() {
    let d = tmpdir();
    let key = MacKey::load(&key_file(&d, "key", b"a passphrase of some length")).unwrap();
    let p = d.join("img");
    let forge: [&Forgery; 4] = [
        &|p, m| {
            let mut data = std::fs::read(p).unwrap();
            let at = m.page_offset as usize;
            data[at] ^= 1;
            let sum = xxhash_rust::xxh64::xxh64(&data[at..at + 3 * PAGE as usize], 0);
            std::fs::write(p, &data).unwrap();
            rewrite_manifest(p, |j| j["sections"][0]["xxh64"] = sum.into());
        },
        &|p, m| rewrite_manifest(p, |j| j["page_offset"] = (m.page_offset + 1).into()),
        &|p, _| {
            rewrite_manifest(p, |j| j["kernel_release"] = "6.1-forged".into());
            let data = std::fs::read(p).unwrap();
            let mut h =
                header::Header::decode(p, data[..header::HEADER_LEN].try_into().unwrap()).unwrap();
            h.kernel_release = "6.1-forged".into();
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .write_all_at(&h.encode(), 0)
                .unwrap();
        },
        &|p, _| {
            let f = File::options().write(true).open(p).unwrap();
            f.write_all_at(&[0xaa], mac::MAC_AT as u64).unwrap();
        },
    ];
    for (i, change) in forge.iter().enumerate() {
        let m = signed_sample(&p, None, &key);
        change(&p, &m);
        // The checksums still hold: only the MAC tells.
        Image::<TestManifest>::open(&p).unwrap_or_else(|e| panic!("forgery {i}: {e}"));
        let err = Image::<TestManifest>::open_keyed(&p, Some(&key))
            .unwrap_err()
            .to_string();
        assert!(err.contains("MAC does not match"), "forgery {i}: {err}");
        std::fs::remove_file(&p).unwrap();
    }
    std::fs::remove_dir_all(d).unwrap();
}

/// A pages section after a blob starts at the next page: the zero bytes between them count
/// once in the MAC, as the writer counted them.
#[test]
fn a_mac_counts_the_padding_before_a_pages_section_once() {
    let d = tmpdir();
    let key = MacKey::load(&key_file(&d, "key", &[5u8; 32])).unwrap();
    let p = d.join("img");
    let mut w = ImageWriter::create(&p).unwrap();
    let blob = w.add_blob(BLOB, &[7u8; 100]).unwrap();
    let page_offset = w.append_pages(&sample_pages()).unwrap();
    assert!(
        page_offset.is_multiple_of(PAGE) && page_offset > PAGE,
        "a gap before the pages"
    );
    w.sign(&key);
    w.finish(&TestManifest { blob, page_offset }).unwrap();
    Image::<TestManifest>::open_keyed(&p, Some(&key)).unwrap();
    Image::<TestManifest>::open_pages_later(&p, Some(&key), &Progress::hidden()).unwrap();
}

/// Like ssh with a private key: a key file others may read or write, someone else's, or too
/// short to be a key, is refused, saying why.
#[test]
fn a_key_file_must_be_private_and_long_enough() {
    use std::os::unix::fs::PermissionsExt;
    let d = tmpdir();
    let p = key_file(&d, "key", &[3u8; 32]);
    assert!(MacKey::load(&p).is_ok());
    for mode in [0o640, 0o604, 0o620] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = MacKey::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("group or others may read or write it") && err.contains("chmod 600"),
            "{mode:o}: {err}"
        );
    }
    let short = key_file(&d, "short", b"0123456789");
    let err = MacKey::load(&short).unwrap_err().to_string();
    assert!(
        err.contains("holds 10 bytes, a key needs at least 16"),
        "{err}"
    );
    if nix::unistd::geteuid().is_root() {
        let theirs = key_file(&d, "theirs", &[4u8; 32]);
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
        let err = MacKey::load(&theirs).unwrap_err().to_string();
        assert!(err.contains("owned by uid 4242"), "{err}");
    }
    let err = MacKey::load(&d.join("missing")).unwrap_err().to_string();
    assert!(err.contains("key file") && err.contains("missing"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

/// A restore's progress counts every byte of every section it verifies (the file's stored
/// bytes), and then every byte of pages it decompresses; a plain image has nothing to
/// decompress.
#[test]
fn verifying_and_decompressing_count_every_byte() {
    let d = tmpdir();
    for level in [None, Some(1)] {
        let p = d.join("img");
        sample_image_at(&p, level);
        let verifying = Progress::hidden();
        let img = Image::<TestManifest>::open_pages_later(&p, None, &verifying).unwrap();
        let stored: u64 = img.sections.iter().map(|s| s.stored().1).sum();
        assert!(stored > 0);
        assert_eq!(verifying.counts(), (stored, stored), "{level:?}");
        let decompressing = Progress::hidden();
        img.pages_view(&decompressing, &[]).unwrap();
        let pages = match level {
            Some(_) => sample_pages().len() as u64,
            None => 0,
        };
        assert_eq!(decompressing.counts(), (pages, pages), "{level:?}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// Writes an image at `path` whose pages are `pages`, stored as differences from `bases` in
/// `chain` (as the module's path does: written into the scratch memfd, then recorded); returns
/// where they are in its view.
fn delta_image(path: &Path, pages: &[u8], bases: Vec<[u64; 4]>, chain: &[Option<File>]) -> u64 {
    let mut w = ImageWriter::create(path).unwrap();
    w.compress(codec::DEFAULT_LEVEL).unwrap();
    let (file, offset) = w.external_pages_target().unwrap();
    file.write_all_at(pages, offset).unwrap();
    let sum = xxhash_rust::xxh64::xxh64(pages, 0);
    let at = w
        .external_pages_written_as_delta((pages.len() as u64, sum), bases, chain)
        .unwrap();
    let blob = w.add_blob(BLOB, &[7u8; 832]).unwrap();
    w.finish(&TestManifest {
        blob,
        page_offset: at,
    })
    .unwrap();
    at
}

/// An incremental image's changed pages stored as differences from a plain parent's pages:
/// most of each page is the parent's, so the section compresses to next to nothing; the view
/// holds the pages as they were; a base that no longer holds what it held is caught.
#[test]
fn pages_stored_as_differences_come_back_whole() {
    let d = tmpdir();
    let (parent, child) = (d.join("parent"), d.join("child"));
    let m = sample_image(&parent);
    let base = File::open(&parent).unwrap();
    // Three pages, each the parent's with one word changed; the middle one has no base.
    let mut pages = sample_pages();
    for k in 0..3 {
        pages[k * PAGE as usize + 8] ^= 0x5a;
    }
    let o = m.page_offset;
    let bases = vec![[0, 1, 1, o], [2, 1, 1, o + 2 * PAGE]];
    let chain = [None, Some(base.try_clone().unwrap())];
    let at = delta_image(&child, &pages, bases, &chain);
    let img = Image::<TestManifest>::open(&child).unwrap();
    assert_eq!(img.meta.format_version, DELTA_FORMAT_VERSION);
    let s = img.sections.iter().find(|s| s.delta.is_some()).unwrap();
    let parent_sections = Image::<TestManifest>::open(&parent).unwrap().sections;
    s.delta
        .as_ref()
        .unwrap()
        .check(s, &[&img.sections, &parent_sections])
        .unwrap();
    let me = File::open(&child).unwrap();
    let view = img
        .pages_view(&Progress::hidden(), &[&me, &base])
        .unwrap()
        .unwrap();
    let mut got = vec![0u8; pages.len()];
    view.read_exact_at(&mut got, at).unwrap();
    assert_eq!(got, pages);
    // Without its base, or with a base that changed, the view is refused.
    assert!(img.pages_view(&Progress::hidden(), &[&me]).is_err());
    let other = tempfile_in(&d);
    other
        .write_all_at(&vec![1u8; 8 * PAGE as usize], 0)
        .unwrap();
    let err = img
        .pages_view(&Progress::hidden(), &[&me, &other])
        .unwrap_err()
        .to_string();
    assert!(err.contains("do not match their checksum"), "{err}");
    // A base outside the parent's pages, or naming the image itself, fails the check.
    let mut bad = s.delta.clone().unwrap();
    bad.bases[0][3] = 1 << 40;
    assert!(bad.check(s, &[&img.sections, &parent_sections]).is_err());
    bad.bases[0] = [0, 1, 0, o];
    assert!(bad.check(s, &[&img.sections, &parent_sections]).is_err());
    bad.bases[0] = [2, 2, 1, o];
    assert!(
        bad.check(s, &[&img.sections, &parent_sections]).is_err(),
        "beyond its section"
    );
    // A grandchild whose pages changed again: its bases are in the child's view (compressed,
    // itself differences), which is made first.
    let grandchild = d.join("grandchild");
    let mut again = pages.clone();
    again[PAGE as usize + 16] ^= 0x33;
    let chain = [None, Some(view.try_clone().unwrap()), None];
    let at2 = delta_image(&grandchild, &again, vec![[0, 3, 1, at]], &chain);
    let img2 = Image::<TestManifest>::open(&grandchild).unwrap();
    let s2 = img2.sections.iter().find(|s| s.delta.is_some()).unwrap();
    let sections = [&img2.sections[..], &img.sections, &parent_sections];
    s2.delta.as_ref().unwrap().check(s2, &sections).unwrap();
    let me2 = File::open(&grandchild).unwrap();
    let view2 = img2
        .pages_view(&Progress::hidden(), &[&me2, &view, &base])
        .unwrap()
        .unwrap();
    let mut got = vec![0u8; again.len()];
    view2.read_exact_at(&mut got, at2).unwrap();
    assert_eq!(got, again);
    std::fs::remove_dir_all(d).unwrap();
}

/// The restore's check of plain pages sections on another thread: opened without reading
/// them, an image whose pages changed is still refused once they are checked, naming the
/// section; an intact one passes, the check counting every byte.
#[test]
fn plain_pages_checked_in_the_background_catch_a_changed_byte() {
    use super::background::{plain_pages, PagesCheck};
    let d = tmpdir();
    let p = d.join("img");
    let m = sample_image(&p);
    let check = |p: &Path| -> Result<(u64, u64), String> {
        let img = Image::<TestManifest>::open_pages_unverified(p).map_err(|e| e.to_string())?;
        let unchecked = (p.to_path_buf(), img.file, plain_pages(&img.sections));
        let progress = Progress::hidden();
        PagesCheck::start(vec![unchecked])
            .and_then(|c| c.wait(&progress))
            .map_err(|e| e.to_string())?;
        Ok(progress.counts())
    };
    assert_eq!(check(&p), Ok((3 * PAGE, 3 * PAGE)));
    let mut data = std::fs::read(&p).unwrap();
    data[(m.page_offset + PAGE + 5) as usize] ^= 0x20;
    std::fs::write(&p, &data).unwrap();
    let err = check(&p).unwrap_err();
    assert!(err.contains("section 0 (pages) checksum mismatch"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}
