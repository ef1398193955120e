//! Small helpers for building Kafka messages with the `kafka-protocol`
//! crate, shared by the request handlers (`protocol`) and the group
//! coordinator (`group`), which answers with Kafka's message types itself.

use kafka_protocol::protocol::StrBytes;

/// Kafka's "no authorized operations requested" sentinel.
pub const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}
