//! One segment file: its read-only memory map, its unwritten tail, and what the engine knows of it.
//!
//! Reads never make a syscall: a segment is mapped read-only (`mmap`, `MAP_SHARED`) and a record is
//! a bounds-checked slice of the map, served from the page cache. Appends are collected in the
//! active segment's in-memory `tail` and handed to the kernel with one `pwrite` per batch
//! ([`Segment::write_out`]); a record still in the tail is read from there.
//!
//! Why SIGBUS cannot happen in normal operation: a page of a file mapping faults with SIGBUS only
//! when it lies wholly beyond the end of the file. [`Segment::read`] returns only bytes below
//! `written`, i.e. bytes that a completed `pwrite` put inside the file, and the engine never
//! shrinks a mapped file: the one truncation it does (a torn tail at recovery) drops the map
//! first and maps the file again afterwards ([`Segment::truncate`]). Only someone else truncating
//! a segment under a running server, or a disk read error on a page that was evicted, can still
//! raise it; both are outside normal operation (the second is fatal for any store).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Appends are written out once the tail holds this much, whatever the caller does.
const TAIL_LIMIT: usize = 256 << 10;

pub(crate) fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("seg-{id:08}.log"))
}

/// A read-only shared mapping of the first `len` bytes (rounded up to pages) of a file.
struct Map {
    ptr: *mut u8,
    len: usize,
}

impl Map {
    fn new(file: &File, len: usize) -> std::io::Result<Map> {
        if len == 0 {
            return Ok(Map {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh read-only shared mapping chosen by the kernel; it aliases no Rust
        // object. Its pages are only read through `bytes`, within `len`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Map {
            ptr: ptr.cast(),
            len,
        })
    }

    /// `len` bytes at `offset`, if inside the mapping. The caller guarantees they are inside the
    /// file too (see the module docs).
    fn bytes(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        if len == 0 {
            return Some(&[]);
        }
        // SAFETY: in bounds of a live mapping (checked above); the bytes are file bytes the engine
        // wrote and never rewrites (segments are append-only), so they do not change under the
        // borrow, and `&self` keeps the mapping alive for the slice's lifetime.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.add(offset), len) })
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the region mapped in `new`; no slice of it outlives `self`.
            unsafe {
                libc::munmap(self.ptr.cast(), self.len);
            }
        }
    }
}

/// One segment file and what the engine knows about it.
pub(crate) struct Segment {
    pub file: File,
    map: Map,
    /// End of the appended bytes (the next record's offset), counting bytes still in `tail`.
    pub len: u64,
    /// Bytes handed to the kernel; `tail` holds the bytes from here to `len`.
    written: u64,
    tail: Vec<u8>,
    /// Bytes of records in this segment that the index points to.
    pub live: u64,
}

impl Segment {
    /// Adopts an existing file of `len` bytes (recovery), mapping what it holds.
    pub fn existing(file: File, len: u64) -> std::io::Result<Segment> {
        let map = Map::new(&file, len as usize)?;
        Ok(Segment {
            file,
            map,
            len,
            written: len,
            tail: Vec::new(),
            live: 0,
        })
    }

    /// A new, empty segment that will receive appends. `reserve` bytes of address space are
    /// mapped at once (beyond the end of the file, untouched until written) so appends never
    /// need a new mapping.
    pub fn fresh(file: File, reserve: u64) -> std::io::Result<Segment> {
        let map = Map::new(&file, reserve as usize)?;
        Ok(Segment {
            file,
            map,
            len: 0,
            written: 0,
            tail: Vec::new(),
            live: 0,
        })
    }

    /// The `len` bytes at `offset`, from the tail or the map; `None` if they were never appended.
    #[inline]
    pub fn read(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len as u64)?;
        if end > self.len {
            return None;
        }
        if offset >= self.written {
            let at = (offset - self.written) as usize;
            return self.tail.get(at..at + len);
        }
        if end > self.written {
            return None; // records never straddle `written` (see `write_out`)
        }
        self.map.bytes(offset as usize, len)
    }

    /// The bytes from `offset` to the end of the appended data (recovery scans).
    pub fn read_to_end(&self, offset: u64) -> Option<&[u8]> {
        let len = self.len.checked_sub(offset)?;
        self.read(offset, len as usize)
    }

    /// Appends whole records to the tail; writes the tail out once it is large.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tail.extend_from_slice(bytes);
        self.len += bytes.len() as u64;
        if self.tail.len() >= TAIL_LIMIT {
            self.write_out()?;
        }
        Ok(())
    }

    /// True when appended bytes are still in the tail.
    pub fn has_tail(&self) -> bool {
        !self.tail.is_empty()
    }

    /// Hands the tail to the kernel in one `pwrite` (page cache; no disk wait). On error nothing
    /// counts as written and the tail is kept, so a retry rewrites the same bytes at the same
    /// offset: `written` only ever advances to a record boundary.
    pub fn write_out(&mut self) -> std::io::Result<()> {
        if self.tail.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(&self.tail, self.written)?;
        self.written = self.len;
        self.tail.clear();
        if self.tail.capacity() > 2 * TAIL_LIMIT {
            self.tail.shrink_to(TAIL_LIMIT);
        }
        if self.written > self.map.len as u64 {
            // A record larger than the reservation (only with odd limits): map the file again.
            self.map = Map::new(&self.file, (self.written as usize).next_power_of_two())?;
        }
        Ok(())
    }

    /// Cuts the file to `keep` bytes (a torn tail found by recovery), unmapping it first.
    pub fn truncate(&mut self, keep: u64) -> std::io::Result<()> {
        self.write_out()?;
        self.map = Map::new(&self.file, 0)?;
        self.file.set_len(keep)?;
        self.file.sync_all()?;
        self.len = keep;
        self.written = keep;
        self.map = Map::new(&self.file, keep as usize)?;
        Ok(())
    }
}

// SAFETY: the mapping belongs to the process, not to a thread; a `Segment` moves between threads
// whole (the server opens engines before handing each to its shard's thread) and is never shared.
unsafe impl Send for Map {}
