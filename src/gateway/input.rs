//! A connection's read buffer: bytes read and not yet consumed, and the spare room the next read
//! fills. The room is zeroed once when the buffer grows, never per read (a 64 KiB `memset` per
//! read was a tenth of the gateway's time).

/// Bytes asked of the kernel per read, at least.
pub const READ_CHUNK: usize = 64 << 10;

#[derive(Debug, Default)]
pub struct Input {
    /// Always fully initialised; `start..end` holds the unconsumed bytes.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Input {
    /// The bytes read and not consumed.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Drops the first `n` unconsumed bytes.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// A writable area of at least [`READ_CHUNK`] bytes after the unconsumed ones.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 && self.buf.len() - self.end < READ_CHUNK {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < READ_CHUNK {
            self.buf.resize(self.end + READ_CHUNK, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of the last [`Input::spare`] area as read.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Gives memory back after a large request: a buffer much larger than its content shrinks.
    pub fn trim(&mut self) {
        if self.buf.len() > 4 * READ_CHUNK && self.len() < READ_CHUNK {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            self.buf.truncate(2 * READ_CHUNK);
            self.buf.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_consume_compact_and_trim() {
        let mut input = Input::default();
        input.spare()[..5].copy_from_slice(b"hello");
        input.commit(5);
        assert_eq!(input.data(), b"hello");
        input.consume(2);
        assert_eq!(input.data(), b"llo");
        let room = input.spare().len();
        assert!(room >= READ_CHUNK);
        input.commit(0);
        assert_eq!(input.data(), b"llo");
        input.consume(3);
        assert!(input.is_empty());
        // A large request grows the buffer; once consumed it shrinks again.
        for _ in 0..6 {
            let n = input.spare().len();
            input.commit(n);
        }
        assert!(input.len() >= 6 * READ_CHUNK);
        input.consume(input.len() - 10);
        input.trim();
        assert_eq!(input.len(), 10);
        assert!(input.spare().len() >= READ_CHUNK);
    }
}
