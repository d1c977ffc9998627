//! `micro broker`: publish a message, or print a topic's messages as they
//! arrive (one JSON line each: `{"topic","header","body"}`).
//!
//! Must never: suggest anything was stored; the broker keeps nothing.

use micro_proto::broker::{Message, PublishRequest, SubscribeRequest};

use super::events::{emit, map_json, payload_json};
use super::Context;
use crate::args::{BrokerArgs, BrokerCommand};
use crate::errors::Failure;

/// One message as a JSON line (without the newline); the body embedded as
/// JSON when it is JSON, else a string.
pub fn message_line(m: &Message) -> String {
    format!(
        "{{\"topic\":{},\"header\":{},\"body\":{}}}",
        serde_json::Value::from(m.topic.as_str()),
        map_json(&m.header),
        payload_json(&m.body)
    )
}

pub async fn run(ctx: Context, args: &BrokerArgs) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let mut broker = client.broker();
    match &args.command {
        BrokerCommand::Publish {
            topic,
            body,
            header,
        } => {
            broker
                .publish(PublishRequest {
                    topic: topic.clone(),
                    header: header.iter().cloned().collect(),
                    body: body.clone().into_bytes(),
                })
                .await?;
            Ok(())
        }
        BrokerCommand::Subscribe {
            topic,
            queue,
            count,
        } => {
            let mut stream = broker
                .subscribe(SubscribeRequest {
                    topic: topic.clone(),
                    queue: queue.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            let mut seen = 0u64;
            while let Some(m) = stream.message().await? {
                if !emit(&message_line(&m))? {
                    return Ok(());
                }
                seen += 1;
                if *count == Some(seen) {
                    break;
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_print_as_json_lines() {
        let mut m = Message {
            topic: "health".into(),
            body: br#"{"ok":true}"#.to_vec(),
            ..Default::default()
        };
        m.header.insert("k".into(), "v".into());
        assert_eq!(
            message_line(&m),
            r#"{"topic":"health","header":{"k":"v"},"body":{"ok":true}}"#
        );
        m.body = b"plain".to_vec();
        assert!(message_line(&m).ends_with(r#""body":"plain"}"#));
    }
}
