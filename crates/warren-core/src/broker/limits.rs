//! Vhost limits (RabbitMQ's `max-connections` and `max-queues`) and user limits
//! (`max-connections` and `max-channels`): set through the management API
//! (`/api/vhost-limits`, `/api/user-limits`), kept in the definitions snapshot, checked when a
//! client opens a connection or a channel or declares a new queue.

use super::{Broker, ConnInfo, Res};
use crate::definitions::{DefOp, UserLimits, VhostLimits};
use crate::ConnId;
use warren_amqp::{ProtocolError, ReplyCode};

/// One of the limits a vhost can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhostLimit {
    MaxConnections,
    MaxQueues,
}

impl VhostLimit {
    /// The limit RabbitMQ names so (`max-connections`, `max-queues`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "max-connections" => Some(VhostLimit::MaxConnections),
            "max-queues" => Some(VhostLimit::MaxQueues),
            _ => None,
        }
    }

    fn slot(self, limits: &mut VhostLimits) -> &mut Option<i64> {
        match self {
            VhostLimit::MaxConnections => &mut limits.max_connections,
            VhostLimit::MaxQueues => &mut limits.max_queues,
        }
    }
}

/// One of the limits a user can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserLimit {
    MaxConnections,
    MaxChannels,
}

impl UserLimit {
    /// The limit RabbitMQ names so (`max-connections`, `max-channels`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "max-connections" => Some(UserLimit::MaxConnections),
            "max-channels" => Some(UserLimit::MaxChannels),
            _ => None,
        }
    }

    fn slot(self, limits: &mut UserLimits) -> &mut Option<i64> {
        match self {
            UserLimit::MaxConnections => &mut limits.max_connections,
            UserLimit::MaxChannels => &mut limits.max_channels,
        }
    }
}

impl Broker {
    /// The limits of every vhost that has one, sorted by vhost.
    pub fn vhost_limits(&self) -> Vec<(String, VhostLimits)> {
        let mut v: Vec<_> =
            self.vhosts.values().filter(|vh| !vh.limits.is_empty()).map(|vh| (vh.name.clone(), vh.limits)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Sets one limit of a vhost (negative: no limit). Connections and queues already over it
    /// stay; it applies to the next connection.open or queue.declare, as in RabbitMQ.
    pub fn set_vhost_limit(&mut self, vhost: &str, limit: VhostLimit, value: i64) -> Res {
        let vh = self
            .vhosts
            .get_mut(vhost)
            .ok_or_else(|| ProtocolError::new(ReplyCode::NotFound, format_args!("no vhost '{vhost}'")))?;
        *limit.slot(&mut vh.limits) = Some(value);
        let limits = vh.limits;
        self.vhost_limits_changed(vhost, limits)
    }

    /// Sets all the limits of a vhost at once (as the metadata group replicates them).
    pub fn set_vhost_limits(&mut self, vhost: &str, limits: VhostLimits) -> Res {
        let vh = self
            .vhosts
            .get_mut(vhost)
            .ok_or_else(|| ProtocolError::new(ReplyCode::NotFound, format_args!("no vhost '{vhost}'")))?;
        if vh.limits == limits {
            return Ok(());
        }
        vh.limits = limits;
        self.vhost_limits_changed(vhost, limits)
    }

    fn vhost_limits_changed(&mut self, vhost: &str, limits: VhostLimits) -> Res {
        self.def_ops.push(DefOp::SetVhostLimits { vhost: vhost.to_owned(), limits });
        self.defs_dirty = true;
        self.save_definitions()
    }

    /// Clears one limit of a vhost; false when it was not set.
    pub fn clear_vhost_limit(&mut self, vhost: &str, limit: VhostLimit) -> Result<bool, ProtocolError> {
        let vh = self
            .vhosts
            .get_mut(vhost)
            .ok_or_else(|| ProtocolError::new(ReplyCode::NotFound, format_args!("no vhost '{vhost}'")))?;
        if limit.slot(&mut vh.limits).take().is_none() {
            return Ok(false);
        }
        let limits = vh.limits;
        self.vhost_limits_changed(vhost, limits).map(|_| true)
    }

    /// Refuses a connection to a vhost that has as many client connections as its
    /// `max-connections` allows, with RabbitMQ's code and words.
    pub(super) fn check_vhost_connection_limit(&self, info: &ConnInfo) -> Res {
        let Some(max) = self.vhosts.get(&info.vhost).and_then(|vh| vh.limits.connections()) else {
            return Ok(());
        };
        let open =
            self.conns.values().map(|c| c.lock()).filter(|c| !c.hidden && *c.vhost == *info.vhost).count() as u64;
        if open >= max {
            return Err(ProtocolError::new(
                ReplyCode::NotAllowed,
                format_args!(
                    "access to vhost '{}' refused for user '{}': connection limit ({max}) is reached",
                    info.vhost, info.user
                ),
            ));
        }
        Ok(())
    }
}

impl Broker {
    /// The limits of every user that has one, sorted by user.
    pub fn user_limits(&self) -> Vec<(String, UserLimits)> {
        let mut v: Vec<_> = self.user_limits.iter().map(|(u, l)| (u.clone(), *l)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// A user's limits (none set: empty).
    pub fn limits_of_user(&self, user: &str) -> UserLimits {
        self.user_limits.get(user).copied().unwrap_or_default()
    }

    /// Sets one limit of a user (negative: no limit); applies to the next connection.open or
    /// channel.open.
    pub fn set_user_limit(&mut self, user: &str, limit: UserLimit, value: i64) -> Res {
        if self.users.get(user).is_none() {
            return Err(ProtocolError::new(ReplyCode::NotFound, format_args!("no user '{user}'")));
        }
        let limits = self.user_limits.entry(user.to_owned()).or_default();
        *limit.slot(limits) = Some(value);
        let limits = *limits;
        self.user_limits_changed(user, limits)
    }

    /// Sets all the limits of a user at once (as the metadata group replicates them).
    pub fn set_user_limits(&mut self, user: &str, limits: UserLimits) -> Res {
        if self.users.get(user).is_none() {
            return Err(ProtocolError::new(ReplyCode::NotFound, format_args!("no user '{user}'")));
        }
        if self.limits_of_user(user) == limits {
            return Ok(());
        }
        if limits.is_empty() {
            self.user_limits.remove(user);
        } else {
            self.user_limits.insert(user.to_owned(), limits);
        }
        self.user_limits_changed(user, limits)
    }

    fn user_limits_changed(&mut self, user: &str, limits: UserLimits) -> Res {
        self.def_ops.push(DefOp::SetUserLimits { user: user.to_owned(), limits });
        self.defs_dirty = true;
        self.save_definitions()
    }

    /// Clears one limit of a user; false when it was not set.
    pub fn clear_user_limit(&mut self, user: &str, limit: UserLimit) -> Result<bool, ProtocolError> {
        let Some(limits) = self.user_limits.get_mut(user) else { return Ok(false) };
        if limit.slot(limits).take().is_none() {
            return Ok(false);
        }
        let left = *limits;
        if left.is_empty() {
            self.user_limits.remove(user);
        }
        self.user_limits_changed(user, left).map(|_| true)
    }

    /// Refuses a connection of a user that has as many as its `max-connections` allows.
    pub(super) fn check_user_connection_limit(&self, info: &ConnInfo) -> Res {
        let Some(max) = self.user_limits.get(&info.user).and_then(UserLimits::connections) else { return Ok(()) };
        let open = self.conns.values().map(|c| c.lock()).filter(|c| !c.hidden && c.info.user == info.user).count();
        if open as u64 >= max {
            return Err(ProtocolError::new(
                ReplyCode::NotAllowed,
                format_args!("connection refused for user '{}': user connection limit ({max}) is reached", info.user),
            ));
        }
        Ok(())
    }

    /// Refuses one more channel to a user that has as many, on all its connections, as its
    /// `max-channels` allows (a connection error, as in RabbitMQ).
    pub(super) fn check_user_channel_limit(&self, conn: ConnId) -> Res {
        let Some(user) = self.conns.get(&conn).map(|c| c.lock().info.user.clone()) else { return Ok(()) };
        let Some(max) = self.user_limits.get(&user).and_then(UserLimits::channels) else { return Ok(()) };
        // The channels of a connection being closed are gone for its client already.
        let open: usize = self
            .conns
            .values()
            .map(|c| c.lock())
            .filter(|c| !c.closing && c.info.user == user)
            .map(|c| c.channels.len())
            .sum();
        if open as u64 >= max {
            return Err(ProtocolError::new(
                ReplyCode::NotAllowed,
                format_args!(
                    "number of channels opened for user '{user}' has reached the maximum allowed user limit of ({max})"
                ),
            ));
        }
        Ok(())
    }
}
