//! InitProducerId for idempotent producers (librdkafka
//! `enable.idempotence=true`, the Java client's default since 3.0).
//!
//! As Kafka does for a producer without a transactional id, every call gets
//! a fresh producer id with epoch 0 from the controller's allocator on
//! shard 0; ids are reserved in blocks in the persisted metadata image and
//! never reused. A transactional producer's call goes to its transaction
//! coordinator (`transactions::init_transactional`).

use std::rc::Rc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use crate::shard::{ControlOp, ControlReply, Shard, ShardOp, ShardReply, CONTROLLER_SHARD};

pub async fn init_producer_id(
    shard: &Rc<Shard>,
    req: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if let Some(id) = req.transactional_id {
        let expected = (req.producer_id.0, req.producer_epoch);
        return match super::transactions::init_transactional(
            shard,
            id.as_str(),
            req.transaction_timeout_ms,
            expected,
            version,
        )
        .await
        {
            Ok((producer_id, epoch)) => response
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(epoch),
            Err(e) => response.with_error_code(e.code()),
        };
    }
    match shard
        .call(CONTROLLER_SHARD, ShardOp::Control(ControlOp::AllocateProducerId))
        .await
    {
        ShardReply::Control(ControlReply::ProducerId(Ok(id))) => {
            response.with_producer_id(ProducerId(id)).with_producer_epoch(0)
        }
        ShardReply::Control(ControlReply::ProducerId(Err((code, message)))) => {
            tracing::error!("cannot allocate a producer id: {message}");
            response.with_error_code(code.code())
        }
        _ => response.with_error_code(ResponseError::CoordinatorNotAvailable.code()),
    }
}
