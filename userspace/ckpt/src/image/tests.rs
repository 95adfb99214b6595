//! The container alone: round trip, every corruption caught, versions named, no leftovers.

use super::*;

/// A manifest of the container's tests: it refers to one blob section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TestManifest {
    pub blob: usize,
    pub page_offset: u64,
}

const BLOB: SectionKind = SectionKind::named("test_blob");

impl Validate for TestManifest {
    fn validate(&self, sections: &[Section]) -> Result<(), String> {
        if !section_is(sections, self.blob, &BLOB) {
            return Err("bad blob section".into());
        }
        Ok(())
    }
}

/// A small, valid image with three pages and a blob.
pub(crate) fn sample_image(path: &Path) -> TestManifest {
    let mut w = ImageWriter::create(path).unwrap();
    let pages: Vec<u8> = (0..3 * PAGE as usize)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
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
    assert_eq!(img.meta.format_version, FORMAT_VERSION);
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
    data[8..12].copy_from_slice(&7u32.to_le_bytes());
    std::fs::write(&p, &data).unwrap();
    let err = Image::<TestManifest>::open(&p).unwrap_err().to_string();
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
