//! Storage: segments, indexes, recovery, retention for one partition's log.
//! See README.md in this directory.

pub mod batch;
pub mod cleaner;
pub mod durable;
mod error;
mod file_cache;
pub mod index;
pub mod log;
mod log_config;
pub mod offset_checkpoint;
pub mod recompress;
mod records;
mod segment;
#[cfg(test)]
pub mod testutil;
pub mod txn_marker;

pub use batch::{parse_header, split_validated, validate, BatchError, BatchHeader};
pub use error::StorageError;
pub use file_cache::{FileCache, FileCacheStats, FileMode};
pub use log::{read_small_file, AppendResult, Log, OtherFile, RecoveryMode, RecoveryReport};
pub use log_config::LogConfig;
pub use records::{FileSlice, Records};
pub use segment::{file_name as segment_file_name, sync_filesystem, write_file_atomic, TXN_INDEX_SUFFIX};
