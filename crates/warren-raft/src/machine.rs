//! The replicated state machine a group runs, and what applying it reports to the host.
//!
//! Invariant: a [`Machine`] is deterministic. Every node applies the same commands in the same
//! order and must reach the same state and produce the same outputs, so `apply` may not read the
//! clock, draw random numbers, or look at anything outside the machine and its arguments.

use std::fmt::Debug;

/// A deterministic state machine replicated by a [`Group`](crate::Group).
///
/// The group writes each proposed [`Command`](Machine::Command) to the Raft log and, once a quorum
/// holds it, calls [`apply`](Machine::apply) with it on every node, in log order.
pub trait Machine: Send + Sync + 'static {
    /// What is proposed and written to the log.
    type Command: Clone + Debug + Send + Sync + 'static;

    /// What applying one command produced. It goes back to whoever proposed the command, and to
    /// the host through the applied stream on every node.
    type Output: Clone + Debug + Send + Sync + 'static;

    /// Applies the command at log `index` and returns its output.
    ///
    /// Must be deterministic: the same state, index and command give the same new state and
    /// output on every node.
    fn apply(&mut self, index: u64, command: &Self::Command) -> Self::Output;

    /// The whole state as bytes, from which [`restore`](Machine::restore) rebuilds it on any node.
    fn snapshot(&self) -> Vec<u8>;

    /// Called before [`snapshot`](Machine::snapshot) when a snapshot is built to be kept: a
    /// machine whose snapshots refer to data it keeps elsewhere makes that data durable here.
    /// An error fails the snapshot.
    fn prepare_snapshot(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    /// The snapshot last built (or installed) is on disk: what only older snapshots needed may
    /// go.
    fn snapshot_written(&mut self) {}

    /// The snapshot `snapshot` (the latest this member built or installed) as it goes to another
    /// member: whole, where it refers to data only this member keeps. By default, as it is.
    fn snapshot_to_send(&self, snapshot: &[u8]) -> std::io::Result<Vec<u8>> {
        Ok(snapshot.to_vec())
    }

    /// Replaces the whole state with the one `bytes` describes.
    ///
    /// On error the state should be left as it was (decode first, then swap), because the group
    /// stops on a failed restore and a half-replaced state would be observable through
    /// [`Group::with_machine`](crate::Group::with_machine).
    fn restore(&mut self, bytes: &[u8]) -> std::io::Result<()>;

    /// Appends `command`'s bytes to `out`, in the form [`decode_command`](Machine::decode_command)
    /// reads back: how a command travels to peers and, later, how it is written to disk.
    ///
    /// The encoding must be deterministic and self-contained: the same command always gives the
    /// same bytes, and nothing is read but the command.
    fn encode_command(command: &Self::Command, out: &mut Vec<u8>);

    /// Rebuilds a command from exactly the bytes [`encode_command`](Machine::encode_command)
    /// wrote.
    ///
    /// The bytes may come from the network: anything that is not one whole command (truncated,
    /// trailing or unknown bytes) must be an error of kind `InvalidData`, never a panic.
    fn decode_command(bytes: &[u8]) -> std::io::Result<Self::Command>;

    /// About how many bytes [`Machine::encode_command`] writes for `command`, so that the
    /// buffers it is written into are sized once (0: no idea).
    fn encoded_len_hint(_command: &Self::Command) -> usize {
        0
    }

    /// What the leader sends back, with the index, to a member that forwarded a command
    /// ([`TcpTransport::propose`](crate::TcpTransport::propose)) once it committed and applied
    /// it: as much of `output` as lets the proposer answer its clients without waiting to apply
    /// the entry itself. Nothing by default (the proposer waits).
    fn receipt(_output: &Self::Output, _out: &mut Vec<u8>) {}
}

/// One event from a node's applied stream, in log order.
///
/// Entries that carry no command (membership changes, the blank entry a new leader writes) are
/// not reported, so the indexes of consecutive [`Applied::Command`]s may have gaps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied<O> {
    /// The command at `index` was applied and produced `output`.
    Command {
        /// The log index of the command.
        index: u64,
        /// What [`Machine::apply`] returned.
        output: O,
    },
    /// The machine was replaced by a snapshot that covers the log up to `index`: the commands up
    /// to there were not applied one by one on this node, so a host that keeps derived state must
    /// rebuild it from the machine.
    Restored {
        /// The last log index the snapshot covers.
        index: u64,
    },
}

impl<O> Applied<O> {
    /// The log index this event is about.
    pub fn index(&self) -> u64 {
        match self {
            Applied::Command { index, .. } | Applied::Restored { index } => *index,
        }
    }
}
