//! Definitions persistence: where logs and the definitions live (`Store`), the snapshot and
//! journal of durable topology, and the definitions in RabbitMQ's format.
//!
//! A durable change is appended to the journal (and synced before its answer goes out, by the
//! connection outside the lock: [`Broker::take_definitions_sync`]); every 1,024 records the
//! snapshot is rewritten and the journal starts again.

use super::*;

/// Where queue logs and the definitions snapshot live.
pub(super) struct Store {
    pub(super) backend: Arc<dyn Backend>,
    pub(super) dir: PathBuf,
    pub(super) log_config: LogConfig,
    pub(super) next_transient: u64,
    /// The definitions journal, open for appending once a snapshot was written.
    pub(super) journal: Option<Box<dyn warren_store::AppendFile>>,
    /// The snapshot's generation, and how many topology definitions it holds.
    pub(super) generation: u64,
    pub(super) snapshot_topology: usize,
    /// Records in the journal since the snapshot.
    pub(super) journal_ops: usize,
}

impl Store {
    pub(super) fn definitions_path(&self) -> PathBuf {
        self.dir.join("definitions")
    }

    pub(super) fn journal_path(&self) -> PathBuf {
        self.dir.join("definitions.journal")
    }

    /// A directory for a durable object's log, stable across restarts, named by a hash so that
    /// any name makes a valid file name.
    pub(super) fn hashed_dir(&self, kind: &str, vhost: &str, name: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update(vhost.as_bytes());
        h.update([0u8]);
        h.update(name.as_bytes());
        let digest = h.finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(kind).join(hex)
    }

    pub(super) fn durable_dir(&self, vhost: &str, name: &str) -> PathBuf {
        self.hashed_dir("queues", vhost, name)
    }

    /// A durable delayed-message exchange's log directory.
    pub(super) fn delayed_dir(&self, vhost: &str, name: &str) -> PathBuf {
        self.hashed_dir("delayed", vhost, name)
    }

    /// Attaches a durable log to a deduplication exchange that asks for a disk cache.
    pub(super) fn attach_dedup_log(&mut self, vhost: &str, exchange: &mut Exchange) -> std::io::Result<()> {
        let Some(cache) = exchange.dedup.as_mut() else { return Ok(()) };
        if !exchange.durable || !crate::dedup::DedupCache::wants_disk(&exchange.arguments) {
            return Ok(());
        }
        let dir = self.hashed_dir("dedup", vhost, &exchange.name);
        let (log, _) = SegmentLog::open(self.backend.clone(), &dir, self.log_config.clone())?;
        cache.attach_log(log)
    }

    /// Opens the store of a delayed-message exchange; returns it and its pending count.
    pub(super) fn open_delayed(
        &mut self,
        vhost: &str,
        name: &str,
        durable: bool,
    ) -> std::io::Result<(crate::delayed::DelayedStore, u64)> {
        let dir = if durable { self.delayed_dir(vhost, name) } else { self.transient_dir() };
        let (log, recovered) = SegmentLog::open(self.backend.clone(), &dir, self.log_config.clone())?;
        Ok((crate::delayed::DelayedStore::new(log, durable, recovered.unsettled), recovered.unsettled))
    }

    pub(super) fn transient_dir(&mut self) -> PathBuf {
        self.next_transient += 1;
        self.dir.join("transient").join(self.next_transient.to_string())
    }
}

/// The durable definition of an exchange.
pub(super) fn exchange_def(vhost: &str, x: &Exchange) -> ExchangeDef {
    ExchangeDef {
        vhost: vhost.to_owned(),
        name: x.name.to_string(),
        kind: x.kind.as_str().into(),
        auto_delete: x.auto_delete,
        internal: x.internal,
        arguments: x.arguments.clone(),
    }
}

/// The durable definition of a queue.
pub(super) fn queue_def(vhost: &str, q: &Queue) -> QueueDef {
    QueueDef {
        vhost: vhost.to_owned(),
        name: q.name.to_string(),
        auto_delete: q.auto_delete,
        arguments: q.arguments.clone(),
    }
}

/// The durable definition of a binding from `source`.
pub(super) fn binding_def(vhost: &str, source: &str, dest: &str, to_queue: bool, b: &Binding) -> BindingDef {
    BindingDef {
        vhost: vhost.to_owned(),
        source: source.to_owned(),
        destination: dest.to_owned(),
        destination_is_queue: to_queue,
        routing_key: b.routing_key.to_string(),
        arguments: b.arguments.clone(),
    }
}

/// A binding's definition, as the journal records it.
pub(super) fn durable_binding_def(vhost: &str, source: &str, b: &Binding) -> BindingDef {
    let (dest, to_queue) = match &b.destination {
        Destination::Queue(q) => (q.as_str(), true),
        Destination::Exchange(x) => (x.as_str(), false),
    };
    binding_def(vhost, source, dest, to_queue, b)
}

/// A user's definition.
pub(super) fn user_def(u: &User) -> UserDef {
    UserDef {
        name: u.name.clone(),
        password_hash: u.password_hash.clone(),
        hashing_algorithm: u.hashing_algorithm.clone(),
        tags: u.tags.clone(),
    }
}

/// A permission's definition.
pub(super) fn permission_def(p: &Permission) -> PermissionDef {
    PermissionDef {
        user: p.user.clone(),
        vhost: p.vhost.clone(),
        configure: p.configure.as_str().into(),
        write: p.write.as_str().into(),
        read: p.read.as_str().into(),
    }
}

/// A topic permission's definition.
pub(super) fn topic_permission_def(p: &TopicPermission) -> TopicPermissionDef {
    TopicPermissionDef {
        user: p.user.clone(),
        vhost: p.vhost.clone(),
        exchange: p.exchange.clone(),
        write: p.write.as_str().into(),
        read: p.read.as_str().into(),
    }
}

/// A policy's (or an operator policy's) definition.
pub(super) fn policy_def(p: &Policy, operator: bool) -> PolicyDef {
    PolicyDef {
        vhost: p.vhost.clone(),
        name: p.name.clone(),
        pattern: p.pattern.clone(),
        apply_to: p.apply_to.as_str().into(),
        priority: p.priority,
        definition: p.definition.clone(),
        operator,
    }
}

impl Broker {
    /// The durable definitions as they are now.
    pub(super) fn definitions(&self) -> Definitions {
        let mut d = Definitions {
            users: Some(self.users.list().map(user_def).collect()),
            permissions: self.users.permissions().map(permission_def).collect(),
            topic_permissions: self.users.topic_permissions().map(topic_permission_def).collect(),
            ..Definitions::default()
        };
        for (p, operator) in
            self.policies.iter().map(|p| (p, false)).chain(self.operator_policies.iter().map(|p| (p, true)))
        {
            d.policies.push(policy_def(p, operator));
        }
        d.user_limits = self.user_limits.iter().map(|(u, l)| (u.clone(), *l)).collect();
        d.user_limits.sort_by(|a, b| a.0.cmp(&b.0));
        let mut vhosts: Vec<&VHost> = self.vhosts.values().collect();
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        for vh in vhosts {
            d.vhosts.push(vh.name.clone());
            if !vh.limits.is_empty() {
                d.vhost_limits.push((vh.name.clone(), vh.limits));
            }
            let durable_exchange = |n: &ShortStr| vh.exchanges.get(n).is_some_and(|x| x.durable);
            let durable_queue = |n: &ShortStr| {
                vh.queues.get(n).map(|q| q.lock()).is_some_and(|q| q.durable && q.exclusive_owner.is_none())
            };
            let mut exchanges: Vec<&Exchange> = vh.exchanges.values().collect();
            exchanges.sort_by(|a, b| a.name.cmp(&b.name));
            for x in exchanges {
                if !x.durable || x.name.is_empty() || is_builtin_exchange(&x.name) {
                    continue;
                }
                d.exchanges.push(exchange_def(&vh.name, x));
            }
            for x in vh.exchanges.values() {
                if !x.durable || x.name.is_empty() {
                    continue;
                }
                for b in x.bindings() {
                    let (dest, is_queue, durable) = match &b.destination {
                        Destination::Queue(q) => (q, true, durable_queue(q)),
                        Destination::Exchange(e) => (e, false, durable_exchange(e)),
                    };
                    if durable {
                        d.bindings.push(binding_def(&vh.name, &x.name, dest, is_queue, b));
                    }
                }
            }
            let mut queues: Vec<_> =
                vh.queues.values().map(|q| q.lock()).filter(|q| q.durable && q.exclusive_owner.is_none()).collect();
            queues.sort_by(|a, b| a.name.cmp(&b.name));
            for q in queues {
                d.queues.push(queue_def(&vh.name, &q));
            }
        }
        d
    }

    /// Makes the definitions that changed durable: topology changes are appended to the journal
    /// (O(1) each); anything else, or a journal grown as large as the snapshot, rewrites the
    /// snapshot and starts a new journal.
    pub(super) fn save_definitions(&mut self) -> Res {
        self.save_definitions_for(None)
    }

    /// Makes changed definitions durable. For a client connection (`for_conn`), a journal
    /// append is not synced here, under the broker lock: the connection's answers wait until
    /// its host has synced the journal ([`Broker::take_definitions_sync`]), and any sync round
    /// covers it meanwhile. Everyone else (the management API, the broker's own clean-ups) gets
    /// it synced before this returns.
    pub(super) fn save_definitions_for(&mut self, for_conn: Option<ConnId>) -> Res {
        if self.defs_batched || (!self.defs_dirty && self.def_ops.is_empty()) {
            return Ok(());
        }
        let journal_room = self.store.snapshot_topology + JOURNAL_SLACK;
        let append = !self.defs_dirty
            && self.def_ops.iter().all(DefOp::is_topology)
            && self.store.journal.is_some()
            && self.store.journal_ops + self.def_ops.len() <= journal_room;
        let result = if append { self.append_journal(for_conn.is_none()) } else { self.write_snapshot() };
        if append && result.is_ok() {
            if let Some(conn) = for_conn {
                self.journal_unsynced = true;
                self.defs_sync_owed = Some(conn);
            }
        }
        self.defs_dirty = false;
        self.note_replication(for_conn);
        self.def_ops.clear();
        result.map_err(|e| {
            // The journal's state is unknown after a failed write: the next change rewrites all.
            self.store.journal = None;
            self.errors.push(format!("cannot write the definitions: {e}"));
            ProtocolError::new(ReplyCode::InternalError, format_args!("cannot write the definitions: {e}"))
        })
    }

    /// Runs `f` (many changes, such as a definitions import) and makes what it changed durable
    /// once, at the end, instead of after each change. Nobody must be told of a change before
    /// this returns.
    pub fn batch_definitions<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, String>) -> Result<T, String> {
        self.defs_batched = true;
        let result = f(self);
        self.defs_batched = false;
        let saved = self.save_definitions().map_err(|e| e.text.to_string());
        result.and_then(|r| saved.map(|_| r))
    }

    pub(super) fn append_journal(&mut self, sync: bool) -> std::io::Result<()> {
        let mut records = BytesMut::new();
        for op in &self.def_ops {
            op.encode_record(&mut records);
        }
        let journal = self.store.journal.as_mut().ok_or_else(|| std::io::Error::other("no journal"))?;
        journal.append(&records)?;
        if sync {
            journal.sync_handle().sync()?;
        }
        self.store.journal_ops += self.def_ops.len();
        Ok(())
    }

    /// After a batch of `conn`'s frames: the definitions journal's sync that its answers must
    /// wait for, if its commands appended to the journal. The host syncs it outside the lock and
    /// writes nothing to `conn` until it succeeded; on failure it calls
    /// [`Broker::definitions_sync_failed`].
    pub fn take_definitions_sync(&mut self, conn: ConnId) -> Option<Arc<dyn SyncHandle>> {
        if self.defs_sync_owed != Some(conn) {
            return None;
        }
        self.defs_sync_owed = None;
        self.store.journal.as_ref().map(|j| j.sync_handle())
    }

    /// A sync from [`Broker::take_definitions_sync`] failed: the journal's state is unknown, so
    /// the next change rewrites the whole snapshot (and is synced before it is answered).
    pub fn definitions_sync_failed(&mut self, e: &std::io::Error) {
        self.store.journal = None;
        self.defs_dirty = true;
        self.errors.push(format!("cannot sync the definitions journal: {e}"));
    }

    /// Writes the whole snapshot as the next generation, then a fresh journal for it. A crash
    /// in between leaves the old journal, which the new generation ignores.
    pub(super) fn write_snapshot(&mut self) -> std::io::Result<()> {
        let mut d = self.definitions();
        d.generation = self.store.generation + 1;
        let backend = self.store.backend.clone();
        self.store.journal = None;
        self.store.keep_previous()?;
        backend.replace_durably(&self.store.definitions_path(), &d.encode())?;
        self.store.generation = d.generation;
        self.store.snapshot_topology = d.topology_len();
        let journal_path = self.store.journal_path();
        backend.replace_durably(&journal_path, &journal_header(d.generation))?;
        self.store.journal = Some(backend.open_append(&journal_path)?);
        self.store.journal_ops = 0;
        Ok(())
    }
}
