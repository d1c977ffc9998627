//! Consumption: streams without a group, and durable consumer groups.
//! (Contract skeleton: filled in by the consumer-groups work.)

use micro_proto::events::*;
use std::sync::Arc;
use tonic::Status;

use super::{EventStream, Events};

/// The group dispatchers of this node.
pub struct Groups {}

impl Groups {
    pub fn new() -> Self {
        Groups {}
    }
}

impl Default for Groups {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts the change-stream follower that wakes dispatchers, and the
/// leader's floor keeper.
pub fn spawn(_events: &Arc<Events>) {}

pub async fn consume(
    _ev: &Arc<Events>,
    _ns: String,
    _req: ConsumeRequest,
) -> Result<EventStream, Status> {
    Err(Status::unimplemented("events consume is not built yet"))
}

pub async fn ack(_ev: &Events, _ns: &str, _req: AckRequest) -> Result<AckResponse, Status> {
    Err(Status::unimplemented("events ack is not built yet"))
}

/// The groups of a topic, for Info.
pub fn group_infos(_ev: &Events, _ns: &str, _topic: &str) -> Result<Vec<GroupInfo>, Status> {
    Ok(Vec::new())
}

pub async fn delete_group(
    _ev: &Events,
    _ns: &str,
    _topic: &str,
    _group: &str,
) -> Result<(), Status> {
    Err(Status::unimplemented(
        "events delete group is not built yet",
    ))
}
