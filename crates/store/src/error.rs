//! The errors of the store: [`StoreError`] for callers, [`DecodeError`] for
//! stored bytes that do not decode.
//!
//! Every error keeps what caused it as its [`std::error::Error::source`], and
//! its message also carries the source's text: the server logs errors with
//! `%e`, and an operator reading the log needs the cause, not only the
//! context.

use std::fmt::Display;

/// A backend's own error (redb's, or a database driver's), kept as the source
/// of [`StoreError::Db`].
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
///
/// A failed write changed nothing: its transaction is dropped (aborted) before
/// any in-memory state is touched, so the caller can retry the same commit
/// or give up without having half-applied it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused an operation (open, transaction, table, commit);
    /// `context` names what was being done, down to the table and key.
    #[error("database error: {context}: {source}")]
    Db {
        context: String,
        #[source]
        source: BackendError,
    },
    /// Stored data could not be decoded, or contradicts other stored data;
    /// `context` names the table and key.
    #[error("corrupt store: {context}: {source}")]
    Corrupt {
        context: String,
        #[source]
        source: DecodeError,
    },
    /// The data directory or the store file could not be created, read or
    /// renamed; `context` names the path.
    #[error("store i/o error: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The store file exists but cannot be used: it is empty, is not a redb
    /// file, fails its checksums, or reading it panicked. Nothing was
    /// written to it; `strata run --reset-store` moves it aside. `reason`
    /// names the file and says why (including the source's text).
    #[error("unreadable store: {reason}")]
    Unreadable {
        reason: String,
        #[source]
        source: Option<BackendError>,
    },
    /// The store file was written by a newer version of strata.
    #[error("unsupported store: {0}")]
    Unsupported(String),
}

impl StoreError {
    /// Whether opening failed because the file's content cannot be used
    /// (as opposed to a lock held by another process, an I/O error or a
    /// newer format): what moving the file aside and starting afresh cures.
    pub fn is_unreadable(&self) -> bool {
        matches!(
            self,
            StoreError::Unreadable { .. } | StoreError::Corrupt { .. }
        )
    }

    /// A backend error, with what the store was doing when it happened.
    pub fn db(
        context: impl Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Db {
            context: context.to_string(),
            source: Box::new(source),
        }
    }

    /// Stored data that does not decode, with where it was found.
    pub fn corrupt(context: impl Display, source: DecodeError) -> Self {
        StoreError::Corrupt {
            context: context.to_string(),
            source,
        }
    }

    /// An I/O error, with the path or operation it concerns.
    pub(crate) fn io(context: impl Display, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.to_string(),
            source,
        }
    }

    /// The same error with `prefix` (e.g. the file's path) put in front of
    /// its context, so that it names where it happened.
    pub(crate) fn within(self, prefix: impl Display) -> Self {
        match self {
            StoreError::Db { context, source } => StoreError::Db {
                context: format!("{prefix}: {context}"),
                source,
            },
            StoreError::Corrupt { context, source } => StoreError::Corrupt {
                context: format!("{prefix}: {context}"),
                source,
            },
            StoreError::Io { context, source } => StoreError::Io {
                context: format!("{prefix}: {context}"),
                source,
            },
            StoreError::Unreadable { reason, source } => StoreError::Unreadable {
                reason: format!("{prefix}: {reason}"),
                source,
            },
            StoreError::Unsupported(reason) => {
                StoreError::Unsupported(format!("{prefix}: {reason}"))
            }
        }
    }
}

/// Why stored bytes (or a stored record) could not be read back.
///
/// Decoding never panics: every read is bounds-checked and every failure is
/// one of these, wrapped in [`DecodeError::At`] by each enclosing field so
/// that the message reads from the outside in (`increment 3: state: …`).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end before the value does.
    #[error("truncated: {needed} more bytes needed, {left} left")]
    Truncated { needed: usize, left: usize },
    /// Bytes are left after the value.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// The leading version byte is not one this build writes.
    #[error("unknown {what} format version {found}")]
    Version { what: &'static str, found: u8 },
    /// A length or count is not a valid varint.
    #[error("bad varint: {0}")]
    Varint(#[source] prost::DecodeError),
    /// A length that cannot be held in memory on this machine.
    #[error("length {0} does not fit in memory")]
    Length(u64),
    /// A number larger than the field holds.
    #[error("{what} {value} too large")]
    TooLarge { what: &'static str, value: u64 },
    /// A boolean byte other than 0 or 1.
    #[error("flag byte {0} is neither 0 nor 1")]
    Flag(u8),
    /// A string that is not UTF-8.
    #[error("invalid utf-8 in string: {0}")]
    Utf8(#[source] std::string::FromUtf8Error),
    /// A series key the model refuses (bad metric or label name).
    #[error("invalid series key: {0}")]
    SeriesKey(#[source] strata_model::ModelError),
    /// Metric state that [`strata_model::State::decode`] refuses.
    #[error("state: {0}")]
    State(#[source] strata_model::ModelError),
    /// A metric kind tag that is not a kind.
    #[error("{0}")]
    Kind(#[source] strata_model::ModelError),
    /// Stored records that contradict each other (a series of an unknown
    /// metric, a counter behind what it counts); the message says which.
    #[error("{0}")]
    Inconsistent(String),
    /// The error of one field or element of the value, named by `at`.
    #[error("{at}: {source}")]
    At {
        at: String,
        #[source]
        source: Box<DecodeError>,
    },
}

impl DecodeError {
    /// This error as the error of the field or element `at`.
    pub fn at(self, at: impl Display) -> Self {
        DecodeError::At {
            at: at.to_string(),
            source: Box::new(self),
        }
    }
}
