//! The storage layer's error type. It has a file of its own so that the
//! code below the `Log` (segments, the cleaner, the file cache) can return it
//! without importing the log module: it used to live in `log.rs`, which made
//! `log.rs` and `segment.rs` import each other.

use super::batch::BatchError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("glommio I/O error: {0}")]
    Glommio(String),
    #[error("corrupt log: {0}")]
    Corrupt(String),
    #[error("offset {requested} out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        requested: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("log is closed")]
    Closed,
    /// A replicated append whose batches do not continue the log exactly
    /// (a gap or an overlap): nothing of it was written.
    #[error("replicated batches do not continue the log: expected base offset {expected}, got {got}")]
    NonContiguous { expected: i64, got: i64 },
}

impl StorageError {
    /// A copy for each caller of a failed group commit.
    pub(super) fn duplicate(&self) -> StorageError {
        match self {
            StorageError::Io(e) => StorageError::Io(std::io::Error::new(e.kind(), e.to_string())),
            StorageError::Glommio(s) => StorageError::Glommio(s.clone()),
            StorageError::Corrupt(s) => StorageError::Corrupt(s.clone()),
            StorageError::OffsetOutOfRange {
                requested,
                log_start_offset,
                log_end_offset,
            } => StorageError::OffsetOutOfRange {
                requested: *requested,
                log_start_offset: *log_start_offset,
                log_end_offset: *log_end_offset,
            },
            StorageError::InvalidBatch(e) => StorageError::InvalidBatch(e.clone()),
            StorageError::Closed => StorageError::Closed,
            StorageError::NonContiguous { expected, got } => StorageError::NonContiguous {
                expected: *expected,
                got: *got,
            },
        }
    }

    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, StorageError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}
