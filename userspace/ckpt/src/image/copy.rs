//! Copying a section's bytes from an image to another file inside the kernel: one copy,
//! where a read into a buffer and a write out of it make two, of the kind the emulated guest
//! runs slowest.

use nix::fcntl::{fcntl, FcntlArg};
use std::fs::File;
use std::io;

/// Copies `len` bytes of `from` at `from_at` to `to` at `to_at` through a pipe: one copy, in
/// the kernel (copy_file_range refuses to cross file systems, and a memfd is not on the
/// image's), and neither file's position moves. Through user memory the copy would be two,
/// of the kind the emulated guest runs slowest: a 256 MiB shared memory object took most of
/// a 2.5 s tree restore.
pub fn splice_range(from: &File, from_at: u64, to: &File, to_at: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::{splice, SpliceFFlags};
    let (pipe_out, pipe_in) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // Fewer round trips where the pipe may grow (up to /proc/sys/fs/pipe-max-size).
    let _ = fcntl(&pipe_in, FcntlArg::F_SETPIPE_SZ(1 << 20));
    let mut off_in = i64::try_from(from_at).map_err(io::Error::other)?;
    let mut off_out = i64::try_from(to_at).map_err(io::Error::other)?;
    let mut left = len;
    while left > 0 {
        let want = left.min(1 << 20) as usize;
        let n = splice(
            from,
            Some(&mut off_in),
            &pipe_in,
            None,
            want,
            SpliceFFlags::empty(),
        )?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut in_pipe = n;
        while in_pipe > 0 {
            let m = splice(
                &pipe_out,
                None,
                to,
                Some(&mut off_out),
                in_pipe,
                SpliceFFlags::empty(),
            )?;
            if m == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            in_pipe -= m;
        }
        left -= n as u64;
    }
    Ok(())
}

/// Copies `len` bytes of `from` at `from_at` into `to` at `to_at` with copy_file_range
/// (neither file's position moves). An error (another filesystem that cannot, an old
/// kernel) leaves the caller to copy some other way.
pub fn copy_range(
    from: &File,
    from_at: u64,
    to: &File,
    to_at: u64,
    len: u64,
) -> std::io::Result<()> {
    let mut off_in = i64::try_from(from_at).map_err(std::io::Error::other)?;
    let mut off_out = i64::try_from(to_at).map_err(std::io::Error::other)?;
    let mut done = 0u64;
    while done < len {
        let left = (len - done).min(1 << 30) as usize;
        let n = nix::fcntl::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), left)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::FileExt;

    /// The copy a shared memory object's restore makes from the image into a memfd (another
    /// file system than the image's, where copy_file_range fails).
    #[test]
    fn splice_range_copies_across_file_systems_and_leaves_positions_alone() {
        let mut from = File::from(memfd_create(c"splice-from", MFdFlags::MFD_CLOEXEC).unwrap());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        from.write_all(&data).unwrap();
        from.seek(SeekFrom::Start(11)).unwrap();
        let to = File::from(memfd_create(c"splice-test", MFdFlags::MFD_CLOEXEC).unwrap());
        let len = data.len() as u64 - 100;
        splice_range(&from, 100, &to, 4096, len).unwrap();
        let mut out = vec![0u8; len as usize];
        to.read_exact_at(&mut out, 4096).unwrap();
        assert!(out == data[100..], "the copy differs");
        assert_eq!(to.metadata().unwrap().len(), 4096 + len);
        assert_eq!((&from).stream_position().unwrap(), 11);
        assert_eq!((&to).stream_position().unwrap(), 0);
        // Past the end of the source: an error, not a short copy passed off as whole.
        let e = splice_range(&from, data.len() as u64 - 10, &to, 0, 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
