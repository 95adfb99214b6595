//! Images made wrong on purpose, for the reader: `ckpt inspect` and `ckpt restore` read files
//! that anyone who can write them may have crafted. Here: realistic seed images made natively
//! (no module: the writer with a sample process tree), a structure-aware mutator that knows the
//! format (header fields, the section table, compressed frames, parent references) and fixes
//! checksums where that lets a mutation reach past them, and the harness doing with an image
//! what `inspect` and `restore` do before they touch a process.
//!
//! Used by `tests/reader_fuzz.rs` (a few seconds in every test run, with a counting allocator)
//! and by the cargo-fuzz target in `fuzz/` (`make fuzz-reader`, long runs). Not part of the
//! command line.

use crate::attrs::Attrs;
use crate::chain::{Chain, ParentRef};
use crate::fds::{Fd, FdKind, FdTable, InheritedStdio, Pipe, PipeEnd, Shared};
use crate::image::{ImageWriter, MacKey, PAGE};
use crate::manifest::{Image, Manifest, Process};
use crate::memory::{Backing, Memory, MmLayout, PageRun, Vma};
use crate::progress::Progress;
use crate::thread::{RobustList, SigAltStack, Thread, XSTATE};
use crate::timers::Timers;
use serde_json::Value;
use std::io;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh64::xxh64;

/// The seed images' ids: the plain chain's, the compressed chain's, the signed image's.
pub const SEED_IDS: [&str; 5] = ["b0ba5e", "c41d", "2b0ba5e", "2c41d", "3b0ba5e"];

/// Writes the seed images into `dir`: `base.img` and its incremental `child.img`, the same
/// pair compressed (`zbase.img`, `zchild.img`), and `kbase.img`, compressed with a MAC by the
/// key in `dir/key` ([`seed_key`]); each holds a process of two threads with a pipe's queued
/// bytes. Also makes `dir/fifo`, which a mutated parent reference may name (a reader must not
/// wait on it). Returns the images.
pub fn write_seeds(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (compress, prefix, ids) in [(false, "", &SEED_IDS[..2]), (true, "z", &SEED_IDS[2..])] {
        let base = dir.join(format!("{prefix}base.img"));
        let child = dir.join(format!("{prefix}child.img"));
        let at = write_seed(&base, (compress, None), ids[0], None)?;
        write_seed(&child, (compress, None), ids[1], Some((&base, ids[0], at)))?;
        out.extend([base, child]);
    }
    let key = seed_key(dir)?;
    let signed = dir.join("kbase.img");
    write_seed(&signed, (true, Some(&key)), SEED_IDS[4], None)?;
    out.push(signed);
    let fifo = dir.join("fifo");
    if !fifo.exists() {
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )?;
    }
    Ok(out)
}

/// The MAC key of the seeds, in `dir/key` (made if missing, owner-only).
pub fn seed_key(dir: &Path) -> io::Result<MacKey> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("key");
    if !path.exists() {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        std::io::Write::write_all(&mut f, b"the seeds' key, 32 bytes long...")?;
    }
    MacKey::load(&path).map_err(io::Error::other)
}

/// One seed image at `path`, compressed and signed with the key as `(compress, key)` say;
/// with `parent` (its file, id and pages' offset) an incremental one whose second page is in
/// the parent. Returns where its pages are.
pub fn write_seed(
    path: &Path,
    (compress, key): (bool, Option<&MacKey>),
    id: &str,
    parent: Option<(&Path, &str, u64)>,
) -> io::Result<u64> {
    let mut w = ImageWriter::create(path)?;
    if compress {
        w.compress(crate::image::codec::DEFAULT_LEVEL)?;
    }
    if let Some(key) = key {
        w.sign(key);
    }
    let pages: Vec<u8> = (0..2 * PAGE).map(|i| (i * 7 % 251) as u8).collect();
    let at = w.append_pages(&pages)?;
    let xstates = [
        w.add_blob(XSTATE, &[1u8; 832])?,
        w.add_blob(XSTATE, &[2u8; 832])?,
    ];
    let pipe = w.add_blob(PIPE_DATA, b"bytes queued in the pipe")?;
    let mut p = sample_process(at, xstates[0]);
    let mut second = p.threads[0].clone();
    (second.tid, second.xstate_section) = (43, xstates[1]);
    p.threads.push(second);
    let mut shared = sample_shared();
    shared.pipes[0].data_section = Some(pipe);
    let mut m = Manifest {
        processes: vec![p],
        zombies: vec![],
        gone_leaders: vec![],
        netlock: None,
        shared,
        stats: None,
        image_id: Some(id.into()),
        parent: None,
    };
    if let Some((file, parent_id, parent_at)) = parent {
        m.parent = Some(ParentRef::to(file, path, parent_id)?);
        let runs = &mut m.processes[0].memory.vmas[0].pages;
        runs[0].len = PAGE;
        runs.push(PageRun {
            addr: runs[0].addr + PAGE,
            len: PAGE,
            offset: parent_at + PAGE,
            image: 1,
        });
    }
    // The full image keeps its mappings in the JSON (as images before version 7 and MAC'd
    // ones do), the incremental one has them in a section: both forms get mutated.
    match m.parent {
        Some(_) => m.write_to(w)?,
        None => w.finish(&m)?,
    };
    Ok(at)
}

const PIPE_DATA: crate::image::SectionKind = crate::image::SectionKind::named("pipe_data");

/// Reads the image at `path` as the commands do before they touch a process, each step's
/// outcome named: `manifests` (what `checkpoint --parent` and `--dir` read of a chain),
/// `inspect` (the whole chain verified, the summary and the JSON made), `restore` (the chain
/// verified but its plain pages, then those checked as a full restore does, each image's
/// pages view, every section read or streamed, the tree's groups planned), `keyed` (the chain opened as `restore --key`
/// opens it, with the key of `dir/key` if there is one).
pub fn read_image(path: &Path) -> Vec<(&'static str, Result<(), String>)> {
    let manifests = Chain::open_manifests(path).map(drop);
    let inspect = Chain::open(path).map(|chain| {
        let _ = crate::inspect::summary(&chain);
        let _ = serde_json::to_string_pretty(&chain.image().manifest);
    });
    let keyed = match path.parent().map(|d| d.join("key")).filter(|k| k.exists()) {
        Some(k) => MacKey::load(&k)
            .and_then(|key| Chain::open_pages_later(path, Some(&key), &Progress::hidden())),
        None => Chain::open_pages_later(path, None, &Progress::hidden()),
    };
    vec![
        ("manifests", manifests.map_err(|e| e.to_string())),
        ("inspect", inspect.map_err(|e| e.to_string())),
        ("restore", read_for_restore(path)),
        ("keyed", keyed.map(drop).map_err(|e| e.to_string())),
    ]
}

/// What `ckpt restore` reads of an image: before it forks, and its plain pages as it
/// checks them while the module copies them (`image::background`).
fn read_for_restore(path: &Path) -> Result<(), String> {
    let chain = Chain::open_pages_unverified(path).map_err(|e| e.to_string())?;
    let unchecked = chain.unchecked_pages().map_err(|e| e.to_string())?;
    crate::image::background::PagesCheck::start(unchecked)
        .and_then(|check| check.wait(&Progress::hidden()))
        .map_err(|e| e.to_string())?;
    let sink = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| e.to_string())?;
    for img in &chain.images {
        img.pages_view(&Progress::hidden(), &[])
            .map_err(|e| e.to_string())?;
        read_sections(img, &sink)?;
    }
    // A plan the restore refuses (not the image's fault: it says why, the harness names
    // the image).
    let groups = chain.image().manifest.groups();
    groups
        .map(drop)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Every section of `img`: small ones read whole, pages streamed into `sink`.
fn read_sections(img: &Image, sink: &std::fs::File) -> Result<(), String> {
    for (i, s) in img.sections.iter().enumerate() {
        match s.kind == crate::image::PAGES {
            true => img.data().copy_to(i, sink, 0).map_err(|e| e.to_string())?,
            false => drop(img.read_section(i).map_err(|e| e.to_string())?),
        }
    }
    Ok(())
}

// The header's layout (`image::header`), as a mutator needs it.
const H_VERSION: usize = 8;
const H_LEN_FIELD: usize = 12;
const H_MANIFEST_OFFSET: usize = 96;
const H_MANIFEST_LEN: usize = 104;
const H_FILE_LEN: usize = 112;
const H_MANIFEST_SUM: usize = 120;
const H_SUM: usize = 128;
const HEADER_LEN: usize = 136;

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]))
}

fn put_u64(b: &mut [u8], i: usize, v: u64) {
    b[i..i + 8].copy_from_slice(&v.to_le_bytes());
}

/// Makes the header's own checksum right again.
fn fix_header(b: &mut [u8]) {
    if b.len() >= HEADER_LEN {
        let sum = xxh64(&b[..H_SUM], 0);
        put_u64(b, H_SUM, sum);
    }
}

/// Where the manifest is (its offset) and what it says, if the file still frames one.
fn parse(b: &[u8]) -> Option<(usize, Value)> {
    if b.len() < HEADER_LEN {
        return None;
    }
    let off = usize::try_from(u64_at(b, H_MANIFEST_OFFSET)).ok()?;
    let m: Value = serde_json::from_slice(b.get(off..)?).ok()?;
    Some((off, m)).filter(|(_, m)| m.is_object())
}

/// `b` up to `off` followed by manifest `m`, with the header's lengths and checksums made
/// right (the manifest's own checksum only if `fix_sum`).
fn with_manifest(b: &[u8], off: usize, m: &Value, fix_sum: bool) -> Vec<u8> {
    let json = serde_json::to_vec(m).unwrap_or_default();
    let mut out = b[..off.min(b.len())].to_vec();
    out.extend_from_slice(&json);
    if out.len() >= HEADER_LEN {
        put_u64(&mut out, H_MANIFEST_LEN, json.len() as u64);
        let len = out.len() as u64;
        put_u64(&mut out, H_FILE_LEN, len);
        if fix_sum {
            put_u64(&mut out, H_MANIFEST_SUM, xxh64(&json, 0));
        }
        fix_header(&mut out);
    }
    out
}

/// A number a length or offset check must get right: the edges of the file, of a page, of
/// 64 bits.
fn interesting(rng: &mut fastrand::Rng, file_len: u64) -> u64 {
    match rng.u8(..11) {
        0 => 0,
        1 => 1,
        2 => PAGE,
        3 => file_len,
        4 => file_len.saturating_sub(1),
        5 => file_len + 1,
        6 => u64::MAX,
        7 => u64::MAX - PAGE + 1,
        8 => 1 << 40,
        9 => i64::MAX as u64,
        _ => rng.u64(..file_len.max(1)),
    }
}

/// A mutation of image `bytes` (1 to 3 changes), which is named `own` in a directory holding
/// the seeds (`write_seeds`): parent references may name them, itself or the fifo.
pub fn mutate(bytes: &[u8], own: &str, rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for _ in 0..rng.usize(1..=3) {
        b = match (parse(&b), rng.u8(..10)) {
            (Some((off, m)), 0..=6) => structured(&b, (off, m), own, rng),
            (Some(_), 7) => header_field(b, rng),
            _ => raw(b, rng),
        };
    }
    b
}

/// Changes bytes without regard to the format: flips, inserts, deletes, truncates, appends.
fn raw(mut b: Vec<u8>, rng: &mut fastrand::Rng) -> Vec<u8> {
    let at = rng.usize(..=b.len());
    match rng.u8(..6) {
        0 | 1 if !b.is_empty() => {
            for _ in 0..rng.usize(1..=8) {
                let i = rng.usize(..b.len());
                b[i] ^= 1 << rng.u8(..8);
            }
        }
        2 => {
            let n = rng.usize(1..64);
            b.splice(at..at, std::iter::repeat_with(|| rng.u8(..)).take(n));
        }
        3 => {
            let end = (at + rng.usize(1..4096)).min(b.len());
            b.drain(at..end);
        }
        4 => b.truncate(at),
        _ => b.extend(std::iter::repeat_n(0xff, rng.usize(1..8192))),
    }
    b
}

/// Sets a header field to an interesting value, its checksum made right (mostly).
fn header_field(mut b: Vec<u8>, rng: &mut fastrand::Rng) -> Vec<u8> {
    let len = b.len() as u64;
    let field = [
        H_MANIFEST_OFFSET,
        H_MANIFEST_LEN,
        H_FILE_LEN,
        H_MANIFEST_SUM,
    ];
    match rng.u8(..3) {
        0 => {
            let v = [0u32, 2, 3, 4, 5, u32::MAX][rng.usize(..6)];
            b[H_VERSION..H_VERSION + 4].copy_from_slice(&v.to_le_bytes());
        }
        1 => b[H_LEN_FIELD..H_LEN_FIELD + 4].copy_from_slice(&rng.u32(..).to_le_bytes()),
        _ => {
            let v = interesting(rng, len);
            put_u64(&mut b, field[rng.usize(..field.len())], v);
        }
    }
    if rng.u8(..10) != 0 {
        fix_header(&mut b);
    }
    b
}

/// A change the format knows about: a section's place, length, checksum or codec, the
/// section table, the parent reference, a compressed frame (checksums made right so that it
/// reaches the decompressor), any manifest field.
fn structured(
    b: &[u8],
    (off, mut m): (usize, Value),
    own: &str,
    rng: &mut fastrand::Rng,
) -> Vec<u8> {
    let mut data = b[..off].to_vec();
    let n = m["sections"].as_array().map_or(0, Vec::len);
    let i = rng.usize(..n.max(1));
    // Section mutations need the section to be a record still (earlier mutations may have
    // made it anything).
    let record = m["sections"].get(i).is_some_and(Value::is_object);
    match rng.u8(..9) {
        0 if record => section_field(&mut m["sections"][i], b.len() as u64, rng),
        1 => section_table(&mut m["sections"], rng),
        2 => parent_ref(&mut m, own, rng),
        3 | 4 if record => content(&mut data, &mut m["sections"][i], rng),
        5 if record => lying_size(&data, &mut m["sections"][i], rng),
        6 if record => {
            let c = m["sections"][i].get_mut("compressed");
            if let Some(c) = c.and_then(Value::as_object_mut) {
                let other = if c.get("codec").is_some_and(|v| v == "zstd") {
                    "none"
                } else {
                    "zstd"
                };
                c.insert("codec".into(), Value::from(other));
            }
        }
        _ => mutate_value(&mut m, rng),
    }
    with_manifest(&data, off, &m, rng.u8(..10) != 0)
}

fn section_field(s: &mut Value, file_len: u64, rng: &mut fastrand::Rng) {
    let v = Value::from(interesting(rng, file_len));
    let key = ["offset", "len", "xxh64"][rng.usize(..3)];
    match s.get_mut("compressed").filter(|c| c.is_object()) {
        Some(c) if rng.bool() => c[key] = v,
        _ => s[key] = v,
    }
}

fn section_table(table: &mut Value, rng: &mut fastrand::Rng) {
    let Some(t) = table.as_array_mut().filter(|t| !t.is_empty()) else {
        return;
    };
    let i = rng.usize(..t.len());
    match rng.u8(..4) {
        0 => {
            let copy = t[i].clone();
            t.insert(rng.usize(..=t.len()), copy);
        }
        1 => drop(t.remove(i)),
        2 => {
            let j = rng.usize(..t.len());
            t.swap(i, j);
        }
        _ => t.clear(),
    }
}

/// Points the parent reference at itself (a cycle), another seed, a fifo, a device, a
/// directory or nothing, with its own id, another's or a wrong one.
fn parent_ref(m: &mut Value, own: &str, rng: &mut fastrand::Rng) {
    let files = [
        own,
        "fifo",
        "/dev/zero",
        ".",
        "missing.img",
        "/proc/self/mem",
        "base.img",
        "child.img",
        "zbase.img",
        "zchild.img",
        "kbase.img",
        "key",
    ];
    let own_id = m["image_id"].as_str().unwrap_or("none").to_owned();
    let ids = [
        own_id.as_str(),
        SEED_IDS[0],
        SEED_IDS[1],
        SEED_IDS[2],
        SEED_IDS[4],
        "x",
    ];
    m["parent"] = serde_json::json!({
        "file": files[rng.usize(..files.len())],
        "id": ids[rng.usize(..ids.len())],
    });
}

/// Where section `s`'s bytes are in the file, if the record says and it is inside `data`.
fn stored_range(s: &Value, data_len: usize) -> Option<(std::ops::Range<usize>, bool)> {
    let (rec, compressed) = match s.get("compressed").filter(|c| c.is_object()) {
        Some(c) => (c, true),
        None => (s, false),
    };
    let at = usize::try_from(rec["offset"].as_u64()?).ok()?;
    let len = usize::try_from(rec["len"].as_u64()?).ok()?;
    let end = at.checked_add(len).filter(|&e| e <= data_len)?;
    Some((at..end, compressed))
}

/// Records the XXH64 of the section's stored bytes (after they were changed).
fn fix_stored_sum(data: &[u8], s: &mut Value, range: std::ops::Range<usize>, compressed: bool) {
    let sum = Value::from(xxh64(&data[range], 0));
    match compressed {
        true => s["compressed"]["xxh64"] = sum,
        false => s["xxh64"] = sum,
    }
}

/// Changes a section's stored bytes (a compressed frame's header, mostly) and makes its
/// stored checksum right: the decompressor (or the consumer) gets the damage.
fn content(data: &mut [u8], s: &mut Value, rng: &mut fastrand::Rng) {
    let Some((range, compressed)) = stored_range(s, data.len()) else {
        return;
    };
    if range.is_empty() {
        return;
    }
    // The frame header is in the first 18 bytes: its content size and window there.
    let span = match rng.bool() {
        true => range.len().min(18),
        false => range.len(),
    };
    for _ in 0..rng.usize(1..=4) {
        let i = range.start + rng.usize(..span);
        data[i] = match rng.u8(..3) {
            0 => 0,
            1 => 0xff,
            _ => rng.u8(..),
        };
    }
    fix_stored_sum(data, s, range, compressed);
}

/// A compressed section's content length changed (the frame says otherwise), or its frame
/// cut short with the checksum of what is left.
fn lying_size(data: &[u8], s: &mut Value, rng: &mut fastrand::Rng) {
    let len = s["len"].as_u64().unwrap_or(0);
    if rng.bool() {
        s["len"] = Value::from(match rng.u8(..4) {
            0 => len.saturating_sub(1),
            1 => len.saturating_add(1),
            2 => len.saturating_mul(1 << 16),
            _ => 0,
        });
        return;
    }
    let Some((range, compressed)) = stored_range(s, data.len()) else {
        return;
    };
    let cut = range.start..range.start + rng.usize(..=range.len());
    let new_len = Value::from(cut.len() as u64);
    match compressed {
        true => s["compressed"]["len"] = new_len,
        false => s["len"] = new_len,
    }
    fix_stored_sum(data, s, cut, compressed);
}

/// Changes one random leaf or container of `v`: numbers to extremes or random values,
/// strings to odd ones, arrays emptied, doubled or shortened, object fields dropped.
pub fn mutate_value(v: &mut serde_json::Value, rng: &mut fastrand::Rng) {
    use serde_json::Value;
    match v {
        Value::Object(map) if !map.is_empty() && rng.u8(..4) != 0 => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = &keys[rng.usize(..keys.len())];
            if rng.u8(..8) == 0 {
                map.remove(k);
            } else if let Some(child) = map.get_mut(k) {
                mutate_value(child, rng);
            }
        }
        Value::Array(items) if !items.is_empty() && rng.u8(..4) != 0 => {
            let i = rng.usize(..items.len());
            match rng.u8(..6) {
                0 => items.clear(),
                1 => {
                    let copy = items[i].clone();
                    items.push(copy)
                }
                2 => drop(items.remove(i)),
                _ => mutate_value(&mut items[i], rng),
            }
        }
        _ => {
            *v = match rng.u8(..8) {
                0 => Value::from(u64::MAX),
                1 => Value::from(i64::MIN),
                2 => Value::from(rng.u64(..1 << 40)),
                3 => Value::from(0),
                4 => Value::from(rng.u32(..64)),
                5 => Value::from("/../\u{0}\u{ffff}"),
                6 => Value::Null,
                _ => Value::from(vec![Value::from(1); rng.usize(..4)]),
            }
        }
    }
}

/// A sample process (pid 42, one thread) with two pages at `pages_at` and its XSAVE state in
/// section `xstate_section`: what the tests and the seeds build on.
pub fn sample_process(pages_at: u64, xstate_section: usize) -> Process {
    let anon = |start: u64, pages| Vma {
        start,
        end: start + 0x10000,
        prot: 3,
        shared: false,
        growsdown: false,
        accounted: false,
        backing: Backing::Anonymous,
        pages,
    };
    Process {
        pid: 42,
        ppid: 1,
        pgid: 42,
        sid: 42,
        attrs: Attrs {
            comm: "sample".into(),
            exe: "/bin/sample".into(),
            cwd: "/".into(),
            umask: 0o22,
            ..Attrs::default()
        },
        memory: Memory {
            mm: MmLayout::default(),
            vmas: vec![anon(
                0x10000,
                vec![PageRun {
                    addr: 0x12000,
                    len: 2 * PAGE,
                    offset: pages_at,
                    image: 0,
                }],
            )],
            table: None,
        },
        sigactions: vec![],
        files: FdTable {
            fds: vec![
                Fd {
                    fd: 0,
                    flags: 0,
                    kind: FdKind::InheritStdio(InheritedStdio { was: "pipe".into() }),
                },
                Fd {
                    fd: 3,
                    flags: 0,
                    kind: FdKind::Pipe(PipeEnd {
                        pipe: 0,
                        write_end: false,
                    }),
                },
            ],
            locks: vec![],
        },
        threads: vec![Thread {
            tid: 42,
            regs: Default::default(),
            xstate_section,
            sigmask: 0,
            sigaltstack: SigAltStack::default(),
            clear_child_tid: 0,
            robust_list: RobustList::default(),
            rseq: None,
            pending: 0,
            comm: String::new(),
            kernel_tid: None,
            creds: None,
            own_files: false,
        }],
        shared_pending: 0,
        interceptor: None,
        ctty: None,
        timers: Timers::default(),
        identity: None,
    }
}

/// A manifest of one process `p` with the sample shared objects, no parent.
pub fn sample_manifest(p: Process) -> Manifest {
    Manifest {
        processes: vec![p],
        zombies: vec![],
        gone_leaders: vec![],
        netlock: None,
        shared: sample_shared(),
        stats: None,
        image_id: None,
        parent: None,
    }
}

/// The sample's shared objects: a pipe, a SysV semaphore set and message queue.
pub fn sample_shared() -> Shared {
    Shared {
        pipes: vec![Pipe {
            inode: 7,
            capacity: 65536,
            data_section: None,
        }],
        socket_pairs: vec![],
        in_flight: vec![],
        unix_dgram: vec![],
        unix_external: vec![],
        listeners: vec![],
        ptys: vec![],
        tcp: vec![],
        fifos: vec![],
        tcp_closed: vec![],
        udp: vec![],
        memory: vec![],
        open_files: vec![],
        sysv_shm: vec![],
        sysv_sem: vec![crate::sysv::SemSet {
            key: 0x51,
            id: 3,
            mode: 0o600,
            uid: 0,
            gid: 0,
            values: vec![1, 0, 32767],
        }],
        sysv_msg: vec![crate::sysv::MsgQueue {
            key: 0,
            id: 4,
            mode: 0o600,
            uid: 0,
            gid: 0,
            max_bytes: 16384,
            messages: vec![],
            data_section: None,
        }],
    }
}
