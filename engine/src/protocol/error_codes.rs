//! The error codes of a response, for the metrics' per-API error counts
//! (`shardlog_request_errors_total`, Kafka's `ErrorsPerSec`): the top-level
//! code where a response has one, and each partition's (or topic's, or
//! group's) where it answers per part. Responses of the admin APIs that
//! are rarely sent count no errors.

use kafka_protocol::messages::*;

pub trait ErrorCodes {
    /// Calls `f` with each error code of the response (0s included).
    fn error_codes(&self, _f: &mut dyn FnMut(i16)) {}
}

/// Responses whose only code is the top-level `error_code`.
macro_rules! top_level {
    ($($ty:ty),* $(,)?) => {
        $(impl ErrorCodes for $ty {
            fn error_codes(&self, f: &mut dyn FnMut(i16)) {
                f(self.error_code);
            }
        })*
    };
}

/// Responses with one code per partition, under `topics`.
macro_rules! per_partition {
    ($($ty:ty),* $(,)?) => {
        $(impl ErrorCodes for $ty {
            fn error_codes(&self, f: &mut dyn FnMut(i16)) {
                for t in &self.topics {
                    t.partitions.iter().for_each(|p| f(p.error_code));
                }
            }
        })*
    };
}

/// Responses whose codes are not counted.
macro_rules! none {
    ($($ty:ty),* $(,)?) => {
        $(impl ErrorCodes for $ty {})*
    };
}

top_level!(
    ApiVersionsResponse,
    JoinGroupResponse,
    SyncGroupResponse,
    HeartbeatResponse,
    LeaveGroupResponse,
    InitProducerIdResponse,
    EndTxnResponse,
    AddOffsetsToTxnResponse,
    ConsumerGroupHeartbeatResponse,
    ListGroupsResponse,
);

per_partition!(ListOffsetsResponse, OffsetCommitResponse, TxnOffsetCommitResponse);

none!(
    AlterConfigsResponse,
    AlterPartitionReassignmentsResponse,
    ConsumerGroupDescribeResponse,
    CreatePartitionsResponse,
    DeleteGroupsResponse,
    DeleteRecordsResponse,
    DescribeClusterResponse,
    DescribeConfigsResponse,
    DescribeGroupsResponse,
    DescribeLogDirsResponse,
    DescribeTopicPartitionsResponse,
    DescribeTransactionsResponse,
    ElectLeadersResponse,
    IncrementalAlterConfigsResponse,
    ListPartitionReassignmentsResponse,
    ListTransactionsResponse,
    OffsetDeleteResponse,
    OffsetForLeaderEpochResponse,
    WriteTxnMarkersResponse,
    AddPartitionsToTxnResponse,
);

impl ErrorCodes for ProduceResponse {
    fn error_codes(&self, f: &mut dyn FnMut(i16)) {
        for t in &self.responses {
            t.partition_responses.iter().for_each(|p| f(p.error_code));
        }
    }
}

impl ErrorCodes for FetchResponse {
    fn error_codes(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
        for t in &self.responses {
            t.partitions.iter().for_each(|p| f(p.error_code));
        }
    }
}

impl ErrorCodes for MetadataResponse {
    fn error_codes(&self, f: &mut dyn FnMut(i16)) {
        self.topics.iter().for_each(|t| f(t.error_code));
    }
}

impl ErrorCodes for OffsetFetchResponse {
    fn error_codes(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
        for t in &self.topics {
            t.partitions.iter().for_each(|p| f(p.error_code));
        }
        for g in &self.groups {
            f(g.error_code);
            for t in &g.topics {
                t.partitions.iter().for_each(|p| f(p.error_code));
            }
        }
    }
}

impl ErrorCodes for FindCoordinatorResponse {
    fn error_codes(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
        self.coordinators.iter().for_each(|c| f(c.error_code));
    }
}

impl ErrorCodes for CreateTopicsResponse {
    fn error_codes(&self, f: &mut dyn FnMut(i16)) {
        self.topics.iter().for_each(|t| f(t.error_code));
    }
}

impl ErrorCodes for DeleteTopicsResponse {
    fn error_codes(&self, f: &mut dyn FnMut(i16)) {
        self.responses.iter().for_each(|t| f(t.error_code));
    }
}
