//! One protocol line in, a buffer out, on a socket, with raw calls and fixed buffers (the
//! control thread has no errno and no allocator; `follow_credentials` uses them too).

use crate::raw::{self, Buf};

/// Reads one line into `line`. Err(errno) on failure; Ok(false) at end of file.
pub fn read_line(conn: i32, line: &mut Buf<256>) -> Result<bool, i32> {
    line.len = 0;
    loop {
        let mut b = [0u8; 1];
        match raw::read(conn, &mut b) {
            1 if b[0] == b'\n' => return Ok(true),
            1 if line.len < 255 => {
                line.push(&b);
            }
            1 => return Err(libc::EMSGSIZE),
            0 => return Ok(false),
            r if r == -(libc::EINTR as i64) => continue,
            r => return Err(-r as i32),
        }
    }
}

/// Sends all of `b`. False if the connection failed first.
pub fn send_all(conn: i32, mut b: &[u8]) -> bool {
    while !b.is_empty() {
        let n = raw::send(conn, b);
        if n == -(libc::EINTR as i64) {
            continue;
        }
        if n <= 0 {
            return false;
        }
        b = b.get(n as usize..).unwrap_or_default();
    }
    true
}
