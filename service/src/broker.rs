//! The broker for services: fire-and-forget publish/subscribe, on the
//! default client ([`crate::client::default`]); every function has a
//! `_with` variant taking an explicit [`Client`].
//!
//! ```no_run
//! # async fn f() -> Result<(), micro::Error> {
//! micro::broker::publish("health", &serde_json::json!({"ok": true})).header("from", "a").await?;
//! let mut sub = micro::broker::subscribe("health").queue("q").await?;
//! while let Some(msg) = sub.next().await {
//!     let ok: serde_json::Value = msg?.unmarshal()?;
//! }
//! # Ok(()) }
//! ```
//!
//! Nothing is stored: a message reaches the subscribers connected to a live
//! node when it is published, with no ordering promise. Subscribers in the
//! same queue share messages, each going to one of them. Use
//! [`crate::events`] for what must not be lost.
//!
//! Must never: promise delivery, order or storage it does not have.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;

use micro_proto::broker as wire;
use serde::{de::DeserializeOwned, Serialize};

use crate::client::{default, Client, Error};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

async fn pick(client: Option<&Client>) -> Result<Client, Error> {
    match client {
        Some(c) => Ok(c.clone()),
        None => Ok(default().await?.clone()),
    }
}

/// A message as a subscriber receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub header: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Message {
    /// The body decoded from JSON.
    pub fn unmarshal<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

/// A publish, sent when awaited.
#[must_use = "a publish is sent only when awaited"]
pub struct Publish<'a> {
    client: Option<&'a Client>,
    req: Result<wire::PublishRequest, Error>,
}

/// Publishes `value` as JSON to the subscribers of `topic`.
pub fn publish<T: Serialize + ?Sized>(topic: &str, value: &T) -> Publish<'static> {
    Publish::new(None, topic, serde_json::to_vec(value).map_err(Error::from))
}

/// [`publish`] through `client`.
pub fn publish_with<'a, T: Serialize + ?Sized>(
    client: &'a Client,
    topic: &str,
    value: &T,
) -> Publish<'a> {
    Publish::new(
        Some(client),
        topic,
        serde_json::to_vec(value).map_err(Error::from),
    )
}

/// Publishes raw bytes.
pub fn publish_bytes(topic: &str, body: impl Into<Vec<u8>>) -> Publish<'static> {
    Publish::new(None, topic, Ok(body.into()))
}

/// [`publish_bytes`] through `client`.
pub fn publish_bytes_with<'a>(
    client: &'a Client,
    topic: &str,
    body: impl Into<Vec<u8>>,
) -> Publish<'a> {
    Publish::new(Some(client), topic, Ok(body.into()))
}

impl<'a> Publish<'a> {
    fn new(client: Option<&'a Client>, topic: &str, body: Result<Vec<u8>, Error>) -> Self {
        Publish {
            client,
            req: body.map(|body| wire::PublishRequest {
                topic: topic.to_string(),
                body,
                ..Default::default()
            }),
        }
    }

    /// Adds a header entry.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        if let Ok(r) = &mut self.req {
            r.header.insert(key.into(), value.into());
        }
        self
    }
}

impl<'a> IntoFuture for Publish<'a> {
    type Output = Result<(), Error>;
    type IntoFuture = BoxFuture<'a, Result<(), Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let req = self.req?;
            pick(self.client).await?.broker().publish(req).await?;
            Ok(())
        })
    }
}

/// A subscription, started when awaited.
#[must_use = "a subscription starts only when awaited"]
pub struct Subscribe<'a> {
    client: Option<&'a Client>,
    req: wire::SubscribeRequest,
}

/// Subscribes to `topic`: every message published from now on.
pub fn subscribe(topic: &str) -> Subscribe<'static> {
    Subscribe::new(None, topic)
}

/// [`subscribe`] through `client`.
pub fn subscribe_with<'a>(client: &'a Client, topic: &str) -> Subscribe<'a> {
    Subscribe::new(Some(client), topic)
}

impl<'a> Subscribe<'a> {
    fn new(client: Option<&'a Client>, topic: &str) -> Self {
        Subscribe {
            client,
            req: wire::SubscribeRequest {
                topic: topic.to_string(),
                queue: String::new(),
            },
        }
    }

    /// Joins queue group `queue`: each message goes to one of its members.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.req.queue = queue.into();
        self
    }
}

impl<'a> IntoFuture for Subscribe<'a> {
    type Output = Result<Subscription, Error>;
    type IntoFuture = BoxFuture<'a, Result<Subscription, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let client = pick(self.client).await?;
            let inner = client.broker().subscribe(self.req).await?.into_inner();
            Ok(Subscription { inner })
        })
    }
}

/// The messages of a subscription.
pub struct Subscription {
    inner: tonic::Streaming<wire::Message>,
}

impl Subscription {
    /// The next message; `None` when the node ended the subscription.
    pub async fn next(&mut self) -> Option<Result<Message, Error>> {
        match self.inner.message().await {
            Ok(Some(m)) => Some(Ok(Message {
                topic: m.topic,
                header: m.header,
                body: m.body,
            })),
            Ok(None) => None,
            Err(s) => Some(Err(s.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_encodes_json_with_headers() {
        let r = publish("health", &serde_json::json!({"ok": true}))
            .header("from", "a")
            .req
            .unwrap();
        assert_eq!(r.topic, "health");
        assert_eq!(r.body, br#"{"ok":true}"#);
        assert_eq!(r.header.get("from").map(String::as_str), Some("a"));
        assert_eq!(publish_bytes("t", "raw").req.unwrap().body, b"raw");
    }

    #[test]
    fn queues_reach_the_wire() {
        assert_eq!(subscribe("t").req.queue, "");
        assert_eq!(subscribe("t").queue("q").req.queue, "q");
    }

    #[test]
    fn bodies_decode_from_json() {
        let m = Message {
            topic: "t".into(),
            header: HashMap::new(),
            body: b"[1,2]".to_vec(),
        };
        assert_eq!(m.unmarshal::<Vec<u32>>().unwrap(), [1, 2]);
        assert!(matches!(m.unmarshal::<String>(), Err(Error::Json(_))));
    }
}
