//! InitProducerId for idempotent producers (librdkafka
//! `enable.idempotence=true`, the Java client's default since 3.0).
//!
//! As Kafka does for a producer without a transactional id, every call gets
//! a fresh producer id with epoch 0 from the controller's allocator on
//! shard 0; ids are reserved in blocks in the persisted metadata image and
//! never reused. Transactions are not supported yet.

use std::rc::Rc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use crate::shard::{ControlOp, ControlReply, Shard, ShardOp, ShardReply, CONTROLLER_SHARD};

pub async fn init_producer_id(shard: &Rc<Shard>, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if let Some(id) = req.transactional_id {
        tracing::warn!(transactional_id = %id.as_str(), "InitProducerId for a transactional producer refused: transactions are not supported");
        return response.with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code());
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
