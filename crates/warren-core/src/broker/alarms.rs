//! Resource alarms and flow control: memory and disk alarms block publishing connections
//! (connection.blocked), and a publisher whose messages pile up behind a consumer that cannot
//! keep up is paused for a while; a connection whose socket is full receives no deliveries
//! until it has written (`Outbound`).

use super::*;

/// What a message costs in memory beyond its body, for the memory alarm's headroom.
pub(super) const MESSAGE_OVERHEAD_BYTES: u64 = 512;

/// The last measurements the resource alarms were decided on, for operators (`/api/nodes`,
/// the web UI). Zero until measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceUse {
    pub mem_used: u64,
    pub mem_limit: u64,
    pub disk_free: u64,
    pub disk_free_limit: u64,
}

/// Resource alarms: memory use over the high watermark, free disk space under the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Alarms {
    pub memory: bool,
    pub disk: bool,
}

impl Alarms {
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// The reason connection.blocked carries, in RabbitMQ's words.
    pub(super) fn reason(self) -> ShortStr {
        ShortStr::from_static(match (self.memory, self.disk) {
            (true, true) => "low on memory & disk",
            (true, false) => "low on memory",
            _ => "low on disk",
        })
    }
}

impl Broker {
    /// Flow control, like RabbitMQ's credit flow: true (once) when the connection published
    /// into a queue faster than that queue's consumers take messages, so that messages started
    /// going to disk while a consumer's connection is full. The server then stops reading from
    /// the publisher until [`Broker::take_flow_released`] says a consumer caught up (or a short
    /// time passes), so the queue stays in memory and the publisher goes at the consumers'
    /// pace. Queues without consumers, or whose consumers are held back by their prefetch, do
    /// not block publishers: their backlog is paged to disk as usual.
    pub fn take_flow_blocked(&mut self, conn: ConnId) -> bool {
        self.conns.get_mut(&conn).map(Mutex::get_mut).is_some_and(|c| std::mem::take(&mut c.flow_blocked))
    }

    /// True (once) when a consumer's connection drained, or the resource alarms cleared, since
    /// the last call.
    pub fn take_flow_released(&self) -> bool {
        self.flow_released.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// The resource alarms in force.
    pub fn alarms(&self) -> Alarms {
        self.alarms
    }

    /// Sets the resource alarms, as RabbitMQ's memory and disk alarms work. While one is in
    /// force, a connection that publishes is blocked: it gets connection.blocked (when its
    /// client announced the capability) and the server stops reading from it; connections that
    /// only consume go on, so queues drain. Queues keep no new messages in memory meanwhile
    /// (they go to disk). When every alarm clears, blocked connections get
    /// connection.unblocked and are read again.
    pub fn set_alarms(&mut self, alarms: Alarms, out: &mut Vec<(ConnId, Out)>) {
        let was = self.alarms;
        self.alarms = alarms;
        if was.any() && !alarms.any() {
            for (&id, c) in self.conns.iter_mut().map(|(k, c)| (k, c.get_mut())) {
                c.alarm_blocked = false;
                if std::mem::take(&mut c.blocked_sent) && !c.closing {
                    out.push((id, Out::Method { channel: 0, method: Method::ConnectionUnblocked }));
                }
            }
            *self.flow_released.get_mut() = true;
        }
    }

    /// A memory measurement: `used` bytes against the `watermark`. Sets or clears the memory
    /// alarm, and keeps the headroom left: publishes until the next measurement count against
    /// it, and the alarm is raised as soon as they exceed it, so a flood cannot overshoot the
    /// watermark by what arrives between two measurements.
    pub fn set_memory_use(&mut self, used: u64, watermark: u64, out: &mut Vec<(ConnId, Out)>) {
        (self.resource_use.mem_used, self.resource_use.mem_limit) = (used, watermark);
        self.memory_headroom = Some(watermark.saturating_sub(used));
        *self.ingested.get_mut() = 0;
        let alarms = Alarms { memory: used >= watermark, ..self.alarms };
        self.set_alarms(alarms, out);
    }

    /// A disk measurement: `free` bytes against the `limit`. Sets or clears the disk alarm.
    ///
    /// Like the memory alarm, it keeps the headroom (`free - limit`): bytes the queues write
    /// until the next measurement count against it, and the alarm is raised as soon as they
    /// exceed it, so a flood is blocked before the disk fills, not a measurement later.
    pub fn set_disk_free(&mut self, free: u64, limit: u64, out: &mut Vec<(ConnId, Out)>) {
        (self.resource_use.disk_free, self.resource_use.disk_free_limit) = (free, limit);
        self.disk_headroom = Some(free.saturating_sub(limit));
        *self.disk_written.get_mut() = 0;
        let alarms = Alarms { disk: free < limit, ..self.alarms };
        self.set_alarms(alarms, out);
    }

    /// The last memory and disk measurements.
    pub fn resource_use(&self) -> ResourceUse {
        self.resource_use
    }

    /// Counts a published message against the memory headroom.
    pub(super) fn count_ingest(&mut self, bytes: usize) {
        if let Some(headroom) = self.memory_headroom {
            // What a message costs beyond its body: its header, bookkeeping and buffers.
            let ingested = self.ingested.get_mut();
            *ingested += bytes as u64 + MESSAGE_OVERHEAD_BYTES;
            if *ingested > headroom && !self.alarms.memory {
                self.alarms.memory = true;
            }
        }
    }

    /// True while the connection is blocked by a resource alarm: do not read from it.
    pub fn is_alarm_blocked(&self, conn: ConnId) -> bool {
        self.alarms.any() && self.conns.get(&conn).map(|c| c.lock()).is_some_and(|c| c.alarm_blocked)
    }

    /// A connection publishes under an alarm: it is blocked from now on (and told once).
    pub(super) fn block_publisher(&mut self, conn: ConnId, out: &mut Vec<(ConnId, Out)>) {
        let reason = self.alarms.reason();
        let Some(c) = self.conns.get_mut(&conn).map(Mutex::get_mut) else { return };
        c.alarm_blocked = true;
        if !c.blocked_sent && c.info.has_capability("connection.blocked") {
            c.blocked_sent = true;
            out.push((conn, Out::Method { channel: 0, method: Method::ConnectionBlocked { reason } }));
        }
    }

    /// The server wrote `bytes` of deliveries to the connection's socket. (The server itself
    /// takes them off the connection's [`Outbound`] count and calls [`Broker::on_writable`]
    /// only when that makes it writable again.)
    pub fn on_written(&mut self, conn: ConnId, bytes: usize, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let Some(writable) = self.conns.get(&conn).map(|c| c.lock().out_bytes.written(bytes)) else { return };
        if writable {
            self.on_writable(conn, now_ms, out);
        }
    }

    /// The count of bytes handed to the connection and not yet written (shared with its task).
    pub fn outbound(&self, conn: ConnId) -> Option<Arc<Outbound>> {
        self.conns.get(&conn).map(|c| c.lock()).map(|c| c.out_bytes.clone())
    }

    /// A full connection can take deliveries again ([`Outbound::written`] said so): its
    /// consumers' queues deliver what they held back, and flow-blocked publishers may go on.
    pub fn on_writable(&mut self, conn: ConnId, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let Some(c) = self.conns.get_mut(&conn).map(Mutex::get_mut) else { return };
        let queues: Vec<ShortStr> =
            c.channels.values().flat_map(|ch| ch.consumers.values().map(|co| co.queue.clone())).collect();
        let vhost = c.vhost.clone();
        *self.flow_released.get_mut() = true;
        for q in queues {
            self.dispatch(&vhost, &q, now_ms, out);
        }
    }
}
