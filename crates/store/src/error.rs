//! The one error type of the store.

/// Why a store operation failed.
///
/// A failed [`crate::Store::commit`] changed nothing: the write transaction is
/// dropped (redb aborts it) before any in-memory index is touched, so the caller
/// can retry the same commit or give up without having half-applied it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database refused an operation (open, transaction, table,
    /// commit); the message names what was being done.
    #[error("database error: {0}")]
    Db(String),
    /// Stored bytes could not be decoded; the message names the table and key.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The data directory could not be created or read.
    #[error("store i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The store file exists but cannot be used: it is empty, is not a redb
    /// file, fails its checksums, or reading it panicked. Nothing was
    /// written to it; `strata run --reset-store` moves it aside.
    #[error("unreadable store: {0}")]
    Unreadable(String),
    /// The store file was written by a newer version of strata.
    #[error("unsupported store: {0}")]
    Unsupported(String),
}

impl StoreError {
    /// Whether opening failed because the file's content cannot be used
    /// (as opposed to a lock held by another process, an I/O error or a
    /// newer format): what moving the file aside and starting afresh cures.
    pub fn is_unreadable(&self) -> bool {
        matches!(self, StoreError::Unreadable(_) | StoreError::Corrupt(_))
    }

    /// Wraps a redb error with what the store was doing when it happened.
    pub(crate) fn db(context: impl std::fmt::Display, err: impl Into<redb::Error>) -> Self {
        StoreError::Db(format!("{context}: {}", err.into()))
    }
}

/// Adds the "what were we doing" part to redb results.
pub(crate) trait DbContext<T> {
    fn ctx(self, context: &str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> DbContext<T> for Result<T, E> {
    fn ctx(self, context: &str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::db(context, e))
    }
}
