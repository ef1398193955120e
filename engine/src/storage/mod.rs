//! Storage: segments, indexes, recovery, retention for one partition's log.
//! See README.md in this directory.

pub mod batch;
pub mod cleaner;
mod file_cache;
pub mod index;
pub mod log;
mod records;
mod segment;
#[cfg(test)]
pub mod testutil;

pub use batch::{parse_header, split_validated, validate, BatchError, BatchHeader};
pub use file_cache::{FileCache, FileCacheStats, FileMode};
pub use log::{
    detect_recovery_mode, AppendResult, Log, LogConfig, RecoveryMode, RecoveryReport, StorageError,
};
pub use records::{FileSlice, Records};
