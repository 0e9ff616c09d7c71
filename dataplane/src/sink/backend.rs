//! The seam between the shared Kafka side of the sink and a storage backend.
//!
//! The consumer ([`consumer`](super::consumer)) owns what every backend shares: the group
//! membership, positioning, batching, dead-letter classification, pausing on failure and
//! rebalances. A backend owns one thing: it writes a [`Batch`] and says where each partition
//! resumes ([`Committed::next`]), and it answers where partitions start ([`Backend::positions`]).
//! The PostgreSQL [`Writer`](super::writer::Writer) is one; the consumer talks to whichever it is
//! through [`Command`]s served by [`serve`].

use std::collections::BTreeMap;
use std::future::Future;

use super::SinkError;
use super::batch::Batch;

/// `(low, high)` watermarks by partition, for the partitions Kafka answered for.
pub type Watermarks = BTreeMap<i32, (i64, i64)>;

/// A committed batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// The stored `next_offset` of each partition of the batch after the commit: where the
    /// partition resumes.
    pub next: BTreeMap<i32, i64>,
    /// Rows written.
    pub rows: u64,
    /// Dead letters sent.
    pub dead_letters: u64,
    /// Records skipped because the backend already had them.
    pub skipped: u64,
}

/// A request to the backend task.
pub enum Command {
    /// Write a batch; the result goes to the outcome channel.
    Write(Batch),
    /// Look up (and seed) the stored positions of partitions, given the (low, high) watermarks
    /// Kafka reported for them (see [`Backend::positions`]).
    Positions(
        Vec<i32>,
        Watermarks,
        std::sync::mpsc::Sender<Result<BTreeMap<i32, i64>, SinkError>>,
    ),
}

/// The result of a [`Command::Write`].
#[derive(Debug)]
pub struct Outcome {
    /// The batch's generation.
    pub generation: u64,
    /// What happened.
    pub result: Result<Committed, SinkError>,
}

/// A place the sink stores batches in. Every method is retried by the caller after a failure
/// whose [`SinkError::is_retryable`] says so; a backend drops whatever session state a failure
/// may have left behind itself.
pub trait Backend: Send + 'static {
    /// Connects (when not connected) and prepares the storage (tables, statements). Called
    /// before the consumer joins its group, so that a wrong address or schema is reported at
    /// once and an unreachable store is waited for without holding partitions.
    fn prepare(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Where each of `partitions` resumes. `watermarks` lets the backend recognise a stored
    /// position that cannot belong to the topic (past its end: the topic was re-created).
    fn positions(
        &mut self,
        partitions: &[i32],
        watermarks: &Watermarks,
    ) -> impl Future<Output = Result<BTreeMap<i32, i64>, SinkError>> + Send;

    /// Writes `batch` (its rows, and its dead letters before the positions move) and says where
    /// each of its partitions resumes.
    fn write(&mut self, batch: &Batch)
    -> impl Future<Output = Result<Committed, SinkError>> + Send;
}

/// Serves commands until the channel closes, sending write outcomes to `outcomes`.
pub async fn serve<B: Backend>(
    mut backend: B,
    mut commands: tokio::sync::mpsc::Receiver<Command>,
    outcomes: std::sync::mpsc::Sender<Outcome>,
) {
    while let Some(command) = commands.recv().await {
        match command {
            Command::Write(batch) => {
                let result = backend.write(&batch).await;
                let outcome = Outcome {
                    generation: batch.generation,
                    result,
                };
                if outcomes.send(outcome).is_err() {
                    break;
                }
            }
            Command::Positions(partitions, watermarks, reply) => {
                let _ = reply.send(backend.positions(&partitions, &watermarks).await);
            }
        }
    }
}
