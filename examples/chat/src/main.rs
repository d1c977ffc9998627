//! chat: a Micro service on events. `Send` publishes a message to its
//! room's topic (`chat-<room>`) and replies with the message's sequence,
//! once it is committed; `History` replays a room's last messages with
//! `read`, oldest first. Any consumer can follow a room live:
//! `micro events consume chat-<room>`.

use micro::errors;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

mod proto {
    tonic::include_proto!("chat");
}

use proto::chat_server::ChatServer;
use proto::{HistoryRequest, HistoryResponse, Message, SendRequest, SendResponse};

const NAME: &str = "chat";

/// What is stored in a room's topic for each message.
#[derive(Serialize, Deserialize)]
struct Posted {
    user: String,
    text: String,
}

/// The topic of a room, or why the room name is refused.
fn topic(room: &str) -> Result<String, Status> {
    let ok = !room.is_empty()
        && room.len() <= 64
        && room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(
            errors::bad_request(NAME, "a room is 1 to 64 letters, digits, '-' or '_'").into(),
        );
    }
    Ok(format!("chat-{room}"))
}

/// An error of the events service, as this service's.
fn failed(e: micro::Error) -> Status {
    match e {
        micro::Error::Status(s) => errors::Error::from_status(NAME, &s).into(),
        other => errors::internal_server_error(NAME, other.to_string()).into(),
    }
}

/// The service's handlers.
struct Handlers;

#[tonic::async_trait]
impl proto::chat_server::Chat for Handlers {
    async fn send(&self, req: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let req = req.into_inner();
        let topic = topic(&req.room)?;
        if req.user.is_empty() || req.text.is_empty() {
            return Err(errors::bad_request(NAME, "a message needs a user and a text").into());
        }
        let posted = Posted {
            user: req.user,
            text: req.text,
        };
        let seq = micro::events::publish(&topic, &posted)
            .metadata("user", posted.user.as_str())
            .await
            .map_err(failed)?;
        Ok(Response::new(SendResponse { seq }))
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let req = req.into_inner();
        let topic = topic(&req.room)?;
        if req.limit > 1000 {
            return Err(errors::bad_request(NAME, "the limit is at most 1000").into());
        }
        // The last `limit` messages: newest first from the end, then turned
        // around so the reply reads in the order they were sent.
        let events = match micro::events::read(&topic).limit(req.limit).desc().await {
            Ok(events) => events,
            // A room nobody wrote to yet has no topic.
            Err(micro::Error::Status(s)) if s.code() == tonic::Code::NotFound => Vec::new(),
            Err(e) => return Err(failed(e)),
        };
        let mut messages = Vec::with_capacity(events.len());
        for ev in events.iter().rev() {
            // Anything else published to the topic is not a chat message.
            if let Ok(p) = ev.unmarshal::<Posted>() {
                messages.push(Message {
                    seq: ev.seq,
                    user: p.user,
                    text: p.text,
                    timestamp: ev.timestamp_millis(),
                });
            }
        }
        Ok(Response::new(HistoryResponse { messages }))
    }
}

#[tokio::main]
async fn main() {
    println!("Starting chat");
    let service = micro::Service::new(NAME)
        .descriptor(micro::include_descriptor!())
        .handle(ChatServer::new(Handlers));
    if let Err(e) = service.run().await {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_map_to_topics_and_bad_names_are_refused() {
        assert_eq!(topic("general").unwrap(), "chat-general");
        assert_eq!(topic("a_b-1").unwrap(), "chat-a_b-1");
        for bad in ["", "a b", "x/y", "é", &"r".repeat(65)] {
            assert_eq!(
                topic(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }
}
