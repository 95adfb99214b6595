//! Figures a checkpoint records about itself (like CRIU's `--display-stats`), and their text.

use crate::image::PAGE;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// Figures like CRIU's `--display-stats`, recorded by the checkpoint.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Stats {
    pub frozen_us: u64,
    /// Live processes taken (0 in images from before process trees: one).
    #[serde(default)]
    pub processes: u32,
    pub memdump_us: u64,
    pub total_us: u64,
    pub pages_scanned: u64,
    pub pages_skipped_zero: u64,
    pub pages_written: u64,
    /// Pages not written again: a process still shares them copy-on-write with one written
    /// before (its parent).
    #[serde(default)]
    pub pages_shared: u64,
    /// Pages not written again: unchanged since the parent image (`--parent`), taken from
    /// the chain.
    #[serde(default)]
    pub pages_in_parent: u64,
    /// Of `pages_written`, those stored as their difference from the chain's earlier version
    /// (`image::delta`).
    #[serde(default)]
    pub pages_as_differences: u64,
    pub image_bytes: u64,
    /// Taken through the interceptor library (flushed, ids virtual) rather than the plain path.
    #[serde(default)]
    pub interceptor: bool,
    /// Time the interceptor took to flush, before the freeze.
    #[serde(default)]
    pub flush_us: u64,
    /// The program's stdio buffers were flushed before the snapshot.
    #[serde(default)]
    pub stdio_flushed: bool,
    /// Processes whose private memory was written from a copy-on-write snapshot after the
    /// tree was let go (not counted in `frozen_us`).
    #[serde(default)]
    pub snapshots: u32,
    /// Pages written per second of the memory dump, in MiB/s (0: none written).
    #[serde(default)]
    pub dump_mib_per_s: u64,
}

impl Stats {
    /// The dump's throughput, from the pages written and the memory dump time.
    pub fn throughput(&self) -> u64 {
        match self.memdump_us {
            0 => 0,
            us => self.pages_written * PAGE * 1_000_000 / us / (1 << 20),
        }
    }
}

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
    if s.snapshots > 0 {
        let _ = writeln!(
            out,
            "  snapshots:        {} (pages written from them after the tree was let go)",
            s.snapshots
        );
    }
    if s.processes > 1 {
        let _ = writeln!(out, "  processes:        {}", s.processes);
    }
    let _ = writeln!(out, "  pages scanned:    {}", s.pages_scanned);
    let _ = writeln!(out, "  pages skipped:    {} (zero)", s.pages_skipped_zero);
    let _ = writeln!(out, "  pages written:    {}", s.pages_written);
    if s.pages_shared > 0 {
        let _ = writeln!(
            out,
            "  pages shared:     {} (stored once for processes sharing them copy-on-write)",
            s.pages_shared
        );
    }
    if s.pages_in_parent > 0 {
        let _ = writeln!(
            out,
            "  pages unchanged:  {} (in the parent images, not written again)",
            s.pages_in_parent
        );
    }
    if s.pages_as_differences > 0 {
        let _ = writeln!(
            out,
            "  pages changed:    {} stored as differences from the parent images",
            s.pages_as_differences
        );
    }
    let _ = writeln!(
        out,
        "  image size:       {} bytes ({mib:.1} MiB{})",
        s.image_bytes,
        if secs > 0.0 {
            format!(", {} MiB/s dumped", s.throughput())
        } else {
            String::new()
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_is_pages_written_over_the_dump_time() {
        let s = Stats {
            pages_written: 25_600, // 100 MiB
            memdump_us: 2_000_000,
            ..Stats::default()
        };
        assert_eq!(s.throughput(), 50);
        assert!(stats_text(&s).contains(", 50 MiB/s dumped"));
        assert_eq!(Stats::default().throughput(), 0);
    }
}
