//! `micro events` and `micro broker` as a user meets them: publish prints
//! the sequence, read and consume print JSON lines, topics and info show
//! the topic, groups resume where they left off, bad command lines get
//! one line and send nothing; and the chat example, built and run like a
//! user's service, keeps a room's history in a topic.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{http_send, wait_for_nodes, Run, Server, MICRO};

/// A CLI process running in the background, killed if a failed test
/// leaves it running.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

impl Bg {
    fn exited(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(Some(_)))
    }
}

/// Starts `micro ARGS` against `s` without waiting for it.
fn spawn_micro(s: &Server, args: &[&str]) -> Bg {
    let mut cmd = Command::new(MICRO);
    cmd.args(args)
        .env("HOME", s.home.path())
        .current_dir(s.home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("MICRO_") {
            cmd.env_remove(k);
        }
    }
    Bg(cmd.spawn().expect("start micro"))
}

/// Waits up to `secs` for `child` to exit (killing it after that, with
/// code -1) and returns what it printed.
fn finish(mut bg: Bg, secs: u64) -> Run {
    let child = &mut bg.0;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait for micro") {
            break status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut stdout).ok();
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr).ok();
    }
    Run {
        stdout,
        stderr,
        code,
        server_log: None,
    }
}

/// `micro ARGS`, given at most `secs` to finish.
fn timed(s: &Server, secs: u64, args: &[&str]) -> Run {
    finish(spawn_micro(s, args), secs)
}

/// Every stdout line as JSON.
fn json_lines(run: &Run) -> Vec<serde_json::Value> {
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn seqs(events: &[serde_json::Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

/// `2026-12-02T03:04:05.678Z`
fn is_rfc3339_ms(t: &str) -> bool {
    let b = t.as_bytes();
    t.len() == 24
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && t.ends_with('Z')
        && t[..4].parse::<u32>().is_ok_and(|y| y >= 2024)
}

#[test]
fn events_cli_publish_read_topics_info() {
    let s = Server::start();
    assert_eq!(
        s.micro(&["events", "publish", "orders", r#"{"n":1}"#]).ok(),
        "1\n"
    );
    assert_eq!(
        s.micro(&[
            "events",
            "publish",
            "orders",
            r#"{"n":2}"#,
            "--metadata",
            "k=v"
        ])
        .ok(),
        "2\n"
    );

    let read = s.micro(&["events", "read", "orders"]);
    let events = json_lines(&read);
    assert_eq!(seqs(&events), [1, 2], "{read:?}");
    assert_eq!(events[0]["payload"], serde_json::json!({"n": 1}));
    assert_eq!(events[1]["payload"]["n"], 2);
    assert_eq!(events[1]["metadata"], serde_json::json!({"k": "v"}));
    assert_eq!(events[0]["topic"], "orders");
    assert!(events[0]["id"].as_str().is_some_and(|i| !i.is_empty()));
    let t = events[0]["timestamp"].as_str().unwrap();
    assert!(is_rfc3339_ms(t), "{t}");
    // No group: no deliveries field.
    assert!(events[0].get("deliveries").is_none(), "{read:?}");

    let desc = json_lines(&s.micro(&["events", "read", "orders", "--order", "desc"]));
    assert_eq!(seqs(&desc), [2, 1]);
    let page = json_lines(&s.micro(&["events", "read", "orders", "--offset", "2", "--limit", "1"]));
    assert_eq!(seqs(&page), [2]);

    // A message id stored twice is one event; the second publish prints
    // the first one's sequence and says so on stderr.
    let first = s.micro(&["events", "publish", "orders", "text", "--id", "order-3"]);
    assert_eq!(first.ok(), "3\n");
    assert_eq!(first.stderr, "");
    let again = s.micro(&["events", "publish", "orders", "other", "--id", "order-3"]);
    assert_eq!(again.ok(), "3\n");
    assert!(again.stderr.contains("Duplicate"), "{again:?}");
    let all = json_lines(&s.micro(&["events", "read", "orders"]));
    assert_eq!(seqs(&all), [1, 2, 3]);
    // Text that is not JSON is a string.
    assert_eq!(all[2]["payload"], "text");
    assert_eq!(all[2]["id"], "order-3");

    assert_eq!(s.micro(&["events", "topics"]).ok(), "orders\n");
    let info = s.micro(&["events", "info", "orders"]);
    let text = info.ok();
    assert!(text.contains("Topic:      orders\n"), "{text}");
    assert!(text.contains("Events:     3\n"), "{text}");
    assert!(text.contains("Retention:  none\n"), "{text}");
    assert!(text.contains("First:      1 at "), "{text}");
    assert!(text.contains("Last:       3 at "), "{text}");
}

#[test]
fn events_cli_consume_starts_groups_and_count() {
    let s = Server::start();
    for n in 1..=3 {
        let payload = format!(r#"{{"n":{n}}}"#);
        assert_eq!(
            s.micro(&["events", "publish", "jobs", &payload]).ok(),
            format!("{n}\n")
        );
    }
    // The default start is the first stored event.
    let run = timed(&s, 30, &["events", "consume", "jobs", "--count", "2"]);
    let events = json_lines(&run);
    assert_eq!((run.code, seqs(&events)), (0, vec![1, 2]), "{run:?}");
    assert_eq!(events[0]["payload"]["n"], 1);
    let run = timed(
        &s,
        30,
        &["events", "consume", "jobs", "--from", "3", "--count", "1"],
    );
    assert_eq!(seqs(&json_lines(&run)), [3], "{run:?}");
    let run = timed(
        &s,
        30,
        &["events", "consume", "jobs", "--since", "1h", "--count", "1"],
    );
    assert_eq!(seqs(&json_lines(&run)), [1], "{run:?}");

    // A group member acks what it printed: the group resumes after it.
    let run = timed(
        &s,
        30,
        &[
            "events", "consume", "jobs", "--group", "billing", "--count", "3",
        ],
    );
    let events = json_lines(&run);
    assert_eq!(seqs(&events), [1, 2, 3], "{run:?}");
    assert_eq!(events[0]["deliveries"], 1);
    assert_eq!(s.micro(&["events", "publish", "jobs", "four"]).ok(), "4\n");
    let run = timed(
        &s,
        30,
        &[
            "events", "consume", "jobs", "--group", "billing", "--count", "1",
        ],
    );
    assert_eq!(seqs(&json_lines(&run)), [4], "{run:?}");

    // --manual-ack acks nothing: the event comes back after the ack wait.
    let run = timed(
        &s,
        30,
        &[
            "events",
            "consume",
            "jobs",
            "--group",
            "audit",
            "--manual-ack",
            "--ack-wait",
            "1s",
            "--count",
            "1",
        ],
    );
    let events = json_lines(&run);
    assert_eq!(
        (seqs(&events), &events[0]["deliveries"]),
        (vec![1], &serde_json::json!(1))
    );
    let run = timed(
        &s,
        30,
        &[
            "events", "consume", "jobs", "--group", "audit", "--count", "1",
        ],
    );
    let events = json_lines(&run);
    assert_eq!(seqs(&events), [1], "{run:?}");
    assert_eq!(events[0]["deliveries"], 2, "{run:?}");

    // --new: only what is published after the consumer started.
    let consumer = spawn_micro(&s, &["events", "consume", "jobs", "--new", "--count", "1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut consumer = Some(consumer);
    let mut run = None;
    while Instant::now() < deadline {
        s.micro(&["events", "publish", "jobs", "late"]).ok();
        if consumer.as_mut().is_some_and(Bg::exited) {
            run = Some(finish(consumer.take().unwrap(), 1));
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let run = run.unwrap_or_else(|| finish(consumer.take().unwrap(), 0));
    let events = json_lines(&run);
    assert_eq!(events.len(), 1, "{run:?}");
    assert!(seqs(&events)[0] > 4, "{run:?}");
    assert_eq!(events[0]["payload"], "late");

    let info = s.micro(&["events", "info", "jobs"]);
    let text = info.ok();
    assert!(text.contains("GROUP"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("billing  ")), "{text}");
}

#[test]
fn broker_cli_publish_subscribe() {
    let s = Server::start();
    let sub = spawn_micro(&s, &["broker", "subscribe", "health", "--count", "1"]);
    // Nothing is stored: publish until the subscriber (once connected) got one.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sub = Some(sub);
    let mut run = None;
    while Instant::now() < deadline {
        let p = timed(
            &s,
            10,
            &[
                "broker",
                "publish",
                "health",
                r#"{"ok":true}"#,
                "--header",
                "k=v",
            ],
        );
        assert_eq!(p.code, 0, "{p:?}");
        if sub.as_mut().is_some_and(Bg::exited) {
            run = Some(finish(sub.take().unwrap(), 1));
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let run = run.unwrap_or_else(|| finish(sub.take().unwrap(), 0));
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "{\"topic\":\"health\",\"header\":{\"k\":\"v\"},\"body\":{\"ok\":true}}\n"
    );
}

#[test]
fn events_cli_bad_input_gets_one_line_and_sends_nothing() {
    let s = Server::start();
    let cases: &[(&[&str], &str)] = &[
        (
            &["events", "consume", "t", "--from", "1", "--new"],
            "The argument '--from <SEQ>' cannot be used with '--new'. Please refer to 'micro events consume --help'",
        ),
        (
            &["events", "consume", "t", "--since", "10x"],
            "Invalid value '10x' for '--since <DURATION>': invalid duration '10x': use a number and a unit (ms, s, m, h, d), like 10s or 1h30m. Please refer to 'micro events consume --help'",
        ),
        (
            &["events", "consume", "t", "--group", "g", "--ack-wait", "0"],
            "Invalid value '0' for '--ack-wait <DURATION>': the ack wait must be at least 1ms. Please refer to 'micro events consume --help'",
        ),
        (
            &["events", "consume", "t", "--group", "g", "--max-deliver", "0"],
            "Invalid value '0' for '--max-deliver <N>': an event is delivered at least once: use a whole number from 1 up. Please refer to 'micro events consume --help'",
        ),
        (
            &["events", "consume", "t", "--manual-ack"],
            "--manual-ack needs --group: a stream without a group has nothing to ack",
        ),
        (
            &["events", "consume", "t", "--ack-wait", "5s"],
            "--ack-wait and --max-deliver apply to a group: add --group",
        ),
        (
            &["events", "consume", "t", "--bogus"],
            "Unknown flag: --bogus. Please refer to 'micro events consume --help'",
        ),
        (
            &["events", "publish", "t", "x", "--metadata", "nokey"],
            "Invalid value 'nokey' for '--metadata <KEY=VALUE>': 'nokey' is not KEY=VALUE. Please refer to 'micro events publish --help'",
        ),
        (
            &["events", "publish", "t", "x", "--retention", "1d"],
            "Unknown flag: --retention. Please refer to 'micro events publish --help'",
        ),
        (
            &["events", "create", "t", "--max-bytes", "1Q"],
            "Invalid value '1Q' for '--max-bytes <SIZE>': invalid size '1Q': use a number and a unit (K, M, G), like 512M or 1G. Please refer to 'micro events create --help'",
        ),
        (
            &["events", "create", "t", "--max-age", "7y"],
            "Invalid value '7y' for '--max-age <DURATION>': invalid duration '7y': use a number and a unit (ms, s, m, h, d), like 10s or 1h30m. Please refer to 'micro events create --help'",
        ),
        (
            &["broker", "subscribe", "t", "--bogus"],
            "Unknown flag: --bogus. Please refer to 'micro broker subscribe --help'",
        ),
    ];
    for (args, message) in cases {
        timed(&s, 20, args).fails_with(message);
    }
    // Nothing reached the server: no topic exists.
    assert_eq!(s.micro(&["events", "topics"]).ok(), "");
    s.micro(&["events", "read", "t"]).fails_with("Not found");
    // The server's own refusals are one line too.
    s.micro(&["events", "publish", "bad/topic", "x"])
        .fails_with(
            "Topic 'bad/topic' is not allowed: use letters, digits, '-', '_' and '.' (at most 128)",
        );
}

/// A running chat service, stopped when dropped.
struct Chat(Child);

impl Drop for Chat {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

#[test]
fn chat_example_sends_and_replays_history() {
    let s = Server::start();
    let log = s.home.path().join("chat.log");
    let _chat = Chat(
        Command::new(crate::harness::example_bin("chat"))
            .env("MICRO_PROXY_ADDRESS", &s.proxy)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::create(s.home.path().join("chat.err")).unwrap(),
            ))
            .spawn()
            .expect("start chat"),
    );
    wait_for_nodes(&s, "chat", 1);

    let sent = s.micro(&[
        "call",
        "chat",
        "Chat.Send",
        r#"{"room":"general","user":"ann","text":"hi"}"#,
    ]);
    let v: serde_json::Value = serde_json::from_str(sent.ok()).unwrap();
    assert_eq!(v["seq"], "1", "{sent:?}");
    // Through the gateway too.
    let (status, body) = http_send(
        &s.api,
        "POST",
        "/chat/Send",
        &[("Content-Type", "application/json")],
        br#"{"room":"general","user":"bob","text":"hey"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["seq"], "2", "{body}");

    let history = s.micro(&["call", "chat", "Chat.History", r#"{"room":"general"}"#]);
    let v: serde_json::Value = serde_json::from_str(history.ok()).unwrap();
    let said: Vec<(&str, &str, &str)> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["seq"].as_str().unwrap(),
                m["user"].as_str().unwrap(),
                m["text"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        said,
        [("1", "ann", "hi"), ("2", "bob", "hey")],
        "{history:?}"
    );
    // The last one only, still in order of sending.
    let (status, body) = http_send(
        &s.api,
        "POST",
        "/chat/History",
        &[("Content-Type", "application/json")],
        br#"{"room":"general","limit":1}"#,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["messages"][0]["text"], "hey", "{body}");
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(1), "{body}");

    // The room is a topic any consumer can read.
    let events = json_lines(&s.micro(&["events", "read", "chat-general"]));
    assert_eq!(seqs(&events), [1, 2]);
    assert_eq!(
        events[0]["payload"],
        serde_json::json!({"user": "ann", "text": "hi"})
    );
    // A room nobody wrote to is empty, and a bad room is the service's error.
    let empty = s.micro(&["call", "chat", "Chat.History", r#"{"room":"quiet"}"#]);
    let v: serde_json::Value = serde_json::from_str(empty.ok()).unwrap();
    assert_eq!(v["messages"], serde_json::json!([]));
    s.micro(&[
        "call",
        "chat",
        "Chat.Send",
        r#"{"room":"a b","user":"x","text":"y"}"#,
    ])
    .fails_with("a room is 1 to 64 letters, digits, '-' or '_'");
}

/// The framework's consumer, against a real node: auto-ack acks an event
/// when the next one is asked for, a dropped stream acks nothing (the event
/// comes back), manual ack and nack do what they say, and `handler` acks
/// after `Ok` and nacks after `Err`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_consume_acks_after_the_caller_is_done() {
    use micro::events;
    let s = Server::start();
    let client = s.client("micro").await;
    for n in 1..=3u32 {
        let seq = events::publish_with(&client, "work", &serde_json::json!({ "n": n }))
            .metadata("k", "v")
            .await
            .unwrap();
        assert_eq!(seq, u64::from(n));
    }
    let dup = events::publish_bytes_with(&client, "work", "x")
        .id("once")
        .receipt()
        .await
        .unwrap();
    let again = events::publish_bytes_with(&client, "work", "y")
        .id("once")
        .receipt()
        .await
        .unwrap();
    assert_eq!(
        (dup.seq, dup.duplicate, again.seq, again.duplicate),
        (4, false, 4, true)
    );

    let wait = Duration::from_millis(1500);
    let open = |group: &'static str| {
        events::consume_with(&client, "work")
            .group(group)
            .ack_wait(wait)
    };
    // Auto-ack: 1 is acked when 2 is asked for; 2 is dropped unacked.
    let mut stream = open("auto").await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!((first.seq, first.deliveries), (1, 1));
    assert_eq!(first.metadata.get("k").map(String::as_str), Some("v"));
    let v: serde_json::Value = first.unmarshal().unwrap();
    assert_eq!(v["n"], 1);
    let second = stream.next().await.unwrap().unwrap();
    assert_eq!(second.seq, 2);
    drop(stream);
    // After the ack wait 2 comes back (1 does not), delivered a second time.
    let mut stream = open("auto").await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("the unacked event came back")
        .unwrap()
        .unwrap();
    assert_eq!((back.seq, back.deliveries), (2, 2));
    stream.close().await.unwrap();

    // Manual ack: nack_after redelivers, ack does not.
    let mut stream = open("manual").manual_ack().await.unwrap();
    let one = stream.next().await.unwrap().unwrap();
    one.ack().await.unwrap();
    let two = stream.next().await.unwrap().unwrap();
    assert_eq!(two.seq, 2);
    two.nack_after(Duration::from_millis(200)).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("events keep coming")
            .unwrap()
            .unwrap();
        seen.push((ev.seq, ev.deliveries));
        ev.ack().await.unwrap();
    }
    seen.sort();
    assert_eq!(seen, [(2, 2), (3, 1), (4, 1)]);
    drop(stream);

    // handler: Err nacks (delivered again at once), Ok acks.
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = calls.clone();
    let run = events::consume_with(&client, "work")
        .group("handled")
        .handler(move |ev| {
            let log = log.clone();
            async move {
                let mut log = log.lock().unwrap();
                log.push((ev.seq, ev.deliveries));
                if ev.seq == 1 && ev.deliveries == 1 {
                    return Err("not yet");
                }
                Ok(())
            }
        });
    let _ = tokio::time::timeout(Duration::from_secs(5), run).await;
    let calls = calls.lock().unwrap().clone();
    assert!(
        calls.contains(&(1, 1)) && calls.contains(&(1, 2)),
        "{calls:?}"
    );
    assert_eq!(calls.iter().filter(|c| c.0 == 2).count(), 1, "{calls:?}");

    // Read through the framework, newest first.
    let last = events::read_with(&client, "work")
        .limit(2)
        .desc()
        .await
        .unwrap();
    assert_eq!(last.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 3]);
    // A consumer the framework knows is wrong is refused before sending.
    assert!(matches!(
        events::consume_with(&client, "work").manual_ack().await,
        Err(micro::Error::Invalid(_))
    ));
}

/// The framework's broker against a real node: a subscriber (in a queue)
/// gets what is published while it is connected, headers and JSON body
/// intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_broker_publish_subscribe() {
    use micro::broker;
    let s = Server::start();
    let client = s.client("micro").await;
    // Nothing is stored: publish until the subscription (once registered)
    // receives one.
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        let mut sub = broker::subscribe_with(&client, "health")
            .queue("q")
            .await
            .unwrap();
        let publisher = client.clone();
        let pump = tokio::spawn(async move {
            loop {
                broker::publish_with(&publisher, "health", &serde_json::json!({"ok": true}))
                    .header("from", "test")
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let msg = sub.next().await;
        pump.abort();
        msg
    })
    .await
    .expect("a message arrived")
    .expect("the subscription is open")
    .unwrap();
    assert_eq!(got.topic, "health");
    assert_eq!(got.header.get("from").map(String::as_str), Some("test"));
    let body: serde_json::Value = got.unmarshal().unwrap();
    assert_eq!(body, serde_json::json!({"ok": true}));
}
