//! Topic `compression.type`: the codec a topic stores its batches in. With
//! `producer` (the default) batches are stored as sent; with a codec, a
//! batch that arrived in another one is decoded and encoded again in the
//! topic's, as Kafka's LogValidator does. A full decompress and compress per
//! batch is CPU work a shard must not do between requests: the partition
//! runs `recompress` on the blocking pool.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Compression, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions};

use super::batch::{self, BatchHeader};

/// A `compression.type` value (Kafka's BrokerCompressionType).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicCompression {
    /// Store batches in the codec the producer chose.
    Producer,
    /// Store every batch in this codec (`uncompressed` is `Compression::None`).
    Codec(Compression),
}

impl TopicCompression {
    /// The value's meaning, or None when Kafka would refuse it.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value.trim() {
            "producer" => Self::Producer,
            "uncompressed" => Self::Codec(Compression::None),
            "gzip" => Self::Codec(Compression::Gzip),
            "snappy" => Self::Codec(Compression::Snappy),
            "lz4" => Self::Codec(Compression::Lz4),
            "zstd" => Self::Codec(Compression::Zstd),
            _ => return None,
        })
    }

    /// Must this (validated) batch be encoded again before it is stored?
    /// Control batches (transaction markers) are never compressed, in Kafka
    /// neither.
    pub fn needs_recompression(self, header: &BatchHeader) -> bool {
        match self {
            Self::Producer => false,
            Self::Codec(codec) => !header.is_control() && header.compression() != codec as u8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot store the batch in the topic's compression.type: {0}")]
pub struct RecompressError(String);

/// `batch` (one whole, CRC-checked v2 batch) encoded in `codec`: the same
/// records with their offset deltas, timestamps, keys, values and headers,
/// the same producer id, epoch, base sequence, leader epoch and
/// transactional flag, and a new CRC. Returns the batches that replace it
/// (one, unless the decoded records disagree on a batch-level field, which
/// a valid batch never does).
pub fn recompress(batch: &Bytes, codec: Compression) -> Result<Vec<Bytes>, RecompressError> {
    let mut buf = batch.clone();
    let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| RecompressError(e.to_string()))?;
    if set.records.is_empty() {
        return Err(RecompressError("the batch holds no records".into()));
    }
    let mut encoded = BytesMut::with_capacity(batch.len());
    let options = RecordEncodeOptions {
        version: 2,
        compression: codec,
    };
    RecordBatchEncoder::encode(&mut encoded, set.records.iter(), &options)
        .map_err(|e| RecompressError(e.to_string()))?;
    batch::split_validated(&encoded.freeze()).map_err(|e| RecompressError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{Record, TimestampType};

    fn batch_of(codec: Compression, producer_id: i64, base_sequence: i32) -> Bytes {
        let records: Vec<Record> = (0..20)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 3,
                producer_id,
                producer_epoch: if producer_id >= 0 { 2 } else { -1 },
                timestamp_type: TimestampType::Creation,
                offset: i,
                // As the decoder gives them: base sequence + offset delta,
                // also for base sequence -1 (no producer id).
                sequence: base_sequence.wrapping_add(i as i32),
                timestamp: 1_700_000_000_000 + i,
                key: Some(Bytes::from(format!("key-{i}"))),
                value: (i != 7).then(|| Bytes::from(format!("value-{i}-").repeat(50))),
                headers: Default::default(),
            })
            .collect();
        let mut out = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut out,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: codec,
            },
        )
        .unwrap();
        out.freeze()
    }

    fn records(batch: &Bytes) -> Vec<Record> {
        RecordBatchDecoder::decode(&mut batch.clone()).unwrap().records
    }

    #[test]
    fn every_codec_round_trips_records_and_producer_fields() {
        let codecs = [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ];
        for from in codecs {
            for to in codecs {
                for (producer_id, base_sequence) in [(-1, -1), (42, 100)] {
                    let original = batch_of(from, producer_id, base_sequence);
                    let out = recompress(&original, to).unwrap();
                    assert_eq!(out.len(), 1, "{from:?} -> {to:?}");
                    let header = batch::validate(&out[0]).unwrap();
                    assert_eq!(header.compression(), to as u8);
                    let before = *batch::validate(&original).unwrap();
                    assert_eq!(header.producer_id.get(), before.producer_id.get());
                    assert_eq!(header.producer_epoch.get(), before.producer_epoch.get());
                    assert_eq!(header.base_sequence.get(), before.base_sequence.get());
                    assert_eq!(header.last_offset_delta.get(), before.last_offset_delta.get());
                    assert_eq!(header.records_count.get(), before.records_count.get());
                    assert_eq!(header.max_timestamp.get(), before.max_timestamp.get());
                    assert_eq!(records(&out[0]), records(&original), "{from:?} -> {to:?}");
                }
            }
        }
    }

    #[test]
    fn only_other_codecs_need_recompression() {
        let gzip = batch_of(Compression::Gzip, -1, -1);
        let header = batch::validate(&gzip).unwrap();
        assert!(!TopicCompression::Producer.needs_recompression(header));
        assert!(!TopicCompression::parse("gzip")
            .unwrap()
            .needs_recompression(header));
        assert!(TopicCompression::parse("lz4")
            .unwrap()
            .needs_recompression(header));
        assert!(TopicCompression::parse("uncompressed")
            .unwrap()
            .needs_recompression(header));
        assert_eq!(TopicCompression::parse("none"), None);
        assert_eq!(TopicCompression::parse("brotli"), None);
    }

    #[test]
    fn a_batch_that_does_not_decode_is_refused() {
        let mut bytes = batch_of(Compression::Lz4, -1, -1).to_vec();
        // Corrupt the compressed payload (after the 61-byte header).
        for b in &mut bytes[70..90] {
            *b = 0xff;
        }
        assert!(recompress(&Bytes::from(bytes), Compression::Gzip).is_err());
    }
}
