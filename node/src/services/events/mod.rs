//! The Events service: an ordered, persisted stream per topic, replicated
//! through Raft, with durable consumer groups.
//!
//! * [`keys`]: where every record lives in the replicated key space.
//! * [`topics`]: publish (with dedup by message id), read, topics, info,
//!   create and delete, and retention, which the leader enforces by
//!   proposing deletes of the oldest events.
//! * [`groups`]: consumption. A stream without a group follows the log as
//!   this node applies it. A group's progress (floor, acks, claims) is
//!   replicated: a node claims events for its local members in one
//!   conditional transaction, delivers them, and batches their acks.
//!
//! Apply stays deterministic: timestamps, dedup windows and claim
//! deadlines are carried in the entries, never read from the applying
//! node's clock.
//!
//! Must never: acknowledge a publish before it committed, deliver an event
//! to a group member before its claim committed, or skip history when no
//! start is given.

pub mod groups;
pub mod topics;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use micro_proto::events::events_server;
use micro_proto::events::*;
use micro_raft::{NodeId, Replica};
use tonic::{Request, Response, Status};

use crate::grpc::namespace;

/// What the events service shares between its parts and its tasks.
pub struct Events {
    pub replica: Replica,
    /// This node's id (claims record who delivered).
    pub node: NodeId,
    pub topics: topics::Topics,
    pub groups: groups::Groups,
}

impl Events {
    /// The service's state, with its background tasks started: the topic
    /// index and retention, and the group dispatchers and floor keeper.
    pub fn start(replica: Replica, node: NodeId) -> Arc<Events> {
        let events = Arc::new(Events {
            topics: topics::Topics::new(),
            groups: groups::Groups::new(),
            replica,
            node,
        });
        topics::spawn(&events);
        groups::spawn(&events);
        events
    }
}

/// The gRPC face of [`Events`].
pub struct EventsService {
    events: Arc<Events>,
}

impl EventsService {
    pub fn new(events: Arc<Events>) -> Self {
        EventsService { events }
    }
}

/// A consumer's stream of events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl events_server::Events for EventsService {
    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let ns = namespace(&req)?;
        topics::publish(&self.events, &ns, req.into_inner())
            .await
            .map(Response::new)
    }

    type ConsumeStream = EventStream;

    async fn consume(&self, req: Request<ConsumeRequest>) -> Result<Response<EventStream>, Status> {
        let ns = namespace(&req)?;
        groups::consume(&self.events, ns, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn ack(&self, req: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let ns = namespace(&req)?;
        groups::ack(&self.events, &ns, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let ns = namespace(&req)?;
        topics::read(&self.events, &ns, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn topics(
        &self,
        req: Request<TopicsRequest>,
    ) -> Result<Response<TopicsResponse>, Status> {
        let ns = namespace(&req)?;
        topics::topics(&self.events, &ns).await.map(Response::new)
    }

    async fn info(&self, req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let ns = namespace(&req)?;
        topics::info(&self.events, &ns, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn create(
        &self,
        req: Request<CreateRequest>,
    ) -> Result<Response<CreateResponse>, Status> {
        let ns = namespace(&req)?;
        topics::create(&self.events, &ns, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        if r.group.is_empty() {
            topics::delete(&self.events, &ns, &r.topic).await?;
        } else {
            groups::delete_group(&self.events, &ns, &r.topic, &r.group).await?;
        }
        Ok(Response::new(DeleteResponse {}))
    }
}
