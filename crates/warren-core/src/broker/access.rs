//! Vhosts, users and permissions: creating and deleting them (closing the connections they
//! held), authentication, and the permission checks every client command goes through (a
//! connection's grants are replaced when its user's permissions change).

use super::persist::{permission_def, topic_permission_def, user_def};
use super::*;

impl Broker {
    /// The users, permissions and topic permissions, for listing: [`Users::list`],
    /// [`Users::permissions`], [`Users::topic_permissions`], [`Users::permission`] (one user
    /// in one vhost). Changes go through the broker's methods below, which persist them.
    pub fn users(&self) -> &Users {
        &self.users
    }

    /// The vhosts' names, sorted.
    pub fn vhost_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.vhosts.keys().cloned().collect();
        v.sort();
        v
    }

    /// True when the vhost exists.
    pub fn has_vhost(&self, name: &str) -> bool {
        self.vhosts.contains_key(name)
    }

    /// Creates a vhost with its built-in exchanges; false when it already existed.
    pub fn add_vhost(&mut self, name: &str) -> Result<bool, ProtocolError> {
        if name.is_empty() {
            return Err(precondition("a vhost name cannot be empty"));
        }
        if self.vhosts.contains_key(name) {
            return Ok(false);
        }
        self.vhosts.insert(name.into(), VHost::new(name));
        self.def_ops.push(DefOp::PutVhost { name: name.to_owned() });
        self.defs_dirty = true;
        self.save_definitions().map(|_| true)
    }

    /// Deletes a vhost as RabbitMQ does: its connections are closed (320 CONNECTION_FORCED),
    /// its queues (with their messages), exchanges, policies and permissions go. False when
    /// there was no such vhost.
    pub fn delete_vhost(
        &mut self,
        name: &str,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Result<bool, ProtocolError> {
        if !self.vhosts.contains_key(name) {
            return Ok(false);
        }
        let conns = self.conns_where(|c| &*c.vhost == name);
        for id in conns {
            self.force_close(id, &format!("vhost '{name}' is deleted"), now_ms, out);
        }
        let queues: Vec<ShortStr> =
            self.vhosts.get(name).map(|v| v.queues.keys().cloned().collect()).unwrap_or_default();
        for q in queues {
            self.delete_queue(name, &q, now_ms, out);
        }
        if let Some(vh) = self.vhosts.remove(name) {
            for x in vh.exchanges.values() {
                if x.durable && x.delayed.is_some() {
                    let dir = self.store.delayed_dir(name, &x.name);
                    if let Err(e) = self.store.backend.remove_dir_all(&dir) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            self.errors
                                .push(format!("cannot remove the log of exchange '{}' in vhost '{name}': {e}", x.name));
                        }
                    }
                }
            }
        }
        self.dirty.retain(|(v, _)| &**v != name);
        self.dirty_exchanges.retain(|(v, _)| &**v != name);
        self.policies.retain(|p| p.vhost != name);
        self.operator_policies.retain(|p| p.vhost != name);
        self.users.forget_vhost(name);
        self.def_ops.push(DefOp::DelVhost { name: name.to_owned() });
        self.defs_dirty = true;
        self.save_definitions().map(|_| true)
    }

    /// Adds or replaces a user. Tags are kept as given (RabbitMQ's are listed in
    /// [`crate::auth::KNOWN_TAGS`]). The user's connections are not affected.
    pub fn put_user(&mut self, name: &str, password: Password, tags: Vec<String>) -> Result<(), ProtocolError> {
        if name.is_empty() {
            return Err(precondition("a user name cannot be empty"));
        }
        let (password_hash, hashing_algorithm) = match password {
            Password::Clear(p) => (crate::auth::hash_password(&mut self.rng, &p), SHA256.to_string()),
            Password::Hash { password_hash, hashing_algorithm } => {
                let algorithm = if hashing_algorithm.is_empty() { SHA256.to_string() } else { hashing_algorithm };
                if algorithm != SHA256 && algorithm != SHA512 {
                    return Err(precondition(format_args!("unsupported hashing algorithm '{algorithm}'")));
                }
                (password_hash, algorithm)
            }
            Password::None => (String::new(), SHA256.to_string()),
        };
        let user = User { name: name.into(), password_hash, hashing_algorithm, tags };
        self.def_ops.push(DefOp::PutUser(user_def(&user)));
        self.users.put(user);
        self.access_changed(name)
    }

    /// Deletes a user and its permissions; false when there was none. Its open connections are
    /// closed with 320 CONNECTION_FORCED, as RabbitMQ does.
    pub fn delete_user(
        &mut self,
        name: &str,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Result<bool, ProtocolError> {
        if !self.users.remove(name) {
            return Ok(false);
        }
        self.user_limits.remove(name);
        self.def_ops.push(DefOp::DelUser { name: name.to_owned() });
        self.refresh_grants(Some(name));
        let conns = self.conns_where(|c| c.info.user == name);
        for id in conns {
            self.force_close(id, &format!("user '{name}' is deleted"), now_ms, out);
        }
        self.defs_dirty = true;
        self.save_definitions().map(|_| true)
    }

    /// A user by name (whoami).
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Checks a user name and password (HTTP basic auth); returns the user with its tags.
    /// Loopback-only users (config `loopback_users`) are refused unless `peer_is_loopback`.
    pub fn authenticate_basic(
        &self,
        name: &str,
        password: &str,
        peer_is_loopback: bool,
    ) -> Result<&User, ProtocolError> {
        self.users.check(name, password, peer_is_loopback)
    }

    pub(super) fn user_and_vhost_exist(&self, user: &str, vhost: &str) -> Res {
        if self.users.get(user).is_none() {
            return Err(ProtocolError::new(ReplyCode::NotFound, format_args!("no user '{user}'")));
        }
        if !self.vhosts.contains_key(vhost) {
            return Err(not_found("vhost", vhost, vhost));
        }
        Ok(())
    }

    /// Sets a user's configure / write / read patterns in a vhost. Open connections of the
    /// user see the change at their next operation.
    /// A user's access changed: its open connections follow at once, and the change is saved
    /// before the caller answers.
    pub(super) fn access_changed(&mut self, user: &str) -> Res {
        self.refresh_grants(Some(user));
        self.defs_dirty = true;
        self.save_definitions()
    }

    pub fn set_permissions(&mut self, user: &str, vhost: &str, configure: &str, write: &str, read: &str) -> Res {
        self.user_and_vhost_exist(user, vhost)?;
        let p = Permission::new(user, vhost, configure, write, read).map_err(precondition)?;
        self.def_ops.push(DefOp::PutPermission(permission_def(&p)));
        self.users.set_permission(p);
        self.access_changed(user)
    }

    /// Clears a user's permissions in a vhost; false when it had none.
    pub fn clear_permissions(&mut self, user: &str, vhost: &str) -> Result<bool, ProtocolError> {
        if !self.users.clear_permission(user, vhost) {
            return Ok(false);
        }
        self.def_ops.push(DefOp::DelPermission { user: user.to_owned(), vhost: vhost.to_owned() });
        self.access_changed(user).map(|_| true)
    }

    /// Sets a user's topic permission on an exchange of a vhost (patterns may use `{username}`
    /// and `{vhost}`).
    pub fn set_topic_permissions(&mut self, user: &str, vhost: &str, exchange: &str, write: &str, read: &str) -> Res {
        self.user_and_vhost_exist(user, vhost)?;
        let p = TopicPermission::new(user, vhost, exchange, write, read).map_err(precondition)?;
        self.def_ops.push(DefOp::PutTopicPermission(topic_permission_def(&p)));
        self.users.set_topic_permission(p);
        self.access_changed(user)
    }

    /// Clears a user's topic permission on one exchange, or on all when `exchange` is None;
    /// false when there was none.
    pub fn clear_topic_permissions(
        &mut self,
        user: &str,
        vhost: &str,
        exchange: Option<&str>,
    ) -> Result<bool, ProtocolError> {
        let cleared: Vec<String> = self
            .users
            .topic_permissions()
            .filter(|p| p.user == user && p.vhost == vhost && exchange.is_none_or(|x| x == p.exchange))
            .map(|p| p.exchange.clone())
            .collect();
        if !self.users.clear_topic_permission(user, vhost, exchange) {
            return Ok(false);
        }
        for exchange in cleared {
            self.def_ops.push(DefOp::DelTopicPermission { user: user.to_owned(), vhost: vhost.to_owned(), exchange });
        }
        self.access_changed(user).map(|_| true)
    }

    /// Checks that the connection's user may `access` the resource (`kind` is "queue" or
    /// "exchange"), with RabbitMQ's refusal.
    pub(super) fn check(&self, conn: ConnId, access: Access, kind: &str, name: &str) -> Res {
        let c = self.conns.get(&conn).map(|c| c.lock()).ok_or_else(|| internal("unknown connection"))?;
        allowed(&c.grants, &c.vhost, &c.info.user, access, kind, name)
    }

    /// Who a client connection is, for a change to the topology.
    pub(super) fn actor_of(&self, conn: ConnId) -> Result<Actor, ProtocolError> {
        let c = self.conns.get(&conn).map(|c| c.lock()).ok_or_else(|| internal("unknown connection"))?;
        Ok(Actor { conn: Some(conn), vhost: c.vhost.clone(), user: c.info.user.clone(), grants: c.grants.clone() })
    }

    /// The management API acting in `vhost` for `caller`: NOT_FOUND for a vhost that does
    /// not exist, NOT_ALLOWED for a user without permissions in it (the refusals a client
    /// connection would get).
    pub(super) fn management_actor(&self, vhost: &str, caller: Caller<'_>) -> Result<Actor, ProtocolError> {
        if !self.vhosts.contains_key(vhost) {
            return Err(not_found("vhost", vhost, vhost));
        }
        let user = match caller {
            Caller::Broker => None,
            Caller::User(user) => Some(user.to_string()),
        };
        let (user, grants) = match user {
            Some(user) => {
                let grants = self.users.grants(&user, vhost).ok_or_else(|| {
                    ProtocolError::new(
                        ReplyCode::NotAllowed,
                        format_args!("access to vhost '{vhost}' refused for user '{user}'"),
                    )
                })?;
                (user, grants)
            }
            None => {
                let everything = Permission::new("", vhost, ".*", ".*", ".*")
                    .map_err(|e| ProtocolError::new(ReplyCode::InternalError, e))?;
                (String::new(), Arc::new(Grants { permission: everything, topic: Vec::new(), impersonator: true }))
            }
        };
        Ok(Actor { conn: None, vhost: vhost.into(), user, grants })
    }

    /// Checks a routing key against the topic permissions, when `exchange` is a topic exchange.
    pub(super) fn check_topic(&self, who: &Actor, exchange: &str, access: Access, routing_key: &str) -> Res {
        if who.grants.topic.is_empty() {
            return Ok(());
        }
        let is_topic = self
            .vhosts
            .get(&*who.vhost)
            .and_then(|v| v.exchanges.get(exchange))
            .is_some_and(|x| x.kind == ExchangeKind::Topic);
        if !is_topic || who.grants.topic_allows(exchange, access, routing_key) {
            Ok(())
        } else {
            Err(topic_refused(routing_key, exchange, &who.vhost, &who.user))
        }
    }

    /// Resolves again what the connections of `user` (or of everyone when None) may do, after
    /// a permission changed. Connections whose user lost its permissions can do nothing more.
    pub(super) fn refresh_grants(&mut self, user: Option<&str>) {
        for c in self.conns.values_mut().map(Mutex::get_mut) {
            if user.is_some_and(|u| u != c.info.user) {
                continue;
            }
            c.grants = self.users.grants(&c.info.user, &c.vhost).unwrap_or_else(|| {
                let nothing = Permission::new(&c.info.user, &c.vhost, "", "", "");
                Arc::new(Grants {
                    permission: nothing.unwrap_or_else(|_| c.grants.permission.clone()),
                    topic: Vec::new(),
                    impersonator: false,
                })
            });
            c.write_ok = None;
        }
    }
}

/// Who asks for a change to the topology (a declare, a bind, a delete, a purge): a client
/// connection, or the management API acting as its request's user or as the broker itself.
/// The same checks apply to both; only a client connection can own an exclusive queue.
pub(super) struct Actor {
    pub(super) conn: Option<ConnId>,
    pub(super) vhost: Arc<str>,
    pub(super) user: String,
    pub(super) grants: Arc<Grants>,
}

impl Actor {
    /// Checks that the actor may `access` the resource (`kind` is "queue" or "exchange"), with
    /// RabbitMQ's refusal.
    pub(super) fn check(&self, access: Access, kind: &str, name: &str) -> Res {
        allowed(&self.grants, &self.vhost, &self.user, access, kind, name)
    }

    /// True when a queue owned by `owner` (exclusive) is someone else's.
    pub(super) fn locked_out(&self, owner: Option<ConnId>) -> bool {
        owner.is_some_and(|o| Some(o) != self.conn)
    }
}

fn allowed(grants: &Grants, vhost: &str, user: &str, access: Access, kind: &str, name: &str) -> Res {
    if grants.permission.allows(access, permission_name(kind, name)) {
        Ok(())
    } else {
        Err(access_refused(kind, name, vhost, user))
    }
}
