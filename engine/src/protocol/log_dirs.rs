//! DescribeLogDirs: this node's one log directory (`log.dirs` is a single
//! data dir here), the size and lag of every replica it holds, gathered from
//! every shard, and the filesystem's total and usable bytes.

use std::rc::Rc;

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};

use super::partition_lists::{by_topic, flatten};
use crate::shard::{ReplicaSize, Shard, ShardOp, ShardReply};
use crate::wire::str_bytes;

/// (total, usable) bytes of the filesystem holding `path`; (-1, -1) when
/// it cannot be read, as Kafka answers for an unknown value.
fn filesystem_bytes(path: &std::path::Path) -> (i64, i64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return (-1, -1);
    };
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the
    // call, and `stat` is a properly sized, writable statvfs the kernel
    // fills; no pointer escapes the call.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return (-1, -1);
    }
    let block = stat.f_frsize as i64;
    (stat.f_blocks as i64 * block, stat.f_bavail as i64 * block)
}

pub async fn describe_log_dirs(shard: &Rc<Shard>, req: DescribeLogDirsRequest) -> DescribeLogDirsResponse {
    let wanted = req
        .topics
        .map(|topics| flatten(topics.into_iter().map(|t| (t.topic.to_string(), t.partitions))));
    let calls = (0..shard.nr_shards).map(|target| {
        let wanted = wanted.clone();
        async move { shard.call(target, ShardOp::ReplicaSizes { wanted }).await }
    });
    let mut answers = Vec::new();
    for reply in futures::future::join_all(calls).await {
        let ShardReply::ReplicaSizes(sizes) = reply else {
            continue;
        };
        answers.extend(sizes.into_iter().map(|r: ReplicaSize| {
            let partition = DescribeLogDirsPartition::default()
                .with_partition_index(r.partition)
                .with_partition_size(r.size_bytes as i64)
                .with_offset_lag(r.offset_lag);
            (r.topic, partition)
        }));
    }
    let dir = std::fs::canonicalize(&shard.config.data_dir).unwrap_or_else(|_| shard.config.data_dir.clone());
    let (total_bytes, usable_bytes) = filesystem_bytes(&dir);
    let result = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(&dir.to_string_lossy()))
        .with_total_bytes(total_bytes)
        .with_usable_bytes(usable_bytes)
        .with_topics(
            by_topic(answers)
                .into_iter()
                .map(|(name, mut partitions)| {
                    partitions.sort_by_key(|p| p.partition_index);
                    DescribeLogDirsTopic::default()
                        .with_name(TopicName(str_bytes(&name)))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    DescribeLogDirsResponse::default().with_results(vec![result])
}
