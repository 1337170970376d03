//! The seam between the log and the file system.
//!
//! The log never touches `std::fs`; it asks a [`Backend`]. [`FsBackend`] is the real thing;
//! [`MemBackend`] keeps every file in memory and remembers, per file, which bytes were merely
//! written and which prefix was made durable by a sync, so crash tests can throw away any suffix
//! of the unsynced bytes, exactly as a power cut may.
//!
//! Invariants the log relies on: an append is all or nothing; files are only ever appended to, truncated at recovery, replaced
//! whole, or removed; a read sees every byte appended before it.

use std::io;
use std::path::Path;
use std::sync::Arc;

mod fs;
mod mem;

pub use fs::FsBackend;
pub use mem::MemBackend;

pub trait Backend: Send + Sync + std::fmt::Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names (not paths) of the files in `dir`, sorted; empty if the dir does not exist.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Names of the subdirectories of `dir`, sorted; empty if the dir does not exist.
    fn list_dirs(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whole content of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Opens for appending, creating it if missing.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Atomically replaces `path` with `bytes`, durable when this returns (write temp file, fsync,
    /// rename, fsync dir).
    fn replace_durably(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Truncates a file to `len` (used to cut a torn tail at recovery).
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Creates `dir` and whatever ancestors are missing, without waiting for the new entries to
    /// be durable; returns the directories whose entries changed (the parents of those created,
    /// outermost first), for a [`Backend::dir_sync_handle`] of each to make them durable later,
    /// with the first writes in `dir`. The default creates them durably at once and returns
    /// none.
    fn create_dir_all_deferred(&self, dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
        self.create_dir_all(dir)?;
        Ok(Vec::new())
    }
    /// A handle that makes the removals of files in `dir` done so far durable (fsync of the
    /// directory). The default does nothing, for backends whose removals are durable at once.
    fn dir_sync_handle(&self, dir: &Path) -> Arc<dyn SyncHandle> {
        let _ = dir;
        Arc::new(NoopSync)
    }
    /// Moves a directory and everything under it to `to` (whose parent must exist; `to` must
    /// not), durably: when this returns, a crash finds it at `to` and not at `from`. Recovery uses
    /// it to set aside what it cannot account for instead of deleting it.
    ///
    /// The default copies every file (`replace_durably`) and then removes the original, so a
    /// crash in between leaves both, never neither; backends should override it with a rename.
    fn rename_dir(&self, from: &Path, to: &Path) -> io::Result<()> {
        copy_dir(self, from, to)?;
        self.remove_dir_all(from)
    }
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (fewer only at the
    /// end of the file). The log streams segments through this, a bounded chunk at a time.
    ///
    /// The default reads the whole file; backends should override it.
    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let all = self.read(path)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
        let n = buf.len().min(all.len() - start);
        buf[..n].copy_from_slice(&all[start..start + n]);
        Ok(n)
    }
}

/// Copies a directory and everything under it to `to` (the default `rename_dir`).
fn copy_dir<B: Backend + ?Sized>(backend: &B, from: &Path, to: &Path) -> io::Result<()> {
    backend.create_dir_all(to)?;
    for name in backend.list(from)? {
        let bytes = backend.read(&from.join(&name))?;
        backend.replace_durably(&to.join(&name), &bytes)?;
    }
    for name in backend.list_dirs(from)? {
        copy_dir(backend, &from.join(&name), &to.join(&name))?;
    }
    Ok(())
}

pub trait AppendFile: Send + Sync + std::fmt::Debug {
    /// Appends all of `bytes` or, on error, nothing: a failed append leaves the file as it was
    /// (the log retries the same bytes later, after ENOSPC or EIO).
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A handle that makes everything appended so far durable; callable from another thread
    /// without the log (group commit: the broker collects handles under its lock, fsyncs outside
    /// it).
    fn sync_handle(&self) -> Arc<dyn SyncHandle>;
}

pub trait SyncHandle: Send + Sync + std::fmt::Debug {
    fn sync(&self) -> io::Result<()>;
}

/// A sync with nothing to do.
#[derive(Debug)]
struct NoopSync;

impl SyncHandle for NoopSync {
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}
