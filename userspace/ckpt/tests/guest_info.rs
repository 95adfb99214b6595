//! `/dev/ckpt` query tests. They need the module, so natively they are ignored; the guest runner
//! runs them for real (tools/guest.sh -> tests/guest/suite.sh -> `--ignored`).

mod common;
use ckpt::device::{our_version_info, Device, QueryError};
use ckpt_abi::{
    ioc, CkptQuery, CKPT_IOC_MAGIC, CKPT_IOC_QUERY, CKPT_IOC_VERSION, CKPT_QUERY_MAX_READ,
};
use common::{proc_maps, proc_threads, Target, Traced, NEEDS_MODULE};
use std::path::Path;
use std::process::Command;

fn dev() -> Device {
    Device::open(Path::new("/dev/ckpt")).expect("opening /dev/ckpt")
}

/// Queries `t` reading `len` bytes of its buffer, and checks the answer against /proc.
fn check_against_proc(t: &Target, len: usize, pattern: fn(usize) -> u8) {
    let before = proc_maps(t.pid());
    let mut buf = vec![0u8; len];
    let _traced = Traced::new(t.pid());
    let r = dev().query(t.pid(), t.addr, &mut buf).unwrap();
    assert_eq!(
        proc_maps(t.pid()),
        before,
        "the target's maps changed during the test"
    );
    assert_eq!(r.threads, proc_threads(t.pid()));
    assert_eq!(
        (r.vmas, r.mapped_bytes),
        before,
        "module vs /proc/{}/maps",
        t.pid()
    );
    assert_eq!(r.bytes_read, len);
    for (i, b) in buf.iter().enumerate() {
        assert_eq!(*b, pattern(i), "byte {i} of the target's buffer");
    }
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn module_reports_our_abi() {
    let _ = NEEDS_MODULE;
    assert_eq!(dev().version().unwrap(), our_version_info());
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn static_target_agrees_with_proc() {
    let t = Target::spawn("static_target", &[]);
    assert_eq!(t.len, 8192);
    check_against_proc(&t, t.len, common::static_pattern);
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn threaded_target_agrees_with_proc() {
    for threads in [1, 7] {
        let t = Target::spawn("threaded_target", &[&threads.to_string()]);
        assert_eq!(proc_threads(t.pid()), threads + 1);
        // The largest read the ABI allows.
        check_against_proc(&t, CKPT_QUERY_MAX_READ as usize, common::threaded_pattern);
    }
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn read_is_short_at_the_end_of_a_mapping() {
    let t = Target::spawn("static_target", &[]);
    // A readable mapping of the target with nothing mapped right after it (its stack, say).
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", t.pid())).unwrap();
    let parsed: Vec<(u64, u64, bool, &str)> = maps
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (a, b) = f[0].split_once('-').unwrap();
            let name = f.get(5).copied().unwrap_or("");
            (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
                f[1].starts_with('r'),
                name,
            )
        })
        .collect();
    let &(_, end, _, name) = parsed
        .iter()
        .find(|&&(_, end, readable, name)| {
            readable && !name.starts_with("[v") && !parsed.iter().any(|&(start, ..)| start == end)
        })
        .expect("a readable mapping followed by a gap");
    let mut buf = vec![0u8; 64];
    let _traced = Traced::new(t.pid());
    let r = dev().query(t.pid(), end - 16, &mut buf).unwrap();
    assert_eq!(
        r.bytes_read, 16,
        "reading across the end of {name:?} at {end:#x}"
    );
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn cli_info_json_matches_proc() {
    let t = Target::spawn("static_target", &[]);
    let out = Command::new(common::ckpt_bin())
        .args([
            "info",
            &t.pid().to_string(),
            "--json",
            "--read",
            &format!("{:#x}", t.addr),
            "--len",
            "32",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (vmas, bytes) = proc_maps(t.pid());
    assert_eq!(v["pid"], t.pid());
    assert_eq!(v["threads"], 1);
    assert_eq!(v["vmas"], vmas);
    assert_eq!(v["mapped_bytes"], bytes);
    let want: String = (0..32)
        .map(|i| format!("{:02x}", common::static_pattern(i)))
        .collect();
    assert_eq!(v["read"]["hex"], want);

    // The plain form says the same.
    let out = Command::new(common::ckpt_bin())
        .args(["info", &t.pid().to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("vmas:         {vmas}\n")), "{text}");
    assert!(
        text.contains(&format!("mapped:       {bytes} bytes")),
        "{text}"
    );
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn cli_reports_errors_clearly() {
    let run = |args: &[&str]| {
        let out = Command::new(common::ckpt_bin())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(
        run(&["info", "999999"]),
        (Some(1), "ckpt: no such process: 999999\n".into())
    );
    let (code, err) = run(&["info", "2"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("kernel thread"), "{err}");
}

fn errno_of(r: std::io::Result<()>) -> i32 {
    r.expect_err("the ioctl should have failed")
        .raw_os_error()
        .unwrap()
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn bad_ioctl_arguments_get_clear_errors() {
    let d = dev();
    let t = Target::spawn("static_target", &[]);
    let mut buf = [0u8; 16];
    let good = CkptQuery {
        pid: t.pid(),
        read_addr: t.addr,
        read_len: 16,
        read_buf: buf.as_mut_ptr() as u64,
        ..Default::default()
    };
    let _traced = Traced::new(t.pid());
    d.raw_query(&mut good.clone()).unwrap();

    // Unknown command numbers.
    assert_eq!(
        d.raw_ioctl(ioc(2, CKPT_IOC_MAGIC, 0x7f, 8), 0)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOTTY)
    );
    assert_eq!(
        d.raw_ioctl(0x5401, 0).unwrap_err().raw_os_error(),
        Some(libc::ENOTTY)
    );
    // Bad pointers: the argument itself, and the read buffer.
    assert_eq!(
        d.raw_ioctl(CKPT_IOC_QUERY, 0).unwrap_err().raw_os_error(),
        Some(libc::EFAULT)
    );
    assert_eq!(
        d.raw_ioctl(CKPT_IOC_VERSION, 8).unwrap_err().raw_os_error(),
        Some(libc::EFAULT)
    );
    assert_eq!(
        errno_of(d.raw_query(&mut CkptQuery {
            read_buf: 8,
            ..good
        })),
        libc::EFAULT
    );
    assert_eq!(
        errno_of(d.raw_query(&mut CkptQuery {
            read_buf: 0xffff_8000_0000_0000,
            ..good
        })),
        libc::EFAULT,
        "a kernel address as the read buffer"
    );
    // Pids: absent, invalid, kernel thread.
    assert_eq!(
        errno_of(d.raw_query(&mut CkptQuery {
            pid: 999_999,
            ..good
        })),
        libc::ESRCH
    );
    assert_eq!(
        errno_of(d.raw_query(&mut CkptQuery { pid: 0, ..good })),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(d.raw_query(&mut CkptQuery { pid: -1, ..good })),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(d.raw_query(&mut CkptQuery { pid: 2, ..good })),
        libc::EINVAL,
        "kthreadd"
    );
    // Flags and sizes.
    assert_eq!(
        errno_of(d.raw_query(&mut CkptQuery { flags: 1, ..good })),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(d.raw_query(&mut CkptQuery {
            read_len: CKPT_QUERY_MAX_READ + 1,
            ..good
        })),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(d.raw_query(&mut CkptQuery {
            read_len: u64::MAX,
            ..good
        })),
        libc::EINVAL
    );
    // Nothing mapped at the address.
    assert_eq!(
        errno_of(d.raw_query(&mut CkptQuery {
            read_addr: 0x1000,
            ..good
        })),
        libc::EIO
    );
    assert!(matches!(
        d.query(t.pid(), 0x1000, &mut buf),
        Err(QueryError::Unreadable { addr: 0x1000, .. })
    ));
    // A read of zero bytes ignores the address and buffer.
    d.raw_query(&mut CkptQuery {
        read_len: 0,
        read_addr: 0,
        read_buf: 0,
        ..good
    })
    .unwrap();
    // The module still works after all that.
    let mut q = good;
    d.raw_query(&mut q).unwrap();
    assert_eq!(q.bytes_read, 16);
    assert_eq!(buf[..4], [3, 10, 17, 24]);
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn zombie_and_self() {
    let d = dev();
    // Our own process: same thread group, always allowed.
    let me = std::process::id() as i32;
    let r = d.query(me, 0, &mut []).unwrap();
    assert_eq!(r.threads, proc_threads(me));

    // A zombie: exited, not reaped.
    let mut child = Command::new("/bin/true").spawn().unwrap();
    let pid = child.id() as i32;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        if stat
            .rsplit(')')
            .next()
            .unwrap()
            .trim_start()
            .starts_with('Z')
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "child never became a zombie"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        matches!(d.query(pid, 0, &mut []), Err(QueryError::NoSuchProcess { pid: p }) if p == pid)
    );
    child.wait().unwrap();
}

/// Exit codes of the unprivileged child in `unprivileged_caller_is_refused`.
const CHILD_OK: i32 = 0;

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn unprivileged_caller_is_refused() {
    const NOBODY: u32 = 65534;
    let d = dev();
    let roots = Target::spawn("static_target", &[]);
    let own = Target::spawn_as("static_target", &[], Some(NOBODY));
    let own_nondumpable = Target::spawn_as("static_target", &["nondumpable"], Some(NOBODY));
    // Root, with CAP_SYS_PTRACE, may inspect all three once it traces them, and none before:
    // the attach is the permission check, LSMs included, for root as for anyone.
    for t in [&roots, &own, &own_nondumpable] {
        assert!(matches!(
            d.query(t.pid(), t.addr, &mut [0u8; 8]),
            Err(QueryError::NotPermitted { .. })
        ));
        let _traced = Traced::new(t.pid());
        d.query(t.pid(), t.addr, &mut [0u8; 8]).unwrap();
    }
    let query = |pid: i32| -> i32 {
        let mut q = CkptQuery {
            pid,
            ..Default::default()
        };
        // SAFETY: a plain ioctl on an open fd with a valid CkptQuery; async-signal-safe.
        let r = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&d),
                CKPT_IOC_QUERY as _,
                &mut q,
            )
        };
        if r == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        }
    };
    let seize = |pid: i32| -> i32 {
        // SAFETY: PTRACE_SEIZE takes no pointers; async-signal-safe. The child's exit
        // detaches it.
        match unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) } {
            0 => 0,
            _ => std::io::Error::last_os_error().raw_os_error().unwrap_or(-1),
        }
    };
    // SAFETY: the child only makes async-signal-safe calls (set*id, ioctl, open, ptrace,
    // _exit).
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: plain syscalls in the forked child.
        let code = unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(NOBODY, NOBODY, NOBODY) != 0
                || libc::setresuid(NOBODY, NOBODY, NOBODY) != 0
            {
                10
            } else if libc::open(c"/dev/ckpt".as_ptr(), libc::O_RDWR) != -1 {
                11 // the device must be root-only
            } else if query(roots.pid()) != libc::EPERM {
                12 // another user's process
            } else if query(own.pid()) != libc::EPERM {
                15 // our own, dumpable process, but not traced by us
            } else if seize(own.pid()) != 0 || query(own.pid()) != 0 {
                13 // our own, dumpable process, traced
            } else if seize(own_nondumpable.pid()) == 0
                || query(own_nondumpable.pid()) != libc::EPERM
            {
                14 // our own, but non-dumpable: neither ptrace nor the module let us read it
            } else {
                CHILD_OK
            }
        };
        // SAFETY: leave the forked child without running the test harness's destructors.
        unsafe { libc::_exit(code) };
    }
    assert!(child > 0);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert!(libc::WIFEXITED(status));
    assert_eq!(
        libc::WEXITSTATUS(status),
        CHILD_OK,
        "see the codes in the child"
    );
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn dump_and_restore_ioctls_validate_their_arguments() {
    use ckpt_abi::{CkptDumpPages, CkptRange, CkptRestore, CKPT_IOC_DUMP_PAGES, CKPT_IOC_RESTORE};
    use std::os::fd::AsRawFd;
    let d = dev();
    let t = Target::spawn("static_target", &[]);
    let _traced = Traced::new(t.pid());
    let page = t.addr & !4095;
    let ranges = [CkptRange {
        start: page,
        end: page + 4096,
    }];
    let img = std::env::temp_dir().join(format!("ckpt-dump-args-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&img)
        .unwrap();
    let mut runs = [ckpt_abi::CkptRestoreRun::default(); 4];
    let good = CkptDumpPages {
        pid: t.pid(),
        image_fd: file.as_raw_fd(),
        range_count: 1,
        ranges: ranges.as_ptr() as u64,
        runs: runs.as_mut_ptr() as u64,
        max_runs: 4,
        ..Default::default()
    };
    let call = |mut q: CkptDumpPages| -> Result<CkptDumpPages, i32> {
        d.raw_ioctl(CKPT_IOC_DUMP_PAGES, &mut q as *mut _ as usize)
            .map(|_| q)
            .map_err(|e| e.raw_os_error().unwrap())
    };
    let ok = call(good).unwrap();
    assert_eq!((ok.run_count, ok.bytes_written), (1, 4096));
    assert_eq!(std::fs::read(&img).unwrap().len(), 4096);
    // Left to user space, the checksum is 0; the copy is the same.
    let unhashed = call(CkptDumpPages {
        flags: ckpt_abi::CKPT_DUMP_NO_HASH,
        ..good
    })
    .unwrap();
    assert_ne!(ok.xxh64, 0);
    assert_eq!((unhashed.bytes_written, unhashed.xxh64), (4096, 0));
    assert_eq!(call(CkptDumpPages { flags: 4, ..good }), Err(libc::EINVAL));
    assert_eq!(
        call(CkptDumpPages {
            file_offset: 100,
            ..good
        }),
        Err(libc::EINVAL)
    );
    let unaligned = [CkptRange {
        start: page + 1,
        end: page + 4096,
    }];
    assert_eq!(
        call(CkptDumpPages {
            ranges: unaligned.as_ptr() as u64,
            ..good
        }),
        Err(libc::EINVAL)
    );
    let kernel = [CkptRange {
        start: 0xffff_8000_0000_0000,
        end: 0xffff_8000_0000_1000,
    }];
    assert_eq!(
        call(CkptDumpPages {
            ranges: kernel.as_ptr() as u64,
            ..good
        }),
        Err(libc::EINVAL)
    );
    assert_eq!(call(CkptDumpPages { ranges: 8, ..good }), Err(libc::EFAULT));
    assert_eq!(call(CkptDumpPages { runs: 8, ..good }), Err(libc::EFAULT));
    assert_eq!(
        call(CkptDumpPages {
            max_runs: 0,
            ..good
        }),
        Err(libc::ENOSPC)
    );
    assert_eq!(
        call(CkptDumpPages {
            image_fd: -1,
            ..good
        }),
        Err(libc::EBADF)
    );
    assert_eq!(
        call(CkptDumpPages {
            pid: 999_999,
            ..good
        }),
        Err(libc::ESRCH)
    );
    let ro = std::fs::File::open(&img).unwrap();
    assert_eq!(
        call(CkptDumpPages {
            image_fd: ro.as_raw_fd(),
            ..good
        }),
        Err(libc::EBADF)
    );
    let unmapped = [CkptRange {
        start: 0x1000,
        end: 0x2000,
    }];
    assert_eq!(
        call(CkptDumpPages {
            ranges: unmapped.as_ptr() as u64,
            ..good
        }),
        Err(libc::EFAULT)
    );

    // A write-only image for a restore: refused (EBADF), without a kernel warning.
    let wo = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    let mut r = CkptRestore {
        image_fd: wo.as_raw_fd(),
        ..Default::default()
    };
    let err = d
        .raw_ioctl(CKPT_IOC_RESTORE, &mut r as *mut _ as usize)
        .unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(libc::EBUSY) | Some(libc::EBADF)),
        "{err}"
    );

    // Restore refuses bad flags, and a caller with other threads (this test harness), before
    // touching anything: we are still here to check.
    let mut r = CkptRestore {
        flags: 1,
        image_fd: file.as_raw_fd(),
        ..Default::default()
    };
    assert_eq!(
        d.raw_ioctl(CKPT_IOC_RESTORE, &mut r as *mut _ as usize)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EINVAL)
    );
    let mut r = CkptRestore {
        image_fd: file.as_raw_fd(),
        ..Default::default()
    };
    let err = d
        .raw_ioctl(CKPT_IOC_RESTORE, &mut r as *mut _ as usize)
        .unwrap_err();
    assert!(matches!(err.raw_os_error(), Some(libc::EBUSY)), "{err}");
    restore_image_table_is_validated(&d, &file, &wo);
    let _ = std::fs::remove_file(img);
}

/// The image table of RESTORE (ABI 5): its count and `image_fd` checked with the flags; its
/// fds and run counts in a single-threaded process (a forked child: the module refuses a
/// threaded caller before it looks at them), which must be refused before anything changes.
fn restore_image_table_is_validated(d: &Device, file: &std::fs::File, wo: &std::fs::File) {
    use ckpt_abi::{CkptRestore, CkptRestoreImage, CkptRestoreRun, CKPT_IOC_RESTORE};
    use std::os::fd::AsRawFd;
    let call = |r: &mut CkptRestore| {
        d.raw_ioctl(CKPT_IOC_RESTORE, r as *mut _ as usize)
            .unwrap_err()
            .raw_os_error()
    };
    let table = [CkptRestoreImage {
        fd: file.as_raw_fd(),
        run_count: 0,
    }];
    let good = CkptRestore {
        image_fd: -1,
        images: table.as_ptr() as u64,
        image_count: 1,
        ..Default::default()
    };
    let too_many = ckpt_abi::CKPT_RESTORE_MAX_IMAGES + 1;
    for (what, mut bad) in [
        (
            "too many images",
            CkptRestore {
                image_count: too_many,
                ..good
            },
        ),
        (
            "image_fd with a table",
            CkptRestore {
                image_fd: file.as_raw_fd(),
                ..good
            },
        ),
        (
            "reserved",
            CkptRestore {
                _reserved2: 1,
                ..good
            },
        ),
    ] {
        assert_eq!(call(&mut bad), Some(libc::EINVAL), "{what}");
    }
    // In a forked child (single-threaded): each refusal comes back as its exit status.
    let run = CkptRestoreRun {
        addr: 0x10000,
        len: 4096,
        image_offset: 0,
    };
    let closed = CkptRestoreImage {
        fd: 999,
        run_count: 0,
    };
    let write_only = CkptRestoreImage {
        fd: wo.as_raw_fd(),
        run_count: 0,
    };
    // One run announced, none given; two images whose counts say 0 and 2 for one run.
    let counts = [
        table[0],
        CkptRestoreImage {
            fd: file.as_raw_fd(),
            run_count: 2,
        },
    ];
    let cases: [(&str, &[CkptRestoreImage], u32, i32); 4] = [
        ("an fd that is not open", &[closed], 0, libc::EBADF),
        ("a write-only image", &[write_only], 0, libc::EBADF),
        ("run counts short of run_count", &table, 1, libc::EINVAL),
        ("run counts beyond run_count", &counts, 1, libc::EINVAL),
    ];
    for (what, images, run_count, errno) in cases {
        let mut r = CkptRestore {
            images: images.as_ptr() as u64,
            image_count: images.len() as u32,
            run_count,
            runs: &run as *const _ as u64,
            ..good
        };
        // SAFETY: the child only makes raw system calls before _exit.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let dev_fd = d.as_raw_fd();
            // SAFETY: an ioctl with a pointer to a request on our (copied) stack.
            let ret = unsafe { libc::ioctl(dev_fd, CKPT_IOC_RESTORE as _, &mut r) };
            let code = if ret < 0 {
                std::io::Error::last_os_error().raw_os_error().unwrap_or(1)
            } else {
                0
            };
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: reaping our child.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status), "{what}: status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), errno, "{what}");
    }
}
