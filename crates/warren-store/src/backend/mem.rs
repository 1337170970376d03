//! [`MemBackend`]: files in memory, with the written/durable split crash tests need.
//!
//! Model: each file is its bytes plus the length of the prefix made durable by a sync. Creating,
//! truncating and removing files and directories take effect at once and survive a crash (the
//! metadata is treated as journaled); only appended bytes can be lost, and a crash keeps each
//! file's durable prefix plus whatever prefix of the rest the test chooses.
//!
//! Lock order: the backend's map lock, then a file's lock; a sync handle takes only its file's.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{AppendFile, Backend, SyncHandle};

#[derive(Debug, Default)]
struct MemFile {
    data: Vec<u8>,
    durable: u64,
}

type FileRef = Arc<Mutex<MemFile>>;

#[derive(Debug, Default)]
struct Inner {
    dirs: BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, FileRef>,
}

/// In memory; keeps per file the bytes "written" and the prefix "durable" (synced). Clones share
/// the same files.
#[derive(Debug, Clone, Default)]
pub struct MemBackend {
    inner: Arc<Mutex<Inner>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another test thread must not turn every later call into a second panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

impl MemBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a crash: every file keeps its durable prefix plus a caller-chosen prefix of its
    /// unsynced bytes: `keep(path, durable_len, written_len) -> kept_len` (clamped to that range).
    pub fn crash(&self, keep: &mut dyn FnMut(&Path, u64, u64) -> u64) {
        let inner = lock(&self.inner);
        for (path, file) in &inner.files {
            let mut f = lock(file);
            let written = f.data.len() as u64;
            let kept = keep(path, f.durable, written).clamp(f.durable, written);
            f.data.truncate(kept as usize);
            f.durable = kept;
        }
    }

    /// Flips a byte (corruption tests). Does nothing past the end of the file.
    pub fn corrupt(&self, path: &Path, offset: u64) {
        let inner = lock(&self.inner);
        if let Some(file) = inner.files.get(path) {
            let mut f = lock(file);
            if let Some(b) = usize::try_from(offset).ok().and_then(|o| f.data.get_mut(o)) {
                *b ^= 0xff;
            }
        }
    }

    /// Simulates a failed fsync after which the OS dropped the file's unsynced pages: those bytes
    /// read back as zeros from now on; the length stays.
    pub fn lose_unsynced(&self, path: &Path) {
        let inner = lock(&self.inner);
        if let Some(file) = inner.files.get(path) {
            let mut f = lock(file);
            let from = usize::try_from(f.durable).unwrap_or(usize::MAX).min(f.data.len());
            f.data[from..].fill(0);
        }
    }

    /// Written length of a file, if it exists.
    pub fn file_len(&self, path: &Path) -> Option<u64> {
        let inner = lock(&self.inner);
        inner.files.get(path).map(|f| lock(f).data.len() as u64)
    }

    /// Durable (synced) length of a file, if it exists.
    pub fn durable_len(&self, path: &Path) -> Option<u64> {
        let inner = lock(&self.inner);
        inner.files.get(path).map(|f| lock(f).durable)
    }

    /// Paths of every file, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        lock(&self.inner).files.keys().cloned().collect()
    }

    /// An independent deep copy: lets a test crash the same state many ways.
    pub fn snapshot(&self) -> MemBackend {
        let inner = lock(&self.inner);
        let files = inner
            .files
            .iter()
            .map(|(p, f)| {
                let f = lock(f);
                (p.clone(), Arc::new(Mutex::new(MemFile { data: f.data.clone(), durable: f.durable })))
            })
            .collect();
        MemBackend { inner: Arc::new(Mutex::new(Inner { dirs: inner.dirs.clone(), files })) }
    }

    fn file(&self, path: &Path) -> io::Result<FileRef> {
        lock(&self.inner).files.get(path).cloned().ok_or_else(|| not_found(path))
    }
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl Backend for MemBackend {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut inner = lock(&self.inner);
        for d in dir.ancestors() {
            if !d.as_os_str().is_empty() {
                inner.dirs.insert(d.to_path_buf());
            }
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let inner = lock(&self.inner);
        let mut names: Vec<String> = inner
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    fn list_dirs(&self, dir: &Path) -> io::Result<Vec<String>> {
        let inner = lock(&self.inner);
        let mut names: Vec<String> = inner
            .dirs
            .iter()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let file = self.file(path)?;
        let data = lock(&file).data.clone();
        Ok(data)
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let mut inner = lock(&self.inner);
        let dir = parent_of(path);
        if !dir.as_os_str().is_empty() && !inner.dirs.contains(&dir) {
            return Err(not_found(&dir));
        }
        let file = Arc::clone(inner.files.entry(path.to_path_buf()).or_default());
        Ok(Box::new(MemAppendFile { file }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        lock(&self.inner).files.remove(path).map(drop).ok_or_else(|| not_found(path))
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut inner = lock(&self.inner);
        inner.files.retain(|p, _| !p.starts_with(dir));
        inner.dirs.retain(|d| !d.starts_with(dir));
        Ok(())
    }

    fn replace_durably(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut inner = lock(&self.inner);
        let dir = parent_of(path);
        if !dir.as_os_str().is_empty() && !inner.dirs.contains(&dir) {
            return Err(not_found(&dir));
        }
        let file = MemFile { data: bytes.to_vec(), durable: bytes.len() as u64 };
        inner.files.insert(path.to_path_buf(), Arc::new(Mutex::new(file)));
        Ok(())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = self.file(path)?;
        let mut f = lock(&file);
        let len = len.min(f.data.len() as u64);
        f.data.truncate(len as usize);
        f.durable = f.durable.min(len);
        Ok(())
    }

    fn rename_dir(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut inner = lock(&self.inner);
        if !inner.dirs.contains(from) {
            return Err(not_found(from));
        }
        if inner.dirs.contains(to) || inner.files.contains_key(to) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{}: exists", to.display())));
        }
        if !inner.dirs.contains(&parent_of(to)) {
            return Err(not_found(&parent_of(to)));
        }
        let moved = |p: &Path| p.strip_prefix(from).map(|rest| to.join(rest)).ok();
        let dirs: Vec<PathBuf> = inner.dirs.iter().filter(|d| d.starts_with(from)).cloned().collect();
        for d in dirs {
            inner.dirs.remove(&d);
            inner.dirs.extend(moved(&d));
        }
        let files: Vec<PathBuf> = inner.files.keys().filter(|p| p.starts_with(from)).cloned().collect();
        for p in files {
            if let (Some(f), Some(to)) = (inner.files.remove(&p), moved(&p)) {
                inner.files.insert(to, f);
            }
        }
        Ok(())
    }

    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let file = self.file(path)?;
        let f = lock(&file);
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(f.data.len());
        let n = buf.len().min(f.data.len() - start);
        buf[..n].copy_from_slice(&f.data[start..start + n]);
        Ok(n)
    }
}

#[derive(Debug)]
struct MemAppendFile {
    file: FileRef,
}

impl AppendFile for MemAppendFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        lock(&self.file).data.extend_from_slice(bytes);
        Ok(())
    }

    fn len(&self) -> u64 {
        lock(&self.file).data.len() as u64
    }

    fn sync_handle(&self) -> Arc<dyn SyncHandle> {
        Arc::new(MemSync { file: Arc::clone(&self.file) })
    }
}

#[derive(Debug)]
struct MemSync {
    file: FileRef,
}

impl SyncHandle for MemSync {
    fn sync(&self) -> io::Result<()> {
        let mut f = lock(&self.file);
        f.durable = f.data.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_durable_prefix_and_chosen_tail() {
        let b = MemBackend::new();
        b.create_dir_all(Path::new("/q")).expect("dir");
        let p = Path::new("/q/a");
        let mut f = b.open_append(p).expect("open");
        f.append(b"0123").expect("append");
        f.sync_handle().sync().expect("sync");
        f.append(b"4567").expect("append");
        assert_eq!((b.durable_len(p), b.file_len(p)), (Some(4), Some(8)));
        let copy = b.snapshot();
        b.crash(&mut |_, durable, written| {
            assert_eq!((durable, written), (4, 8));
            6
        });
        assert_eq!(b.read(p).expect("read"), b"012345");
        copy.crash(&mut |_, _, _| 0);
        assert_eq!(copy.read(p).expect("read"), b"0123");
    }

    #[test]
    fn rename_dir_moves_everything_under_it() {
        let b = MemBackend::new();
        b.create_dir_all(Path::new("/d/q/p1")).expect("dir");
        b.create_dir_all(Path::new("/d/aside")).expect("dir");
        b.replace_durably(Path::new("/d/q/a"), b"a").expect("file");
        b.replace_durably(Path::new("/d/q/p1/b"), b"b").expect("file");
        b.rename_dir(Path::new("/d/q"), Path::new("/d/aside/q")).expect("rename");
        assert_eq!(b.paths(), [Path::new("/d/aside/q/a"), Path::new("/d/aside/q/p1/b")]);
        assert_eq!(b.list_dirs(Path::new("/d")).expect("list"), ["aside"]);
        assert_eq!(b.list_dirs(Path::new("/d/aside/q")).expect("list"), ["p1"]);
        let again = b.rename_dir(Path::new("/d/aside/q"), Path::new("/d/aside/q"));
        assert_eq!(again.map_err(|e| e.kind()), Err(io::ErrorKind::AlreadyExists));
        let gone = b.rename_dir(Path::new("/d/q"), Path::new("/d/x"));
        assert_eq!(gone.map_err(|e| e.kind()), Err(io::ErrorKind::NotFound));
    }

    #[test]
    fn open_append_needs_the_directory() {
        let b = MemBackend::new();
        assert_eq!(b.open_append(Path::new("/nope/x")).map(drop).map_err(|e| e.kind()), Err(io::ErrorKind::NotFound));
    }
}
