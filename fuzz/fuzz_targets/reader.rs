//! libFuzzer over the image reader: each input is an image, read as `ckpt inspect` and
//! `ckpt restore` read one (`ckpt::fuzzing::read_image`) next to the seed images it may name
//! as its parent. Inputs are changed by ckpt's structure-aware mutator (section tables, frames,
//! parent references, checksums made right) three times in four, by libFuzzer's own otherwise.
//! A panic, or an error that does not name the image, is a crash; libFuzzer's -malloc_limit_mb
//! catches large allocations (`make fuzz-reader` sets it).

#![no_main]

use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The directory the inputs are read in: the seeds (parents to name) and the input.
fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("ckpt-fuzz-reader-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("a scratch directory");
        let seeds = ckpt::fuzzing::write_seeds(&d).expect("writing the seeds");
        // The seeds as the starting corpus, if asked where (make fuzz-reader does).
        if let Some(corpus) = std::env::var_os("CKPT_FUZZ_CORPUS") {
            for s in seeds {
                let _ = std::fs::copy(&s, Path::new(&corpus).join(s.file_name().unwrap()));
            }
        }
        d
    })
}

fuzz_target!(
    init: {
        dir();
    },
    |data: &[u8]| {
        let target = dir().join("target.img");
        std::fs::write(&target, data).expect("writing the input");
        let d = dir().to_string_lossy().into_owned();
        for (step, r) in ckpt::fuzzing::read_image(&target) {
            if let Err(e) = r {
                assert!(e.contains(&d), "{step}: an error naming no image: {e:?}");
            }
        }
    }
);

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let mut rng = fastrand::Rng::with_seed(seed.into());
    if rng.u8(..4) == 0 {
        return fuzzer_mutate(data, size, max_size);
    }
    let out = ckpt::fuzzing::mutate(&data[..size], "target.img", &mut rng);
    if out.len() > max_size {
        return fuzzer_mutate(data, size, max_size);
    }
    data[..out.len()].copy_from_slice(&out);
    out.len()
});
