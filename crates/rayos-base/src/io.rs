//! Reading helpers that more than one crate needs: [`read_full`] fills a
//! buffer the way image copiers want (short reads and `EINTR` retried).
//!
//! Limits: blocking `Read` only; nothing here knows about files or sizes.

use std::io::{self, Read};

/// Reads until `buf` is full or the input ends; returns how many bytes were
/// read (less than `buf.len()` only at the end of input). Retries reads
/// interrupted by a signal.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most three bytes a read, with an interruption between.
    struct Dribble<'a> {
        data: &'a [u8],
        interrupt: bool,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(3).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn fills_the_buffer_across_short_and_interrupted_reads() {
        let data: Vec<u8> = (0..10).collect();
        let mut r = Dribble {
            data: &data,
            interrupt: false,
        };
        let mut buf = [0u8; 8];
        assert_eq!(read_full(&mut r, &mut buf).unwrap(), 8);
        assert_eq!(buf, data[..8]);
        assert_eq!(read_full(&mut r, &mut buf).unwrap(), 2);
        assert_eq!(buf[..2], data[8..]);
        assert_eq!(read_full(&mut r, &mut buf).unwrap(), 0);
    }
}
