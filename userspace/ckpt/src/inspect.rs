//! Human-readable views of images and statistics.

use crate::image::{Backing, FdKind, Image, Stats, PAGE};
use std::fmt::Write;

pub fn stats_text(s: &Stats) -> String {
    let mib = s.image_bytes as f64 / (1024.0 * 1024.0);
    let secs = s.memdump_us as f64 / 1e6;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  frozen time:      {:.3} ms",
        s.frozen_us as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "  memory dump time: {:.3} ms",
        s.memdump_us as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "  total time:       {:.3} ms",
        s.total_us as f64 / 1000.0
    );
    if s.interceptor {
        let _ = writeln!(
            out,
            "  interceptor:      prepared in {:.3} ms, stdio {}",
            s.flush_us as f64 / 1000.0,
            if s.stdio_flushed {
                "flushed"
            } else {
                "not flushed"
            }
        );
    } else {
        let _ = writeln!(out, "  interceptor:      none (plain path)");
    }
    let _ = writeln!(out, "  pages scanned:    {}", s.pages_scanned);
    let _ = writeln!(out, "  pages skipped:    {} (zero)", s.pages_skipped_zero);
    let _ = writeln!(out, "  pages written:    {}", s.pages_written);
    let _ = writeln!(
        out,
        "  image size:       {} bytes ({mib:.1} MiB{})",
        s.image_bytes,
        if secs > 0.0 {
            format!(
                ", {:.0} MiB/s dumped",
                (s.pages_written * PAGE) as f64 / 1048576.0 / secs
            )
        } else {
            String::new()
        }
    );
    out
}

pub fn summary(img: &Image) -> String {
    let m = &img.manifest;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "image:    {} ({} bytes, format {})",
        img.path.display(),
        img.file_len,
        m.format_version
    );
    let _ = writeln!(
        out,
        "taken by: ckpt {} on {} {}",
        m.ckpt_version, m.arch, m.kernel_release
    );
    for p in &m.processes {
        let saved: u64 = p.vmas.iter().flat_map(|v| &v.pages).map(|r| r.len).sum();
        let _ = writeln!(
            out,
            "process {} ({}) exe {} cwd {}",
            p.pid, p.comm, p.exe, p.cwd
        );
        let _ = writeln!(out, "  threads: {}", p.threads.len());
        for t in &p.threads {
            let _ = writeln!(
                out,
                "    tid {} rip {:#x} rsp {:#x} fs_base {:#x}",
                t.tid, t.regs.rip, t.regs.rsp, t.regs.fs_base
            );
        }
        let _ = writeln!(
            out,
            "  vmas: {} ({} bytes of pages saved)",
            p.vmas.len(),
            saved
        );
        for v in &p.vmas {
            let prot: String = [(1, 'r'), (2, 'w'), (4, 'x')]
                .iter()
                .map(|&(b, c)| if v.prot & b != 0 { c } else { '-' })
                .collect();
            let what = match &v.backing {
                Backing::Anonymous => String::new(),
                Backing::File { path, offset, .. } => format!("{path} @{offset:#x}"),
                Backing::Special { name } => name.clone(),
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
        let _ = writeln!(out, "  fds: {}", p.fds.len());
        for f in &p.fds {
            let what = match &f.kind {
                FdKind::Path { path, pos } => format!("{path} (pos {pos}, flags {:o})", f.flags),
                FdKind::Listen {
                    display, backlog, ..
                } => {
                    format!("listening socket {display} (backlog {backlog})")
                }
                FdKind::SocketPairEnd { pair, end } => {
                    let sp = &p.socket_pairs[*pair];
                    let bytes = sp.data_sections[*end].map_or(0, |i| m.sections[i].len);
                    format!("socket pair {pair} end {end} ({bytes} bytes unread)")
                }
                FdKind::EventFd { count, semaphore } => format!(
                    "eventfd (count {count}{})",
                    if *semaphore { ", semaphore" } else { "" }
                ),
                FdKind::SignalFd { mask } => format!("signalfd (signals {mask:#x})"),
                FdKind::TimerFd {
                    clockid,
                    value_ns,
                    interval_ns,
                    ticks,
                } => format!(
                    "timerfd (clock {clockid}, fires in {:.3} s, every {:.3} s, {ticks} unread)",
                    *value_ns as f64 / 1e9,
                    *interval_ns as f64 / 1e9
                ),
                FdKind::Epoll { watches } => format!(
                    "epoll watching fds {}",
                    watches
                        .iter()
                        .map(|w| w.fd.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                FdKind::InheritStdio { was } => format!("inherited from the restorer (was {was})"),
                FdKind::Pipe { pipe, write_end } => {
                    let bytes = p.pipes[*pipe].data_section.map_or(0, |i| m.sections[i].len);
                    format!(
                        "pipe #{pipe} {} end ({bytes} bytes unread)",
                        if *write_end { "write" } else { "read" }
                    )
                }
                FdKind::Deleted {
                    path,
                    pos,
                    data_section,
                    ..
                } => {
                    format!(
                        "{path} (deleted; {} bytes saved, pos {pos})",
                        m.sections[*data_section].len
                    )
                }
            };
            let _ = writeln!(out, "    {}: {what}", f.fd);
        }
        let _ = writeln!(out, "  signal handlers: {}", p.sigactions.len());
    }
    if let Some(s) = &m.stats {
        let _ = writeln!(out, "checkpoint statistics:");
        let s = Stats {
            image_bytes: img.file_len,
            ..*s
        };
        out.push_str(&stats_text(&s));
    }
    out
}
