//! Recovery of what the store holds when the files disagree with each other or are damaged:
//! reading the definitions (snapshot, journal, and the previous pair kept for a fallback), and
//! setting aside log directories that no definition names.
//!
//! Invariant: recovery never deletes what it cannot account for. A damaged file is copied aside
//! before anything replaces it; an unknown log directory is moved under `quarantine/`, never
//! removed; when the definitions cannot be rebuilt, the broker refuses to start rather than
//! start empty over existing data (unless the operator says so, see [`ACCEPT_LOSS`]).
//! docs/store-format.md ("Storage faults") lists what each fault does.

use super::{Broker, RecoveryReport, Store};
use crate::definitions::{check_snapshot, journal_generation, read_journal, DefOp, Definitions};
use crate::hash::{HashMap, HashSet};
use bytes::Bytes;
use std::io;
use std::path::{Path, PathBuf};
use warren_store::{Backend, SegmentLog};

/// The snapshot before the current one, kept at every rewrite: the fallback when the current
/// one is damaged or missing.
const PREVIOUS: &str = "definitions.previous";
/// The journal of [`PREVIOUS`], kept at every rewrite.
const PREVIOUS_JOURNAL: &str = "definitions.journal.previous";
/// A file the operator creates to start although the definitions cannot be rebuilt: the broker
/// then starts with whatever it could read, and sets aside every log no definition names.
/// One-shot: recovery removes it once it has started, so later damage is refused again.
pub const ACCEPT_LOSS: &str = "definitions.accept-loss";
/// Where recovery moves log directories that no definition names.
pub const QUARANTINE: &str = "quarantine";
/// The directories under the data directory that hold logs named by definitions.
const LOG_KINDS: [&str; 3] = ["queues", "delayed", "dedup"];

/// A log directory that no definition names, moved aside instead of being deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub from: PathBuf,
    pub to: PathBuf,
    /// Unsettled records found in it (messages, delayed messages or deduplication entries).
    pub messages: u64,
    /// Whose log it was, when some definitions file that was read names it.
    pub owner: Option<String>,
}

impl std::fmt::Display for Quarantined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is named by no definition", self.from.display())?;
        if let Some(owner) = &self.owner {
            write!(f, " (it was the log of {owner})")?;
        }
        write!(f, "; moved to {} with the {} messages it holds", self.to.display(), self.messages)
    }
}

/// What the definitions files gave.
pub(super) struct Loaded {
    pub defs: Definitions,
    /// Log directory -> whose it was, from every definitions file read (for the quarantine
    /// report).
    pub owners: HashMap<PathBuf, String>,
    /// The operator asked to start anyway ([`ACCEPT_LOSS`]); remove the file once started.
    pub accept_loss: bool,
}

fn read_opt(backend: &dyn Backend, path: &Path) -> Result<Option<Vec<u8>>, String> {
    match backend.read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

impl Store {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Copies a damaged file aside (as `<name>.damaged-<generation>`) before recovery replaces
    /// it, so the evidence survives.
    fn keep_damaged(&self, path: &Path, bytes: &[u8], report: &mut RecoveryReport) -> Result<(), String> {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".damaged-{}", self.generation + 1));
        let to = PathBuf::from(name);
        self.backend.replace_durably(&to, bytes).map_err(|e| format!("cannot keep {}: {e}", to.display()))?;
        report.corrupt.push(format!("{}: a copy of the damaged file is kept as {}", path.display(), to.display()));
        Ok(())
    }

    /// Before a snapshot rewrite: keeps the current snapshot (if intact) and its journal as the
    /// previous pair, the fallback if the new snapshot is later found damaged or missing.
    pub(super) fn keep_previous(&self) -> io::Result<()> {
        let current = match self.backend.read(&self.definitions_path()) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        // A damaged snapshot never replaces a good previous one.
        if check_snapshot(&current).is_err() {
            return Ok(());
        }
        self.backend.replace_durably(&self.path(PREVIOUS), &current)?;
        match self.backend.read(&self.journal_path()) {
            Ok(journal) => self.backend.replace_durably(&self.path(PREVIOUS_JOURNAL), &journal),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// True when the data directory holds nothing a broker wrote: only then may missing
    /// definitions mean a new broker.
    fn is_fresh(&self) -> Result<bool, String> {
        for name in ["definitions.journal", PREVIOUS, PREVIOUS_JOURNAL] {
            if read_opt(&*self.backend, &self.path(name))?.is_some() {
                return Ok(false);
            }
        }
        for kind in LOG_KINDS {
            let logs = self.backend.list_dirs(&self.path(kind)).map_err(|e| format!("cannot list logs: {e}"))?;
            if !logs.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Notes whose logs the definitions name, for the quarantine report.
    fn note_owners(&self, defs: &Definitions, ops: &[DefOp], owners: &mut HashMap<PathBuf, String>) {
        let mut queue = |vhost: &str, name: &str| {
            owners.insert(self.durable_dir(vhost, name), format!("queue '{name}' in vhost '{vhost}'"));
        };
        for q in &defs.queues {
            queue(&q.vhost, &q.name);
        }
        for op in ops {
            match op {
                DefOp::PutQueue(q) => queue(&q.vhost, &q.name),
                DefOp::DelQueue { vhost, name } => queue(vhost, name),
                _ => {}
            }
        }
        let mut exchange = |vhost: &str, name: &str| {
            let owner = format!("exchange '{name}' in vhost '{vhost}'");
            owners.insert(self.delayed_dir(vhost, name), owner.clone());
            owners.insert(self.hashed_dir("dedup", vhost, name), owner);
        };
        for x in &defs.exchanges {
            exchange(&x.vhost, &x.name);
        }
        for op in ops {
            match op {
                DefOp::PutExchange(x) => exchange(&x.vhost, &x.name),
                DefOp::DelExchange { vhost, name } => exchange(vhost, name),
                _ => {}
            }
        }
    }
}

/// The definitions files as read at recovery.
struct Files {
    snapshot: Option<Vec<u8>>,
    journal: Option<Vec<u8>>,
    previous_journal: Option<Vec<u8>>,
}

/// Which journals to replay: those continuing one of these generations, or any.
#[derive(Debug, Clone, Copy)]
enum Continues<'a> {
    OneOf(&'a [u64]),
    Any,
}

impl Broker {
    /// Reads the definitions: the snapshot and its journal; if the snapshot is damaged or
    /// missing over existing data, the previous snapshot and the journals that continue it;
    /// failing that, refuses (an error naming the file) unless [`ACCEPT_LOSS`] exists.
    pub(super) fn load_definitions(&mut self, report: &mut RecoveryReport) -> Result<Loaded, String> {
        let backend = self.store.backend.clone();
        let files = Files {
            snapshot: read_opt(&*backend, &self.store.definitions_path())?,
            journal: read_opt(&*backend, &self.store.journal_path())?,
            previous_journal: read_opt(&*backend, &self.store.path(PREVIOUS_JOURNAL))?,
        };
        let mut loaded = Loaded { defs: Definitions::default(), owners: HashMap::default(), accept_loss: false };
        let decoded = files.snapshot.clone().map(|b| Definitions::decode(Bytes::from(b)));
        match decoded {
            Some(Ok(defs)) => {
                let journal_gen = files.journal.as_deref().and_then(journal_generation);
                self.store.generation = defs.generation.max(journal_gen.unwrap_or(0));
                let generation = defs.generation;
                loaded.defs = defs;
                self.store.note_owners(&loaded.defs, &[], &mut loaded.owners);
                let path = self.store.journal_path();
                self.replay_file(
                    &mut loaded,
                    &path,
                    files.journal.as_deref(),
                    Continues::OneOf(&[generation]),
                    report,
                )?;
            }
            None if self.store.is_fresh()? => {}
            other => {
                let why = match other {
                    Some(Err(e)) => e,
                    _ => "missing".to_string(),
                };
                self.fall_back(&why, &files, &mut loaded, report)?;
            }
        }
        Ok(loaded)
    }

    /// Replays the journal file at `path` (if any) onto the definitions if it continues what
    /// `continues` says (or its header is damaged), reporting damage and keeping a copy of a
    /// damaged file.
    fn replay_file(
        &self,
        loaded: &mut Loaded,
        path: &Path,
        bytes: Option<&[u8]>,
        continues: Continues<'_>,
        report: &mut RecoveryReport,
    ) -> Result<(), String> {
        let Some(bytes) = bytes else { return Ok(()) };
        let j = read_journal(bytes);
        let file = path.display();
        match (j.generation, continues) {
            (Some(_), Continues::Any) => {}
            (Some(g), Continues::OneOf(gens)) if gens.contains(&g) => {}
            // A crash between the two writes of a rewrite: the snapshot already holds it.
            (Some(g), Continues::OneOf(gens)) if gens.iter().all(|&s| g < s) => return Ok(()),
            (Some(g), Continues::OneOf(gens)) => {
                report.corrupt.push(format!(
                    "{file}: generation {g} does not continue the snapshot (generation {gens:?}); its {} changes \
                     are not applied",
                    j.ops.len()
                ));
                self.store.note_owners(&Definitions::default(), &j.ops, &mut loaded.owners);
                return self.store.keep_damaged(path, bytes, report);
            }
            (None, _) => report.corrupt.push(format!(
                "{file}: the header is damaged; its records are replayed as if it continued the snapshot"
            )),
        }
        for (offset, why) in &j.damaged {
            report.corrupt.push(format!(
                "{file}: {why} at byte {offset}, with valid records after it: damage, not a torn write; the change \
                 in it is lost, every valid record before and after it is replayed"
            ));
        }
        if let Some(torn) = &j.torn {
            report.progress.push(format!("{file}: stopped at {torn} (a change never confirmed)"));
        }
        report.progress.push(format!("{file}: {} changes replayed", j.ops.len()));
        self.store.note_owners(&Definitions::default(), &j.ops, &mut loaded.owners);
        let damaged = j.generation.is_none() || !j.damaged.is_empty();
        loaded.defs.replay(j.ops);
        if damaged {
            self.store.keep_damaged(path, bytes, report)?;
        }
        Ok(())
    }

    /// The snapshot is damaged (`why`) or missing over existing data: rebuild from the previous
    /// snapshot and the journals that continue it, or refuse.
    fn fall_back(
        &mut self,
        why: &str,
        files: &Files,
        loaded: &mut Loaded,
        report: &mut RecoveryReport,
    ) -> Result<(), String> {
        let backend = self.store.backend.clone();
        let snapshot_path = self.store.definitions_path();
        let previous_path = self.store.path(PREVIOUS);
        report.corrupt.push(format!("{}: {why}", snapshot_path.display()));
        let previous = match read_opt(&*backend, &previous_path)? {
            Some(bytes) => match Definitions::decode(Bytes::from(bytes)) {
                Ok(d) => Some(d),
                Err(e) => {
                    report.corrupt.push(format!("{}: {e}", previous_path.display()));
                    None
                }
            },
            None => None,
        };
        loaded.accept_loss = read_opt(&*backend, &self.store.path(ACCEPT_LOSS))?.is_some();
        // Whatever is written next must be newer than every file on disk.
        let journal_gens = [files.journal.as_deref(), files.previous_journal.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(journal_generation);
        let newest = journal_gens.chain(previous.as_ref().map(|p| p.generation)).max().unwrap_or(0);
        self.store.generation = newest;
        if let Some(bytes) = &files.snapshot {
            self.store.keep_damaged(&snapshot_path, bytes, report)?;
        }
        let (own, next) = match previous {
            Some(prev) => {
                report.corrupt.push(format!(
                    "{}: recovered from {} (generation {}) and the journals that continue it; changes to vhosts, \
                     users, permissions, policies and limits made by the last snapshot rewrite may be missing",
                    snapshot_path.display(),
                    previous_path.display(),
                    prev.generation
                ));
                let g = prev.generation;
                loaded.defs = prev;
                self.store.note_owners(&loaded.defs, &[], &mut loaded.owners);
                // The previous snapshot P is continued by its own journal (P), and the lost
                // snapshot (P+1) by the current journal (or still by P's, in a crash between
                // the two writes of a rewrite).
                ([g], [g, g + 1])
            }
            None if loaded.accept_loss => {
                report.corrupt.push(format!(
                    "{}: no intact {PREVIOUS}; starting anyway ({ACCEPT_LOSS} exists) with what the journals hold; \
                     logs that no definition names are quarantined",
                    snapshot_path.display()
                ));
                let any = Continues::Any;
                let prev_journal = self.store.path(PREVIOUS_JOURNAL);
                self.replay_file(loaded, &prev_journal, files.previous_journal.as_deref(), any, report)?;
                let journal = self.store.journal_path();
                return self.replay_file(loaded, &journal, files.journal.as_deref(), any, report);
            }
            None => {
                return Err(format!(
                    "{}: {why}, and there is no intact {PREVIOUS} to fall back on; the data directory is not new, so \
                     Warren does not start with empty definitions. Restore the file from a backup, or create {} to \
                     start with what can be read (logs that no definition names are moved to {}, not deleted)",
                    snapshot_path.display(),
                    self.store.path(ACCEPT_LOSS).display(),
                    self.store.path(QUARANTINE).display()
                ));
            }
        };
        let prev_journal = self.store.path(PREVIOUS_JOURNAL);
        self.replay_file(loaded, &prev_journal, files.previous_journal.as_deref(), Continues::OneOf(&own), report)?;
        let journal = self.store.journal_path();
        self.replay_file(loaded, &journal, files.journal.as_deref(), Continues::OneOf(&next), report)
    }

    /// Moves every log directory that no definition names (`live`) under `quarantine/`, counting
    /// what it holds without changing it. Never removes one.
    pub(super) fn set_aside_unknown_logs(
        &mut self,
        live: &HashSet<PathBuf>,
        owners: &HashMap<PathBuf, String>,
        report: &mut RecoveryReport,
    ) -> Result<(), String> {
        let backend = self.store.backend.clone();
        let io = |what: &str, e: io::Error| format!("{what}: {e}");
        for kind in LOG_KINDS {
            let parent = self.store.path(kind);
            for name in backend.list_dirs(&parent).map_err(|e| io("cannot list logs", e))? {
                let dir = parent.join(&name);
                if live.contains(&dir) {
                    continue;
                }
                let messages = count_messages(&*backend, &dir)
                    .map_err(|e| io(&format!("cannot read the unknown log {}", dir.display()), e))?;
                let aside = self.store.path(QUARANTINE).join(kind);
                backend.create_dir_all(&aside).map_err(|e| io("cannot create the quarantine directory", e))?;
                let to = move_aside(&*backend, &dir, &aside, &name)?;
                report.quarantined.push(Quarantined {
                    from: dir.clone(),
                    to,
                    messages,
                    owner: owners.get(&dir).cloned(),
                });
            }
        }
        Ok(())
    }
}

/// Moves `dir` to `aside/name`, or `aside/name.2`, `.3`... if an earlier one is there; returns
/// where it went. Bounded: a data directory never holds this many quarantined copies of one log.
fn move_aside(backend: &dyn Backend, dir: &Path, aside: &Path, name: &str) -> Result<PathBuf, String> {
    const TRIES: u32 = 1000;
    for n in 1..=TRIES {
        let to = if n == 1 { aside.join(name) } else { aside.join(format!("{name}.{n}")) };
        match backend.rename_dir(dir, &to) {
            Ok(()) => return Ok(to),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot move {} to {}: {e}", dir.display(), to.display())),
        }
    }
    Err(format!("cannot move {} aside: {TRIES} earlier copies are in {}", dir.display(), aside.display()))
}

/// Unsettled records in a log directory and its priority lanes (`p<N>` subdirectories), read
/// without changing anything.
fn count_messages(backend: &dyn Backend, dir: &Path) -> io::Result<u64> {
    let mut total = SegmentLog::inspect(backend, dir)?.unsettled;
    for sub in backend.list_dirs(dir)? {
        if sub.strip_prefix('p').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
            total += SegmentLog::inspect(backend, &dir.join(sub))?.unsettled;
        }
    }
    Ok(total)
}
