//! `ckpt inspect`: a human-readable view of an image.

use crate::chain::Chain;
use crate::image::PAGE;
use crate::memory::Backing;
use crate::stats::{stats_text, Stats};
use std::fmt::Write;

pub fn summary(chain: &Chain) -> String {
    let img = chain.image();
    let m = &img.meta;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "image:    {} ({} bytes, format {})",
        img.path.display(),
        img.file_len,
        m.format_version
    );
    chain_text(&mut out, chain);
    let _ = writeln!(
        out,
        "taken by: ckpt {} on {} {}",
        m.ckpt_version, m.arch, m.kernel_release
    );
    compression_text(&mut out, &img.sections);
    tree_text(&mut out, &img.manifest);
    for p in &img.manifest.processes {
        let a = &p.attrs;
        let _ = writeln!(
            out,
            "process {} ({}) exe {} cwd {}",
            p.pid, a.comm, a.exe, a.cwd
        );
        let _ = writeln!(out, "  threads: {}", p.threads.len());
        for t in &p.threads {
            let _ = writeln!(
                out,
                "    tid {} rip {:#x} rsp {:#x} fs_base {:#x}",
                t.tid, t.regs.rip, t.regs.rsp, t.regs.fs_base
            );
        }
        memory_text(&mut out, p);
        let _ = writeln!(out, "  fds: {}", p.files.fds.len());
        for (fd, what) in p.files.describe(&img.manifest.shared, &img.sections) {
            let _ = writeln!(out, "    {fd}: {what}");
        }
        let _ = writeln!(out, "  signal handlers: {}", p.sigactions.len());
        for t in p.timers.describe() {
            let _ = writeln!(out, "  {t}");
        }
    }
    sysv_text(&mut out, &img.manifest.shared);
    in_flight_text(&mut out, &img.manifest.shared, &img.sections);
    if let Some(s) = &img.manifest.stats {
        let _ = writeln!(out, "checkpoint statistics:");
        let s = Stats {
            image_bytes: img.file_len,
            ..*s
        };
        out.push_str(&stats_text(&s));
    }
    out
}

/// An incremental image's chain: each image, its size, the pages it holds and how many of
/// them the restore of the first one reads.
fn chain_text(out: &mut String, chain: &Chain) {
    if chain.images.len() < 2 {
        return;
    }
    let _ = writeln!(out, "chain:    {} images, newest first", chain.images.len());
    let mut read = vec![0u64; chain.images.len()];
    let runs = (chain.image().manifest.processes.iter())
        .flat_map(|p| &p.memory.vmas)
        .flat_map(|v| &v.pages);
    for r in runs {
        if let Some(n) = read.get_mut(r.image as usize) {
            *n += r.len / PAGE;
        }
    }
    for (i, (img, read)) in chain.images.iter().zip(read).enumerate() {
        let held: u64 = (img.manifest.processes.iter())
            .map(|p| p.memory.saved_bytes() / PAGE)
            .sum();
        let _ = writeln!(
            out,
            "  {i}: {} ({} bytes, id {}): {held} pages held, {read} read by this restore",
            img.path.display(),
            img.file_len,
            img.manifest.image_id.as_deref().unwrap_or("none"),
        );
    }
}

/// How much the compressed sections hold, and in how many bytes.
fn compression_text(out: &mut String, sections: &[crate::image::Section]) {
    let (mut n, mut content, mut stored) = (0, 0u64, 0u64);
    for s in sections {
        if let Some(c) = &s.compressed {
            (n, content, stored) = (n + 1, content + s.len, stored + c.len);
        }
    }
    if n > 0 {
        let _ = writeln!(
            out,
            "compressed: {n} sections (zstd), {content} bytes in {stored} ({:.1}x)",
            content as f64 / stored.max(1) as f64
        );
    }
}

fn memory_text(out: &mut String, p: &crate::manifest::Process) {
    let vmas = &p.memory.vmas;
    let (here, all) = (p.memory.saved_bytes(), p.memory.restored_bytes());
    let in_parents = match all - here {
        0 => String::new(),
        n => format!(", {n} bytes in parent images"),
    };
    let _ = writeln!(
        out,
        "  vmas: {} ({here} bytes of pages saved{in_parents})",
        vmas.len(),
    );
    for v in vmas {
        let prot: String = [(1, 'r'), (2, 'w'), (4, 'x')]
            .iter()
            .map(|&(b, c)| if v.prot & b != 0 { c } else { '-' })
            .collect();
        let what = match &v.backing {
            Backing::Anonymous => String::new(),
            Backing::File { path, offset, .. } => format!("{path} @{offset:#x}"),
            Backing::Special { name } => name.clone(),
            Backing::Sysv { segment } => format!("SysV segment {segment}"),
            Backing::Shm { object, offset } => {
                format!("shared memory object {object} @{offset:#x}")
            }
        };
        let saved: u64 = v.pages.iter().map(|r| r.len).sum();
        let _ = writeln!(
            out,
            "    {:012x}-{:012x} {prot}{} {:>8} saved  {what}",
            v.start,
            v.end,
            if v.shared { 's' } else { 'p' },
            saved
        );
    }
}

/// The file descriptors in flight in the tree's UNIX socket queues, one line each.
fn in_flight_text(
    out: &mut String,
    shared: &crate::fds::Shared,
    sections: &[crate::image::Section],
) {
    let v = crate::fds::View {
        fds: &[],
        shared,
        sections,
    };
    for (i, f) in shared.in_flight.iter().enumerate() {
        let what = crate::fds::in_flight::describe(f, &v);
        let _ = writeln!(out, "in flight #{i}: {what}");
    }
}

/// The tree's SysV objects, one line each.
fn sysv_text(out: &mut String, shared: &crate::fds::Shared) {
    for s in &shared.sysv_shm {
        let gone = if s.removed { ", removed" } else { "" };
        let _ = writeln!(
            out,
            "SysV segment key {:#x} id {}: {} bytes, mode {:o}{gone}",
            s.key, s.id, s.size, s.mode
        );
    }
    for s in &shared.sysv_sem {
        let _ = writeln!(
            out,
            "SysV semaphore set key {:#x} id {}: values {:?}, mode {:o}",
            s.key, s.id, s.values, s.mode
        );
    }
    for q in &shared.sysv_msg {
        let bytes: u64 = q.messages.iter().map(|m| m.len).sum();
        let _ = writeln!(
            out,
            "SysV message queue key {:#x} id {}: {} messages, {bytes} bytes, mode {:o}",
            q.key,
            q.id,
            q.messages.len(),
            q.mode
        );
    }
}

/// The tree: each process under its parent, with its group, session, threads and memory.
fn tree_text(out: &mut String, m: &crate::manifest::Manifest) {
    let _ = writeln!(
        out,
        "tree: {} process(es), {} zombie(s)",
        m.processes.len(),
        m.zombies.len()
    );
    let mut depth = std::collections::BTreeMap::new();
    for p in &m.processes {
        let d = depth.get(&p.ppid).map_or(0, |d| d + 1);
        depth.insert(p.pid, d);
        let _ = writeln!(
            out,
            "  {:indent$}{} ({}) parent {} group {} session {}: {} thread(s), {} KiB saved",
            "",
            p.pid,
            p.attrs.comm,
            p.ppid,
            p.pgid,
            p.sid,
            p.threads.len(),
            p.memory.saved_bytes() / 1024,
            indent = 2 * d
        );
    }
    for z in &m.zombies {
        let d = depth.get(&z.ppid).map_or(0, |d| d + 1);
        let _ = writeln!(
            out,
            "  {:indent$}zombie {} (parent {}, wait status {:#x})",
            "",
            z.pid,
            z.ppid,
            z.exit_status,
            indent = 2 * d
        );
    }
    if !m.gone_leaders.is_empty() {
        let ids: Vec<String> = m.gone_leaders.iter().map(|g| g.to_string()).collect();
        let _ = writeln!(
            out,
            "  groups/sessions whose leader had exited (made by helpers): {}",
            ids.join(" ")
        );
    }
}
