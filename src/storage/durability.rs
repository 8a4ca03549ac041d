//! Durability bookkeeping: what is not yet on stable storage, and the sync rounds that put it there.
//!
//! The engine never fsyncs on its own. It records what a crash could lose ([`Pending`]): segments
//! with unsynced bytes, a changed directory (a segment created or deleted), a `flush_all` marker
//! not yet written, and compacted segments waiting to be deleted. A sync round covers all of it:
//! - [`Engine::begin_sync`] writes buffered appends out and hands over duplicated handles of the
//!   files to fsync (segments first, then the directory);
//! - the caller fsyncs them: the shard adaptor through glommio's io_uring (`fdatasync` submitted
//!   to the ring, so the executor keeps running), a bare engine in [`Engine::sync`];
//! - [`Engine::finish_sync`] then deletes the compacted segments whose live records were copied
//!   before the round began (their copies are now durable), or, if an fsync failed, puts
//!   everything back so the next round retries it.
//!
//! Why compacted segments wait for a round: until the copies are on stable storage, the original
//! is the only durable copy of its records. Deleting it is a metadata operation; the deletion
//! itself is made durable by a later directory fsync (the next round, or the snapshot's). A crash
//! that brings a deleted segment back is harmless: a full scan replays it before the later
//! segments holding the copies, and recovery ignores (and deletes) a segment that a valid snapshot
//! shows was already gone.

use std::fs::File;
use std::path::PathBuf;

use super::segment::segment_path;
use super::{Engine, StorageError};

/// What the next sync round must cover.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Segment ids holding bytes not covered by an fsync.
    segments: Vec<u32>,
    /// The directory's entries changed since its last fsync.
    pub directory: bool,
    /// A flush version not yet written durably.
    pub flush_version: Option<u64>,
    /// Compacted segments to delete after a round that began after they were retired:
    /// (segment id, rounds begun when it was retired).
    retired: Vec<(u32, u64)>,
    rounds_begun: u64,
}

impl Pending {
    pub fn mark_segment(&mut self, id: u32) {
        if self.segments.last() != Some(&id) && !self.segments.contains(&id) {
            self.segments.push(id);
        }
    }

    /// A compacted segment, already out of the segment table, whose file must outlive the next
    /// round.
    pub fn retire(&mut self, id: u32) {
        self.segments.retain(|&s| s != id);
        self.retired.push((id, self.rounds_begun));
    }

    /// True when a round has work beyond segment bytes (directory, flush marker, deletions): the
    /// shard runs such a round whatever the durability policy.
    pub fn has_housekeeping(&self) -> bool {
        self.directory || self.flush_version.is_some() || !self.retired.is_empty()
    }
}

/// One sync round in flight (see the module docs).
#[derive(Debug)]
pub struct SyncRound {
    round: u64,
    segments: Vec<u32>,
    directory: bool,
    flush_version: Option<u64>,
    dir: PathBuf,
    files: Vec<File>,
}

impl SyncRound {
    /// The handles to fsync: segment files, then the directory if its entries changed.
    pub fn take_files(&mut self) -> Vec<File> {
        std::mem::take(&mut self.files)
    }

    /// The blocking write of the `flush_all` marker this round must make durable, if any (write a
    /// temporary file, fsync, rename, fsync the directory): run it off the shard's thread.
    pub fn flush_marker(&self) -> Option<impl FnOnce() -> Result<(), StorageError> + Send> {
        let (dir, version) = (self.dir.clone(), self.flush_version?);
        Some(move || super::recovery::write_flush_version(&dir, version))
    }
}

impl Engine {
    /// Starts a sync round: writes buffered appends out and returns what to fsync. Nothing is
    /// forgotten until [`Engine::finish_sync`] reports the outcome.
    pub fn begin_sync(&mut self) -> Result<SyncRound, StorageError> {
        self.write_out()?;
        let mut files = Vec::new();
        for id in &self.pending.segments {
            if let Some(seg) = self.segments.get(id) {
                files.push(seg.file.try_clone()?);
            }
        }
        if self.pending.directory {
            files.push(File::open(&self.cfg.dir)?);
        }
        self.pending.rounds_begun += 1;
        Ok(SyncRound {
            round: self.pending.rounds_begun,
            segments: std::mem::take(&mut self.pending.segments),
            directory: std::mem::take(&mut self.pending.directory),
            flush_version: self.pending.flush_version.take(),
            dir: self.cfg.dir.clone(),
            files,
        })
    }

    /// Ends a round. On success deletes the compacted segments it covers and returns how many;
    /// on failure keeps everything pending for the next round.
    pub fn finish_sync(&mut self, round: SyncRound, ok: bool) -> Result<u64, StorageError> {
        if !ok {
            for id in round.segments {
                if self.segments.contains_key(&id) {
                    self.pending.mark_segment(id);
                }
            }
            self.pending.directory |= round.directory;
            if let Some(v) = round.flush_version {
                let newer = self.pending.flush_version.map_or(v, |p| p.max(v));
                self.pending.flush_version = Some(newer);
            }
            return Ok(0);
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending.retired)
            .into_iter()
            .partition(|&(_, begun)| begun < round.round);
        self.pending.retired = later;
        let mut deleted = 0;
        for (id, begun) in due {
            match std::fs::remove_file(segment_path(&self.cfg.dir, id)) {
                Ok(()) => deleted += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.pending.retired.push((id, begun));
                    return Err(e.into());
                }
            }
            self.pending.directory = true;
        }
        Ok(deleted)
    }

    /// Forces every appended byte (and the directory, the flush marker, compacted segments'
    /// deletions) to stable storage. Blocking: the shard adaptor runs rounds off its thread instead.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        let mut round = self.begin_sync()?;
        let mut result: Result<(), StorageError> = round
            .take_files()
            .iter()
            .try_for_each(|f| f.sync_data())
            .map_err(Into::into);
        if let (Ok(()), Some(marker)) = (&result, round.flush_marker()) {
            result = marker();
        }
        let deleted = self.finish_sync(round, result.is_ok())?;
        result?;
        if deleted > 0 {
            File::open(&self.cfg.dir)?.sync_all()?;
            self.pending.directory = false;
        }
        Ok(())
    }

    /// True when something written is not yet known to be durable.
    pub fn has_unsynced(&self) -> bool {
        !self.pending.segments.is_empty()
            || self.pending.directory
            || self.pending.flush_version.is_some()
    }

    /// True when a sync round is due whatever the durability policy (directory entries, a flush
    /// marker, or compacted segments waiting for deletion).
    pub fn needs_housekeeping_sync(&self) -> bool {
        self.pending.has_housekeeping()
    }
}
