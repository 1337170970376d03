//! Vhost limits, as RabbitMQ's `max-connections` and `max-queues`: set through the management
//! API (`/api/vhost-limits`), kept in the definitions snapshot, checked when a client opens a
//! connection or declares a new queue.

use super::{Broker, ConnInfo, Res};
use crate::broker::management::MANAGEMENT_CONN;
use crate::definitions::VhostLimits;
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
        self.defs_dirty = true;
        self.save_definitions().map(|_| true)
    }

    /// Refuses a connection to a vhost that has as many client connections as its
    /// `max-connections` allows, with RabbitMQ's code and words.
    pub(super) fn check_vhost_connection_limit(&self, info: &ConnInfo) -> Res {
        let Some(max) = self.vhosts.get(&info.vhost).and_then(|vh| vh.limits.connections()) else {
            return Ok(());
        };
        let open =
            self.conns.iter().filter(|&(&id, c)| id != MANAGEMENT_CONN && *c.vhost == *info.vhost).count() as u64;
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
