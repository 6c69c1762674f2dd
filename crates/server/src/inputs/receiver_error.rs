//! Why the federation receiver refuses a stream or ends it: [`ReceiverError`].
//!
//! Each variant's message is what the source reads in the status (and what
//! its `/health/forwarder` shows); its gRPC code and retry hint come from
//! [`crate::status`], the one table mapping errors to codes.

use crate::inputs::delivery::Refusal;
use crate::status::{Class, Classify};

/// Why a source's stream is refused at its hello, or ended on a message.
/// A batch that is merely malformed is not here: it is rejected whole with a
/// `Reject` and the stream goes on (DESIGN §4).
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// The stream sent nothing within 10 s.
    #[error("no hello within 10 s")]
    NoHello,
    #[error("the first message must be a hello")]
    FirstNotHello,
    /// Not in this node's `[[downstream]]`.
    #[error("source {source_id:?} is not a declared downstream of {node_id}")]
    UnknownSource { source_id: String, node_id: String },
    #[error("bad token for source {source_id:?}")]
    BadToken { source_id: String },
    #[error("epoch must not be 0")]
    EpochZero,
    /// A declared source without its live record: a bug of this node.
    #[error("declared source has no live state")]
    NoLiveState,
    /// A second live stream for a connected id (DESIGN §4).
    #[error("source {source_id:?} is already connected: node ids must be unique")]
    AlreadyConnected { source_id: String },
    /// Batches of the source's previous stream are still being committed
    /// after 30 s: the resume point is not known yet.
    #[error("previous stream still committing, retry")]
    PreviousStreamCommitting,
    #[error("upstream is shutting down")]
    ShuttingDown,
    /// The commit holding one of the source's batches failed; the message
    /// is the commit writer's.
    #[error("{0}")]
    CommitFailed(String),
    #[error("unexpected message after hello")]
    UnexpectedMessage,
    /// A message over `grpc.max_message_bytes`, refused from its length
    /// prefix; `found` is its length when tonic said it.
    #[error(
        "{} is over this node's limit of {limit} bytes (grpc.max_message_bytes); batches larger than the limit announced in the welcome must be sent in parts",
        a_message_of(.found)
    )]
    MessageOverLimit { found: Option<u64>, limit: usize },
    /// A series definition out of order (`KnownSeries::learn`).
    #[error("source {source_id:?}, batch {seq}: {reason}")]
    BadDefinition {
        source_id: String,
        seq: u64,
        reason: String,
    },
    #[error("source {source_id:?}: part {part} of batch {seq} came without the parts before it")]
    PartWithoutStart {
        source_id: String,
        part: u32,
        seq: u64,
    },
    #[error(
        "source {source_id:?}: expected part {expected_part} of batch {expected_seq}, got part {part} of batch {seq}"
    )]
    PartOutOfPlace {
        source_id: String,
        expected_part: u32,
        expected_seq: u64,
        part: u32,
        seq: u64,
    },
    /// The parts of one batch together exceed `grpc.max_batch_bytes`.
    #[error(
        "source {source_id:?}: batch {seq} in parts is over {limit} bytes, this node's limit (grpc.max_batch_bytes)"
    )]
    BatchOverLimit {
        source_id: String,
        seq: u64,
        limit: usize,
    },
    /// A gap or a repeat of an uncommitted batch: the source resumes from
    /// the committed seq.
    #[error("source {source_id:?}: expected seq {expected}, got {seq}; reconnect to resume")]
    OutOfOrder {
        source_id: String,
        expected: u64,
        seq: u64,
    },
    /// A seq no correct source sends.
    #[error("source {source_id:?}: {refusal}")]
    SeqRefused { source_id: String, refusal: Refusal },
    /// The source stopped reading the stream.
    #[error("stream closed")]
    StreamClosed,
}

fn a_message_of(found: &Option<u64>) -> String {
    match found {
        Some(n) => format!("a message of {n} bytes"),
        None => "a message".to_string(),
    }
}

impl Classify for ReceiverError {
    fn class(&self) -> Class {
        match self {
            ReceiverError::NoHello => Class::Timeout,
            ReceiverError::FirstNotHello
            | ReceiverError::EpochZero
            | ReceiverError::UnexpectedMessage
            | ReceiverError::BadDefinition { .. }
            | ReceiverError::PartWithoutStart { .. }
            | ReceiverError::PartOutOfPlace { .. } => Class::Invalid,
            ReceiverError::UnknownSource { .. } => Class::Forbidden,
            ReceiverError::BadToken { .. } => Class::Unauthenticated,
            ReceiverError::NoLiveState => Class::Internal,
            ReceiverError::AlreadyConnected { .. } => Class::AlreadyExists,
            ReceiverError::PreviousStreamCommitting
            | ReceiverError::ShuttingDown
            | ReceiverError::CommitFailed(_) => Class::Unavailable,
            ReceiverError::MessageOverLimit { .. } | ReceiverError::BatchOverLimit { .. } => {
                Class::TooLarge
            }
            ReceiverError::OutOfOrder { .. } | ReceiverError::SeqRefused { .. } => {
                Class::OutOfSequence
            }
            ReceiverError::StreamClosed => Class::Cancelled,
        }
    }
}

impl From<ReceiverError> for tonic::Status {
    fn from(e: ReceiverError) -> Self {
        crate::status::grpc_status(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/PROTOCOL.md quotes this one.
    #[test]
    fn over_limit_names_the_size_and_the_key() {
        let e = ReceiverError::MessageOverLimit {
            found: Some(5_000_000),
            limit: 4_194_304,
        };
        assert_eq!(
            e.to_string(),
            "a message of 5000000 bytes is over this node's limit of 4194304 bytes (grpc.max_message_bytes); batches larger than the limit announced in the welcome must be sent in parts"
        );
        let e = ReceiverError::MessageOverLimit {
            found: None,
            limit: 1,
        };
        assert!(e.to_string().starts_with("a message is over"), "{e}");
    }
}
