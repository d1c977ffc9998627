//! `micro events`: publish, consume, read; topics, info, create, delete.
//!
//! Events print as one JSON line each (see [`event_line`]). A consumer in a
//! group acks an event only after its line was written and flushed to
//! stdout.
//!
//! Must never: ack an event before its line reached stdout, ack with
//! `--manual-ack`, or send anything for a command line it refuses.

use std::io::Write;
use std::time::Duration;

use micro_proto::events::{
    AckRequest, ConsumeRequest, CreateRequest, DeleteRequest, Event, InfoRequest, PublishRequest,
    ReadRequest, Retention, TopicInfo, TopicsRequest,
};

use super::{columns, out, Context};
use crate::args::{ConsumeArgs, EventsArgs, EventsCommand, Order};
use crate::errors::Failure;

pub async fn run(ctx: Context, args: &EventsArgs) -> Result<(), Failure> {
    if let EventsCommand::Consume(c) = &args.command {
        // Refused before connecting: nothing is sent.
        let request = consume_request(c, now_millis())?;
        return consume(&ctx, c, request).await;
    }
    let client = ctx.connect().await?;
    let mut events = client.events();
    match &args.command {
        EventsCommand::Publish {
            topic,
            payload,
            metadata,
            id,
        } => {
            let resp = events
                .publish(PublishRequest {
                    topic: topic.clone(),
                    payload: payload.clone().into_bytes(),
                    metadata: metadata.iter().cloned().collect(),
                    id: id.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            if resp.duplicate {
                eprintln!(
                    "Duplicate: an event with id {} is stored already; nothing was published",
                    resp.id
                );
            }
            out(format!("{}\n", resp.seq).as_bytes())
        }
        EventsCommand::Read {
            topic,
            limit,
            offset,
            order,
        } => {
            let resp = events
                .read(ReadRequest {
                    topic: topic.clone(),
                    limit: limit.unwrap_or(0),
                    offset: offset.unwrap_or(0),
                    desc: *order == Order::Desc,
                })
                .await?
                .into_inner();
            let mut text = String::new();
            for e in &resp.events {
                text.push_str(&event_line(e, false));
                text.push('\n');
            }
            out(text.as_bytes())
        }
        EventsCommand::Topics => {
            let resp = events.topics(TopicsRequest {}).await?.into_inner();
            let mut text = String::new();
            for t in &resp.topics {
                text.push_str(t);
                text.push('\n');
            }
            out(text.as_bytes())
        }
        EventsCommand::Info { topic } => {
            let resp = events
                .info(InfoRequest {
                    topic: topic.clone(),
                })
                .await?
                .into_inner();
            let info = resp
                .info
                .ok_or_else(|| Failure::msg("The server sent no topic info"))?;
            out(info_table(&info).as_bytes())
        }
        EventsCommand::Create {
            topic,
            max_age,
            max_count,
            max_bytes,
        } => {
            let retention = Retention {
                max_age_ms: max_age.map(millis_of).unwrap_or(0),
                max_count: max_count.unwrap_or(0),
                max_bytes: max_bytes.unwrap_or(0),
            };
            let resp = events
                .create(CreateRequest {
                    topic: topic.clone(),
                    retention: Some(retention),
                })
                .await?
                .into_inner();
            match resp.info {
                Some(info) => out(info_table(&info).as_bytes()),
                None => Ok(()),
            }
        }
        EventsCommand::Delete { topic, group } => {
            events
                .delete(DeleteRequest {
                    topic: topic.clone(),
                    group: group.clone().unwrap_or_default(),
                })
                .await?;
            match group {
                Some(g) => out(format!("Group {g} of {topic} deleted\n").as_bytes()),
                None => out(format!("Topic {topic} deleted\n").as_bytes()),
            }
        }
        EventsCommand::Consume(_) => unreachable!("handled above"),
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The consume request for `c`, or the one line saying why the command
/// line is refused. `now` (unix ms) turns `--since` into a time.
fn consume_request(c: &ConsumeArgs, now: i64) -> Result<ConsumeRequest, Failure> {
    if c.group.is_none() {
        if c.manual_ack {
            return Err(Failure::msg(
                "--manual-ack needs --group: a stream without a group has nothing to ack",
            ));
        }
        if c.ack_wait.is_some() || c.max_deliver.is_some() {
            return Err(Failure::msg(
                "--ack-wait and --max-deliver apply to a group: add --group",
            ));
        }
    }
    let since = match c.since {
        // 0 on the wire means "no start given"; a window reaching back
        // before 1970 is every event, which is also what 1 ms asks for.
        Some(d) => now
            .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .max(1),
        None => 0,
    };
    Ok(ConsumeRequest {
        topic: c.topic.clone(),
        group: c.group.clone().unwrap_or_default(),
        from_seq: c.from.unwrap_or(0),
        since,
        new_only: c.new,
        ack_wait_ms: c.ack_wait.map(millis_of),
        max_deliver: c.max_deliver,
        max_in_flight: 0,
    })
}

/// Writes one line to stdout and flushes it; `false` when the reader is
/// gone (a closed pipe), so the caller stops without acking.
pub fn emit(line: &str) -> Result<bool, Failure> {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(line.as_bytes())
        .and_then(|_| stdout.write_all(b"\n"))
        .and_then(|_| stdout.flush());
    match written {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Failure::msg(format!("cannot write output: {e}"))),
    }
}

async fn consume(ctx: &Context, c: &ConsumeArgs, request: ConsumeRequest) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let mut events = client.events();
    let grouped = !request.group.is_empty();
    let auto_ack = grouped && !c.manual_ack;
    let (topic, group) = (request.topic.clone(), request.group.clone());
    let mut stream = events.consume(request).await?.into_inner();
    let mut seen = 0u64;
    while let Some(e) = stream.message().await? {
        if !emit(&event_line(&e, grouped))? {
            return Ok(());
        }
        if auto_ack {
            events
                .ack(AckRequest {
                    topic: topic.clone(),
                    group: group.clone(),
                    seqs: vec![e.seq],
                    nack: false,
                    delay_ms: 0,
                })
                .await?;
        }
        seen += 1;
        if c.count == Some(seen) {
            break;
        }
    }
    Ok(())
}

/// A payload as JSON: itself when it is JSON, else a string.
pub fn payload_json(bytes: &[u8]) -> serde_json::Value {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => v,
        Err(_) => serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()),
    }
}

/// A map as a JSON object with its keys in order.
pub fn map_json(map: &std::collections::HashMap<String, String>) -> serde_json::Value {
    let sorted: std::collections::BTreeMap<&String, &String> = map.iter().collect();
    serde_json::json!(sorted)
}

fn json(v: serde_json::Value) -> String {
    v.to_string()
}

/// One event as a JSON line (without the newline):
/// `{"id","topic","seq","timestamp","metadata","payload"}`, plus
/// `"deliveries"` for a group's stream, in that order.
pub fn event_line(e: &Event, grouped: bool) -> String {
    let mut line = format!(
        "{{\"id\":{},\"topic\":{},\"seq\":{},\"timestamp\":{},\"metadata\":{},\"payload\":{}",
        json(e.id.as_str().into()),
        json(e.topic.as_str().into()),
        e.seq,
        json(rfc3339(e.timestamp).into()),
        json(map_json(&e.metadata)),
        json(payload_json(&e.payload)),
    );
    if grouped {
        line.push_str(&format!(",\"deliveries\":{}", e.deliveries));
    }
    line.push('}');
    line
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds:
/// `2026-12-02T03:04:05.678Z`.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

/// Bytes in the largest unit that divides them exactly: `1G`, `512M`, `10`.
fn size(n: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// Milliseconds in the largest unit that divides them exactly: `7d`, `90s`.
fn duration(ms: u64) -> String {
    for (per, unit) in [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ] {
        if ms >= per && ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

fn retention(r: Option<&Retention>) -> String {
    let Some(r) = r else {
        return "none".into();
    };
    let mut parts = Vec::new();
    if r.max_age_ms > 0 {
        parts.push(format!("max age {}", duration(r.max_age_ms)));
    }
    if r.max_count > 0 {
        parts.push(format!("max count {}", r.max_count));
    }
    if r.max_bytes > 0 {
        parts.push(format!("max bytes {}", size(r.max_bytes)));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// A topic's info as two tables: the topic, then its groups.
pub fn info_table(info: &TopicInfo) -> String {
    let at = |seq: u64, ts: i64| {
        if seq == 0 {
            "-".to_string()
        } else {
            format!("{seq} at {}", rfc3339(ts))
        }
    };
    let s = |x: &str| x.to_string();
    let rows = vec![
        vec![s("Topic:"), info.topic.clone()],
        vec![s("Retention:"), retention(info.retention.as_ref())],
        vec![s("Events:"), info.count.to_string()],
        vec![s("Bytes:"), info.bytes.to_string()],
        vec![s("First:"), at(info.first_seq, info.first_timestamp)],
        vec![s("Last:"), at(info.last_seq, info.last_timestamp)],
    ];
    let mut text = columns(&rows);
    text.push('\n');
    if info.groups.is_empty() {
        text.push_str("No groups\n");
        return text;
    }
    let mut rows = vec![vec![
        s("GROUP"),
        s("ACK FLOOR"),
        s("PENDING"),
        s("ACKED"),
        s("LAG"),
        s("ACK WAIT"),
        s("MAX DELIVER"),
    ]];
    for g in &info.groups {
        rows.push(vec![
            g.name.clone(),
            g.ack_floor.to_string(),
            g.pending.to_string(),
            g.acked.to_string(),
            g.lag.to_string(),
            duration(g.ack_wait_ms),
            g.max_deliver.to_string(),
        ]);
    }
    text.push_str(&columns(&rows));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_proto::events::GroupInfo;

    fn args(a: &[&str]) -> ConsumeArgs {
        use clap::Parser;
        let mut argv = vec!["micro", "events", "consume"];
        argv.extend_from_slice(a);
        match crate::args::Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Some(crate::args::Command::Events(EventsArgs {
                command: EventsCommand::Consume(c),
            }))) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_644_645_678), "2025-12-02T03:04:05.678Z");
        assert_eq!(rfc3339(951_782_400_001), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn event_lines_embed_json_payloads_and_keep_text_as_strings() {
        let mut e = Event {
            id: "a".into(),
            topic: "t".into(),
            seq: 2,
            timestamp: 0,
            payload: br#"{"n":1}"#.to_vec(),
            deliveries: 3,
            ..Default::default()
        };
        e.metadata.insert("z".into(), "1".into());
        e.metadata.insert("k".into(), "v".into());
        assert_eq!(
            event_line(&e, false),
            r#"{"id":"a","topic":"t","seq":2,"timestamp":"1970-01-01T00:00:00.000Z","metadata":{"k":"v","z":"1"},"payload":{"n":1}}"#
        );
        e.payload = b"hello world".to_vec();
        let v: serde_json::Value = serde_json::from_str(&event_line(&e, true)).unwrap();
        assert_eq!(v["payload"], "hello world");
        assert_eq!(v["deliveries"], 3);
    }

    #[test]
    fn the_default_start_is_the_first_event_and_since_is_relative() {
        let r = consume_request(&args(&["t"]), 1_000_000).unwrap();
        assert_eq!((r.from_seq, r.since, r.new_only), (0, 0, false));
        let r = consume_request(&args(&["t", "--since", "10m"]), 1_000_000).unwrap();
        assert_eq!(r.since, 1_000_000 - 600_000);
        let r = consume_request(&args(&["t", "--since", "7d"]), 1_000).unwrap();
        assert_eq!(r.since, 1);
        let r = consume_request(
            &args(&[
                "t",
                "--group",
                "g",
                "--ack-wait",
                "2s",
                "--max-deliver",
                "3",
            ]),
            0,
        )
        .unwrap();
        assert_eq!((r.ack_wait_ms, r.max_deliver), (Some(2000), Some(3)));
        assert_eq!(r.group, "g");
    }

    #[test]
    fn group_only_flags_without_a_group_are_refused() {
        for a in [
            &["t", "--manual-ack"][..],
            &["t", "--ack-wait", "1s"],
            &["t", "--max-deliver", "2"],
        ] {
            assert!(consume_request(&args(a), 0).is_err(), "{a:?}");
        }
    }

    #[test]
    fn info_shows_retention_sequences_and_groups() {
        let info = TopicInfo {
            topic: "orders".into(),
            retention: Some(Retention {
                max_age_ms: 7 * 86_400_000,
                max_count: 0,
                max_bytes: 1 << 30,
            }),
            count: 2,
            bytes: 30,
            first_seq: 1,
            last_seq: 2,
            first_timestamp: 0,
            last_timestamp: 1000,
            groups: vec![GroupInfo {
                name: "billing".into(),
                ack_floor: 1,
                pending: 1,
                acked: 0,
                lag: 1,
                ack_wait_ms: 30_000,
                max_deliver: 10,
            }],
        };
        let t = info_table(&info);
        assert!(t.contains("Retention:  max age 7d, max bytes 1G\n"), "{t}");
        assert!(
            t.contains("First:      1 at 1970-01-01T00:00:00.000Z\n"),
            "{t}"
        );
        assert!(t.contains("GROUP    ACK FLOOR"), "{t}");
        assert!(
            t.contains("billing  1          1        0      1    30s"),
            "{t}"
        );
        let empty = info_table(&TopicInfo::default());
        assert!(empty.contains("Retention:  none\n") && empty.contains("First:      -\n"));
        assert!(empty.ends_with("No groups\n"));
    }
}
