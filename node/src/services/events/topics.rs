//! Topics: publish, read, list, info, create, delete, and retention.
//! (Contract skeleton: filled in by the events-core work.)

use micro_proto::events::*;
use std::sync::Arc;
use tonic::Status;

use super::Events;

/// The topic index and retention state of this node.
pub struct Topics {}

impl Topics {
    pub fn new() -> Self {
        Topics {}
    }
}

impl Default for Topics {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts the topic index follower and the leader's retention task.
pub fn spawn(_events: &Arc<Events>) {}

pub async fn publish(
    _ev: &Events,
    _ns: &str,
    _req: PublishRequest,
) -> Result<PublishResponse, Status> {
    Err(Status::unimplemented("events publish is not built yet"))
}

pub async fn read(_ev: &Events, _ns: &str, _req: ReadRequest) -> Result<ReadResponse, Status> {
    Err(Status::unimplemented("events read is not built yet"))
}

pub async fn topics(_ev: &Events, _ns: &str) -> Result<TopicsResponse, Status> {
    Err(Status::unimplemented("events topics is not built yet"))
}

pub async fn info(_ev: &Events, _ns: &str, _req: InfoRequest) -> Result<InfoResponse, Status> {
    Err(Status::unimplemented("events info is not built yet"))
}

pub async fn create(
    _ev: &Events,
    _ns: &str,
    _req: CreateRequest,
) -> Result<CreateResponse, Status> {
    Err(Status::unimplemented("events create is not built yet"))
}

pub async fn delete(_ev: &Events, _ns: &str, _topic: &str) -> Result<(), Status> {
    Err(Status::unimplemented("events delete is not built yet"))
}
