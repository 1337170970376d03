//! [`FsBackend`]: real files through `std::fs`.
//!
//! Durability points: a sync is `File::sync_data`; the first sync of a file this backend created
//! also fsyncs its directory, so the new name is as durable as its bytes (this keeps the directory
//! fsync out of the caller's lock, on the syncing thread). New directories and `replace_durably`
//! fsync their parent directory before returning, and `rename_dir` fsyncs both parents.
//! Removals are made durable by a `dir_sync_handle`, which the log hands out with its other sync
//! handles after deleting files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{AppendFile, Backend, SyncHandle};

/// Real files (std::fs); sync = `File::sync_data`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsBackend;

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        // Directories cannot be opened for fsync here; renames and creates are journaled by the OS.
        let _ = dir;
        Ok(())
    }
}

/// Sorted names of the entries of `dir` whose type `keep` accepts; empty if `dir` is missing.
fn names_in(dir: &Path, keep: impl Fn(&fs::FileType) -> bool) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        if keep(&entry.file_type()?) {
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
    }
    names.sort();
    Ok(names)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl Backend for FsBackend {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Each new entry made durable, outermost first.
        for changed in self.create_dir_all_deferred(dir)? {
            sync_dir(&changed)?;
        }
        Ok(())
    }

    fn create_dir_all_deferred(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        if dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.as_os_str().is_empty() && !d.is_dir() {
            missing.push(d.to_path_buf());
            d = parent(d);
        }
        let mut changed = Vec::new();
        for d in missing.iter().rev() {
            match fs::create_dir(d) {
                Ok(()) => changed.push(parent(d).to_path_buf()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(changed)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        names_in(dir, |t| t.is_file())
    }

    fn list_dirs(&self, dir: &Path) -> io::Result<Vec<String>> {
        names_in(dir, |t| t.is_dir())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let (file, created) = match OpenOptions::new().append(true).create_new(true).open(path) {
            Ok(file) => (file, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (OpenOptions::new().append(true).open(path)?, false),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let dir = DirSync { dir: parent(path).to_path_buf(), needed: AtomicBool::new(created) };
        Ok(Box::new(FsAppendFile { file: Arc::new(file), len, dir: Arc::new(dir), torn: false }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn replace_durably(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        sync_dir(parent(path))
    }

    fn rename_dir(&self, from: &Path, to: &Path) -> io::Result<()> {
        if to.exists() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{}: exists", to.display())));
        }
        fs::rename(from, to)?;
        // Both directory entries changed: the new one must be durable before the old is gone.
        sync_dir(parent(to))?;
        if parent(to) != parent(from) {
            sync_dir(parent(from))?;
        }
        Ok(())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_data()
    }

    fn dir_sync_handle(&self, dir: &Path) -> Arc<dyn SyncHandle> {
        Arc::new(FsDirSync(dir.to_path_buf()))
    }

    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let file = File::open(path)?;
        let mut done = 0;
        while done < buf.len() {
            let n = read_at(&file, &mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

/// Makes removals in a directory durable.
#[derive(Debug)]
struct FsDirSync(PathBuf);

impl SyncHandle for FsDirSync {
    fn sync(&self) -> io::Result<()> {
        sync_dir(&self.0)
    }
}

/// Whether a created file's directory entry still needs an fsync; shared by all its sync handles.
#[derive(Debug)]
struct DirSync {
    dir: PathBuf,
    needed: AtomicBool,
}

#[derive(Debug)]
struct FsAppendFile {
    file: Arc<File>,
    len: u64,
    dir: Arc<DirSync>,
    /// A failed append left bytes past `len` that could not be cut off yet.
    torn: bool,
}

impl AppendFile for FsAppendFile {
    /// All or nothing: a write that fails part-way (ENOSPC, EIO) is cut back to the length before
    /// it, so the caller can retry the same bytes later. If even the cut fails, it is retried
    /// before the next write, which fails until it succeeds.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.torn {
            self.file.set_len(self.len)?;
            self.torn = false;
        }
        if let Err(e) = (&*self.file).write_all(bytes) {
            self.torn = self.file.set_len(self.len).is_err();
            return Err(e);
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn sync_handle(&self) -> Arc<dyn SyncHandle> {
        Arc::new(FsSync { file: Arc::clone(&self.file), dir: Arc::clone(&self.dir) })
    }
}

#[derive(Debug)]
struct FsSync {
    file: Arc<File>,
    dir: Arc<DirSync>,
}

impl SyncHandle for FsSync {
    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()?;
        if self.dir.needed.load(Ordering::Acquire) {
            sync_dir(&self.dir.dir)?;
            self.dir.needed.store(false, Ordering::Release);
        }
        Ok(())
    }
}
