//! The broker's one wall clock: milliseconds since the Unix epoch, the unit
//! of Kafka's timestamps, retention and group deadlines. Read on any shard;
//! a clock before 1970 reads as 0. Logic that must be testable takes `now_ms`
//! as an argument instead of calling this.

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
