//! The APIs and versions this broker advertises, and answers.
//!
//! Every range here is really handled: the lower bound is Kafka 4.0's
//! baseline as decoded by the kafka-protocol crate, the upper bound is the
//! newest version the handlers fill in completely. One exception, as in
//! Kafka 4.0 (KAFKA-18659): Produce is advertised from v0 because
//! librdkafka disables compression when it does not see v0; a Produce
//! below v3 is still refused (connection closed). And ListOffsets v0,
//! dropped by Kafka 4.0, is served (by hand) because Burrow 1.2 uses it.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::ResponseError;

/// (min, max) actually served, or None if the API is not served.
pub fn supported(key: ApiKey) -> Option<(i16, i16)> {
    let handled = match key {
        ApiKey::ApiVersions => (0, 4),
        ApiKey::Metadata => (0, 13),
        ApiKey::Produce => (3, 13),
        ApiKey::Fetch => (4, 18),
        ApiKey::ListOffsets => (1, 10),
        ApiKey::CreateTopics => (2, 7),
        ApiKey::DeleteTopics => (1, 6),
        ApiKey::CreatePartitions => (0, 3),
        ApiKey::ElectLeaders => (0, 2),
        ApiKey::DescribeLogDirs => (1, 4),
        ApiKey::AlterPartitionReassignments => (0, 0),
        ApiKey::ListPartitionReassignments => (0, 0),
        ApiKey::DescribeConfigs => (1, 4),
        ApiKey::DescribeCluster => (0, 2),
        ApiKey::DescribeTopicPartitions => (0, 0),
        ApiKey::WriteTxnMarkers => (1, 1),
        // The original transaction protocol (SPEC.md §3.12): AddPartitionsToTxn
        // v4+ is broker-to-broker verification, EndTxn v5 is KIP-890's.
        ApiKey::AddPartitionsToTxn => (0, 3),
        ApiKey::AddOffsetsToTxn => (0, 4),
        ApiKey::EndTxn => (0, 4),
        ApiKey::TxnOffsetCommit => (0, 4),
        ApiKey::DescribeTransactions => (0, 0),
        ApiKey::ListTransactions => (0, 1),
        ApiKey::AlterConfigs => (0, 2),
        ApiKey::IncrementalAlterConfigs => (0, 1),
        ApiKey::DeleteRecords => (0, 2),
        ApiKey::InitProducerId => (0, 5),
        ApiKey::OffsetForLeaderEpoch => (2, 4),
        ApiKey::FindCoordinator => (0, 5),
        ApiKey::JoinGroup => (0, 9),
        ApiKey::SyncGroup => (0, 5),
        ApiKey::Heartbeat => (0, 4),
        ApiKey::LeaveGroup => (0, 5),
        // v10 names topics by id (KIP-848 era); not handled yet.
        ApiKey::OffsetCommit => (2, 9),
        ApiKey::OffsetFetch => (1, 9),
        ApiKey::ListGroups => (0, 5),
        ApiKey::DescribeGroups => (0, 6),
        ApiKey::DeleteGroups => (0, 2),
        ApiKey::OffsetDelete => (0, 0),
        // KIP-848; librdkafka uses the consumer protocol only with v1
        // (client-made member ids, KIP-1082).
        ApiKey::ConsumerGroupHeartbeat => (0, 1),
        ApiKey::ConsumerGroupDescribe => (0, 1),
        _ => return None,
    };
    let crate_range = key.valid_versions();
    let min = handled.0.max(crate_range.min);
    let max = handled.1.min(crate_range.max);
    (min <= max).then_some((min, max))
}

fn advertised() -> Vec<ApiVersion> {
    ApiKey::iter()
        .filter_map(|key| {
            let (min, max) = supported(key)?;
            // ListOffsets v0 is served by hand for Burrow 1.2 (list_offsets::handle_v0).
            let min = if key == ApiKey::Produce || key == ApiKey::ListOffsets {
                0
            } else {
                min
            };
            Some(
                ApiVersion::default()
                    .with_api_key(key as i16)
                    .with_min_version(min)
                    .with_max_version(max),
            )
        })
        .collect()
}

pub fn api_versions_response() -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(0)
        .with_api_keys(advertised())
        .with_throttle_time_ms(0)
        .with_finalized_features_epoch(-1)
}

/// The v0-format answer to an ApiVersions version this broker does not know.
pub fn unsupported_version_response() -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(advertised())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_is_advertised_from_v0_and_served_from_v3() {
        let produce = advertised()
            .into_iter()
            .find(|v| v.api_key == ApiKey::Produce as i16)
            .unwrap();
        assert_eq!(produce.min_version, 0);
        assert_eq!(supported(ApiKey::Produce).unwrap().0, 3);
    }

    #[test]
    fn every_advertised_range_is_within_the_crate_range() {
        for v in advertised() {
            let key = ApiKey::try_from(v.api_key).unwrap();
            assert!(v.max_version <= key.valid_versions().max);
        }
    }
}
