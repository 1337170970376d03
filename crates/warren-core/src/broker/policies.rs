//! Policies and operator policies: setting and clearing them, and the arguments a queue gets
//! from its declaration and the policies that match it (applied again to every queue of a
//! vhost when a policy changes).

use super::persist::policy_def;
use super::*;

impl Broker {
    /// The effective arguments of a queue (its declared ones with the policies folded in),
    /// and the names of the policy and operator policy applied.
    pub(super) fn queue_args(
        &self,
        vhost: &str,
        name: &str,
        declared: &FieldTable,
    ) -> Result<EffectiveArgs, ProtocolError> {
        let (effective, policy, operator_policy) =
            crate::policy::effective_queue_arguments(declared, vhost, name, &self.policies, &self.operator_policies);
        // A policy value that does not parse never makes a queue unusable: the declared
        // arguments (already checked) stand alone then.
        let args = QueueArgs::parse(&effective, name, vhost).or_else(|_| QueueArgs::parse(declared, name, vhost))?;
        Ok(EffectiveArgs { args, policy, operator_policy })
    }

    /// The policies that set a quorum queue leader locator (`queue-leader-locator`), for a
    /// cluster placing queues' groups (usually none).
    pub fn leader_locator_policies(&self) -> Vec<crate::policy::Policy> {
        let key = crate::policy::LEADER_LOCATOR_KEY;
        self.policies.iter().filter(|p| p.definition.get(key).is_some()).cloned().collect()
    }

    /// Sets (adds or replaces) a policy or operator policy and applies it to the vhost's
    /// existing queues and exchanges at once.
    #[allow(clippy::too_many_arguments)]
    pub fn set_policy(
        &mut self,
        vhost: &str,
        name: &str,
        pattern: &str,
        apply_to: ApplyTo,
        priority: i64,
        definition: FieldTable,
        operator: bool,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Result<(), ProtocolError> {
        if !self.vhosts.contains_key(vhost) {
            return Err(not_found("vhost", vhost, vhost));
        }
        let policy = Policy::new(vhost, name, pattern, apply_to, priority, definition, operator)?;
        self.def_ops.push(DefOp::PutPolicy(policy_def(&policy, operator)));
        let list = if operator { &mut self.operator_policies } else { &mut self.policies };
        list.retain(|p| !(p.vhost == vhost && p.name == name));
        list.push(policy);
        self.defs_dirty = true;
        self.apply_policies(vhost, now_ms, out);
        self.save_definitions()
    }

    /// Removes a policy; false when there was none of that name.
    pub fn clear_policy(
        &mut self,
        vhost: &str,
        name: &str,
        operator: bool,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Result<bool, ProtocolError> {
        let list = if operator { &mut self.operator_policies } else { &mut self.policies };
        let before = list.len();
        list.retain(|p| !(p.vhost == vhost && p.name == name));
        if list.len() == before {
            return Ok(false);
        }
        self.def_ops.push(DefOp::DelPolicy { vhost: vhost.to_owned(), name: name.to_owned(), operator });
        self.defs_dirty = true;
        self.apply_policies(vhost, now_ms, out);
        self.save_definitions().map(|_| true)
    }

    /// The policies (or operator policies), for the management API.
    pub fn policies(&self, operator: bool) -> &[Policy] {
        if operator {
            &self.operator_policies
        } else {
            &self.policies
        }
    }

    /// Recomputes the effective arguments of every queue and exchange of `vhost`.
    pub(super) fn apply_policies(&mut self, vhost: &str, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let Some(vh) = self.vhosts.get(vhost) else { return };
        let queues: Vec<(ShortStr, FieldTable)> =
            vh.queues.values().map(|q| q.lock()).map(|q| (q.name.clone(), q.arguments.clone())).collect();
        let exchanges: Vec<ShortStr> = vh.exchanges.keys().cloned().collect();
        let mut dead = Vec::new();
        for (name, declared) in queues {
            let Ok(effective) = self.queue_args(vhost, &name, &declared) else { continue };
            let Some(q) = self.vhosts.get_mut(vhost).and_then(|v| v.queues.get_mut(&name).map(Mutex::get_mut)) else {
                continue;
            };
            q.policy = effective.policy;
            q.operator_policy = effective.operator_policy;
            match q.set_args(effective.args) {
                Ok(dropped) => dead.extend(dropped.into_iter().map(|d| (name.clone(), d, "maxlen"))),
                Err(e) => self.errors.push(format!("cannot apply a policy to queue '{name}': {e}")),
            }
        }
        for name in exchanges {
            let ae = crate::policy::policy_alternate_exchange(vhost, &name, &self.policies).map(ShortStr::from);
            if let Some(x) = self.vhosts.get_mut(vhost).and_then(|v| v.exchanges.get_mut(&name)) {
                x.policy_alternate_exchange = ae;
            }
        }
        let vhost: Arc<str> = Arc::from(vhost);
        self.dead_letter(&vhost, dead, now_ms, out);
    }
}
