//! The image reader against mutated images (runs natively, a few seconds): realistic seeds
//! (`ckpt::fuzzing::write_seeds`: plain and compressed, full and incremental) changed by the
//! structure-aware mutator, then read as `ckpt inspect` and `ckpt restore` read them. Each
//! read must end without a panic, with success or an error naming the image and what is wrong,
//! and without any allocation larger than the images it read (a counting allocator in this
//! test binary). `make fuzz-reader` runs the same harness under libFuzzer for longer.

use ckpt::fuzzing::{mutate, read_image, write_seeds};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Records the largest single allocation made on a thread that asked for it.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every call goes to the system allocator unchanged; `note` only reads a
// thread-local flag (const-initialised, no destructor) and updates an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as alloc.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f`, returning what it returned and its largest allocation.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.store(0, Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (out, LARGEST.load(Ordering::Relaxed))
}

/// The bytes of every image in `dir` (what a chain read from there can reach), plus the
/// fixed stream buffers (64 KiB read-ahead of a compressed section).
fn allocation_bound(dir: &Path) -> usize {
    let images: u64 = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    images as usize + (64 << 10)
}

fn tmpdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ckpt-reader-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Checks one read of the image at `path`: no panic, errors naming an image and saying
/// what is wrong, allocations within the bound. Returns how many steps succeeded.
fn check_read(path: &Path, what: &str) -> usize {
    let dir = path.parent().unwrap();
    let bound = allocation_bound(dir);
    let (outcome, largest) = largest_allocation(|| std::panic::catch_unwind(|| read_image(path)));
    let steps = outcome.unwrap_or_else(|_| panic!("{what}: the reader panicked"));
    assert!(
        largest <= bound,
        "{what}: an allocation of {largest} bytes, more than the {bound} bytes of images"
    );
    let mut ok = 0;
    for (step, r) in steps {
        match r {
            Ok(()) => ok += 1,
            Err(e) => {
                // Every error names the image it is about (or its parent), then the problem.
                let dir = dir.to_string_lossy();
                let named = e
                    .find(&*dir)
                    .is_some_and(|at| e.len() > at + dir.len() + 12);
                assert!(named, "{what}: {step}: an unclear error: {e:?}");
            }
        }
    }
    ok
}

#[test]
fn seeds_read_cleanly() {
    let dir = tmpdir().join("seeds");
    std::fs::create_dir_all(&dir).unwrap();
    for seed in write_seeds(&dir).unwrap() {
        let steps = read_image(&seed);
        for (step, r) in &steps {
            // Read with the key, only the signed seed has a MAC.
            let signed = seed.ends_with("kbase.img");
            match (*step, signed) {
                ("keyed", false) => assert!(
                    r.as_ref().is_err_and(|e| e.contains("carries no MAC")),
                    "{}: {r:?}",
                    seed.display()
                ),
                _ => assert!(r.is_ok(), "{}: {step}: {r:?}", seed.display()),
            }
        }
        check_read(&seed, "seed");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Mutated seeds, a fixed sequence (the seed of the random generator): thousands of images
/// with broken headers, section tables, frames, parent references and manifests.
#[test]
fn mutated_images_are_refused_clearly_without_panic_or_large_allocations() {
    let dir = tmpdir().join("mutated");
    std::fs::create_dir_all(&dir).unwrap();
    let seeds: Vec<Vec<u8>> = write_seeds(&dir)
        .unwrap()
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    // Longer or other runs by hand: CKPT_FUZZ_ROUNDS=100000 CKPT_FUZZ_SEED=7.
    let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let rounds = env("CKPT_FUZZ_ROUNDS").unwrap_or(1500) as usize;
    let mut rng = fastrand::Rng::with_seed(env("CKPT_FUZZ_SEED").unwrap_or(0x6b65_7931));
    let target = dir.join("target.img");
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..rounds {
        let seed = &seeds[rng.usize(..seeds.len())];
        let bytes = mutate(seed, "target.img", &mut rng);
        std::fs::write(&target, &bytes).unwrap();
        match check_read(&target, &format!("round {round}")) {
            0 => refused += 1,
            _ => accepted += 1,
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // Some mutations keep the image readable (a field that does not matter): both outcomes
    // occur, so the mutations reach past the first checks.
    assert!(
        accepted > 0 && refused > rounds / 2,
        "{accepted} accepted, {refused} refused"
    );
}
