//! Regression cases: fixed calls, each once a bug the fuzzer found, made at the start of
//! every run (the short CI form too) with the result the fixed module gives. Each case's
//! comment says what the module did before.

use crate::fixture::{self as fx, FdKind, RegionKind, PAGE};
use crate::gen::{self, Call, Check, Ctx, Kind};
use ckpt_abi::{CkptDumpPages, CkptRange, CKPT_IOC_DUMP_PAGES};
use nix::errno::Errno;

pub struct Case {
    pub name: &'static str,
    pub make: fn(&Ctx) -> Call,
    pub expect: Result<i32, Errno>,
}

pub const CASES: &[Case] = &[Case {
    // Before: accepted. kernel_write() put every page at the end of the file, while the
    // runs recorded the position asked for: an image whose pages are not where it says.
    name: "DUMP_PAGES into a file open with O_APPEND is refused",
    make: dump_into_append_file,
    expect: Err(Errno::EBADF),
}];

/// A DUMP_PAGES request of this process's nonzero data page 1 into `fd` at `file_offset`,
/// placed at the start of the scratch.
fn dump_request(c: &Ctx, fd: i32, file_offset: u64) -> Call {
    let data = c.fx.regions.iter().find(|r| r.kind == RegionKind::Anon);
    let start = data.map_or(0, |r| r.start) + PAGE;
    let ranges = [CkptRange {
        start,
        end: start + PAGE,
    }];
    let at_ranges = fx::slot(c.thread) + gen::ARRAYS;
    gen::write_scratch(c, at_ranges, gen::slice_bytes(&ranges));
    let req = CkptDumpPages {
        pid: std::process::id() as i32,
        image_fd: fd,
        range_count: 1,
        ranges: at_ranges,
        file_offset,
        runs: fx::slot(c.thread) + gen::OUTBUF,
        max_runs: 16,
        ..Default::default()
    };
    let arg = fx::slot(c.thread);
    gen::write_scratch(c, arg, gen::bytes_of(&req));
    Call {
        kind: Kind::DumpPages,
        fd: c.fx.dev,
        cmd: CKPT_IOC_DUMP_PAGES,
        arg,
        what: format!("DUMP_PAGES {req:x?}"),
        check: Check::DumpPages {
            at: arg,
            max_runs: 16,
        },
    }
}

fn dump_into_append_file(c: &Ctx) -> Call {
    // At 8 pages in: the end of the (shorter) file, where O_APPEND writes, is elsewhere.
    dump_request(c, c.fx.fd(FdKind::Append, c.thread), 8 * PAGE)
}

/// Makes every case; returns the failures.
pub fn run(c: &Ctx) -> Vec<String> {
    let mut failed = Vec::new();
    for case in CASES {
        let call = (case.make)(c);
        let got = crate::raw_ioctl(call.fd, call.cmd, call.arg);
        let checked = crate::stats::check_reply(&call, got);
        if got != case.expect || checked.is_err() {
            failed.push(format!(
                "regression case \"{}\": {} gave {got:?}, not {:?}{}",
                case.name,
                call.what,
                case.expect,
                checked.err().map(|e| format!(" ({e})")).unwrap_or_default()
            ));
        }
    }
    failed
}
