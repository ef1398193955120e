//! Transaction markers: the control batches a partition leader writes when
//! a transaction ends (Kafka's `EndTransactionMarker`): one record whose key
//! is (version 0, type: 0 abort, 1 commit) and whose value is (version 0,
//! coordinator epoch), in a batch flagged transactional and control, with
//! the producer's id and epoch and no sequence. Consumers skip them; a
//! read_committed consumer learns from them (and the aborted-transaction
//! index) which records to drop.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

const CONTROL_TYPE_ABORT: i16 = 0;
const CONTROL_TYPE_COMMIT: i16 = 1;
const MARKER_VERSION: i16 = 0;

/// What a marker says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    pub commit: bool,
    pub coordinator_epoch: i32,
}

/// A marker batch at base offset 0 (the writer assigns the offset).
pub fn encode(producer_id: i64, producer_epoch: i16, marker: Marker, timestamp_ms: i64) -> Bytes {
    let kind = if marker.commit {
        CONTROL_TYPE_COMMIT
    } else {
        CONTROL_TYPE_ABORT
    };
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&MARKER_VERSION.to_be_bytes());
    key.extend_from_slice(&kind.to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&MARKER_VERSION.to_be_bytes());
    value.extend_from_slice(&marker.coordinator_epoch.to_be_bytes());
    let record = Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: timestamp_ms,
        key: Some(Bytes::from(key)),
        value: Some(Bytes::from(value)),
        headers: Default::default(),
    };
    let mut out = BytesMut::with_capacity(96);
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut out, std::iter::once(&record), &options)
        .expect("a marker record always encodes");
    out.freeze()
}

/// The marker in a control batch; None for a control batch that is not a
/// transaction marker (or does not decode), which readers skip.
pub fn decode(batch: &Bytes) -> Option<Marker> {
    let set = RecordBatchDecoder::decode(&mut batch.clone()).ok()?;
    let record = set.records.first()?;
    if !record.control {
        return None;
    }
    let key = record.key.as_ref()?;
    let value = record.value.as_ref()?;
    if key.len() < 4 || value.len() < 6 {
        return None;
    }
    let commit = match i16::from_be_bytes([key[2], key[3]]) {
        CONTROL_TYPE_ABORT => false,
        CONTROL_TYPE_COMMIT => true,
        _ => return None,
    };
    let coordinator_epoch = i32::from_be_bytes([value[2], value[3], value[4], value[5]]);
    Some(Marker {
        commit,
        coordinator_epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch;

    #[test]
    fn markers_round_trip_and_are_control_batches() {
        for commit in [true, false] {
            let marker = Marker {
                commit,
                coordinator_epoch: 7,
            };
            let bytes = encode(42, 3, marker, 1_700_000_000_000);
            let header = batch::validate(&bytes).unwrap();
            assert!(header.is_control() && header.is_transactional());
            assert_eq!(header.producer_id.get(), 42);
            assert_eq!(header.producer_epoch.get(), 3);
            assert_eq!(header.base_sequence.get(), -1);
            assert_eq!(header.records_count.get(), 1);
            assert_eq!(decode(&bytes), Some(marker));
        }
    }

    #[test]
    fn a_data_batch_is_no_marker() {
        let data = crate::storage::testutil::make_batch(0, 3, 8, 1_000);
        assert_eq!(decode(&data), None);
    }
}
