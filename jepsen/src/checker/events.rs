//! The checks of the events workload, on the publishes in the history, the
//! consumers' log and the topic read on every node after healing.
//!
//! * `unverified`: a node's final read of the topic, or the final drain of
//!   the group, failed.
//! * `divergence`: the nodes' final topics differ.
//! * `lost-write`: an acknowledged publish is not in the topic at the
//!   sequence its reply gave, with its payload; or an event of the topic
//!   never reached the group (no member acked it, no ack of it had an
//!   unknown outcome, and the final drain did not get it).
//! * `duplicate`: one payload stored at two sequences (a publish applied
//!   twice).
//! * `phantom` / `failed-seen`: a stored payload no one published, or one
//!   whose publish failed with a definite error.
//! * `incompatible-order`: a consumer got an event other than the one
//!   stored at its sequence; or a plain stream did not get the sequences
//!   from its start one after another, each once, in order.
//! * `double-delivery`: two deliveries of one event to the group with the
//!   same delivery count: one claim handed out twice, so two members held
//!   it at once.
//! * `redelivered`: the final drain got an event whose ack had succeeded
//!   before the drain started.
//!
//! Sound: each of these is impossible for a correct implementation, whatever
//! the faults and timings.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{Check, Violation};
use crate::events::{Ack, Delivery, Finals, Stream, DRAIN};
use crate::history::{Kind, Op, Outcome};

/// Counts for the report.
#[derive(Default, Debug)]
pub struct EventNotes {
    pub stored: usize,
    pub group_deliveries: usize,
    pub redeliveries: usize,
    pub plain_deliveries: usize,
    pub acks_ok: usize,
    pub acks_other: usize,
    pub drained: usize,
}

fn violation(check: Check, what: String, ops: Vec<Op>) -> Violation {
    Violation { check, what, ops }
}

/// Runs the checks.
pub fn check(
    history: &[Op],
    deliveries: &[Delivery],
    acks: &[Ack],
    streams: &[Stream],
    finals: &Finals,
) -> (Vec<Violation>, EventNotes) {
    let mut out = Vec::new();
    let mut notes = EventNotes::default();
    let publishes: Vec<&Op> = history.iter().filter(|o| o.kind == Kind::Publish).collect();
    if publishes.is_empty() && deliveries.is_empty() {
        return (out, notes);
    }

    let mut reference: Option<(usize, &BTreeMap<u64, String>)> = None;
    for (node, log) in &finals.logs {
        match log {
            Err(e) => out.push(violation(
                Check::Unverified,
                format!("the topic could not be read on n{node} after healing: {e}"),
                Vec::new(),
            )),
            Ok(log) => match reference {
                None => reference = Some((*node, log)),
                Some((first, r)) if r != log => {
                    let at = r
                        .iter()
                        .zip(log.iter())
                        .find(|(a, b)| a != b)
                        .map(|(a, _)| *a.0)
                        .unwrap_or_else(|| r.len().min(log.len()) as u64 + 1);
                    out.push(violation(
                        Check::Divergence,
                        format!(
                            "n{first} stores {} events and n{node} {}; they differ from seq {at}",
                            r.len(),
                            log.len()
                        ),
                        Vec::new(),
                    ));
                }
                Some(_) => {}
            },
        }
    }
    if let Err(e) = &finals.drain {
        out.push(violation(
            Check::Unverified,
            format!("the final drain of the group did not finish: {e}"),
            Vec::new(),
        ));
    }
    let Some((_, log)) = reference else {
        return (out, notes);
    };
    notes.stored = log.len();

    // Publishes against the stored topic.
    let mut at_seq: HashMap<&str, Vec<u64>> = HashMap::new();
    for (seq, payload) in log {
        at_seq.entry(payload.as_str()).or_default().push(*seq);
    }
    let mut published: HashMap<&str, &Op> = HashMap::new();
    for op in &publishes {
        if let Some(v) = &op.value {
            published.insert(v.as_str(), op);
        }
    }
    for op in &publishes {
        let (Outcome::Ok, Some(seq), Some(v)) = (op.outcome, op.version, &op.value) else {
            continue;
        };
        if log.get(&seq) != Some(v) {
            out.push(violation(
                Check::LostWrite,
                format!(
                    "publish of {v:?} was acknowledged as seq {seq}; the topic holds {:?} there",
                    log.get(&seq)
                ),
                vec![(*op).clone()],
            ));
        }
    }
    for (payload, seqs) in &at_seq {
        if seqs.len() > 1 {
            out.push(violation(
                Check::Duplicate,
                format!("{payload:?} is stored at seqs {seqs:?}"),
                published
                    .get(payload)
                    .map(|o| vec![(*o).clone()])
                    .unwrap_or_default(),
            ));
        }
        match published.get(payload) {
            None => out.push(violation(
                Check::Phantom,
                format!("{payload:?} is stored at seq {seqs:?} and no one published it"),
                Vec::new(),
            )),
            Some(op) if op.outcome == Outcome::Fail => out.push(violation(
                Check::FailedSeen,
                format!("{payload:?} is stored at seq {seqs:?} although its publish failed"),
                vec![(*op).clone()],
            )),
            Some(_) => {}
        }
    }

    // What consumers got against what is stored.
    for d in deliveries {
        if d.group {
            notes.group_deliveries += 1;
            if d.deliveries > 1 {
                notes.redeliveries += 1;
            }
            if d.consumer == DRAIN {
                notes.drained += 1;
            }
        } else {
            notes.plain_deliveries += 1;
        }
        if log.get(&d.seq) != Some(&d.payload) {
            out.push(violation(
                Check::Incompatible,
                format!(
                    "consumer {} (stream {}, n{}) got {:?} as seq {}; the topic holds {:?} there",
                    d.consumer,
                    d.stream,
                    d.node,
                    d.payload,
                    d.seq,
                    log.get(&d.seq)
                ),
                Vec::new(),
            ));
        }
    }
    let mut by_stream: BTreeMap<u64, Vec<&Delivery>> = BTreeMap::new();
    for d in deliveries.iter().filter(|d| !d.group) {
        by_stream.entry(d.stream).or_default().push(d);
    }
    for s in streams.iter().filter(|s| !s.group) {
        let Some(got) = by_stream.get(&s.id) else {
            continue;
        };
        for (want, d) in (s.from_seq.max(1)..).zip(got.iter()) {
            if d.seq != want {
                out.push(violation(
                    Check::Incompatible,
                    format!(
                        "the plain stream {} on n{} (from seq {}) got seq {} where seq {want} was next",
                        s.id, s.node, s.from_seq, d.seq
                    ),
                    Vec::new(),
                ));
                break;
            }
        }
    }

    // The group.
    let mut claims: HashMap<(u64, u32), &Delivery> = HashMap::new();
    for d in deliveries.iter().filter(|d| d.group && d.deliveries > 0) {
        if let Some(first) = claims.insert((d.seq, d.deliveries), d) {
            out.push(violation(
                Check::DoubleDelivery,
                format!(
                    "seq {} went to consumer {} (n{}) and consumer {} (n{}) as the same delivery #{}",
                    d.seq, first.consumer, first.node, d.consumer, d.node, d.deliveries
                ),
                Vec::new(),
            ));
        }
    }
    let drain_opened = streams
        .iter()
        .filter(|s| s.consumer == DRAIN)
        .map(|s| s.opened_us)
        .min();
    let mut acked: HashMap<u64, &Ack> = HashMap::new();
    let mut maybe: HashSet<u64> = HashSet::new();
    for a in acks.iter().filter(|a| !a.nack) {
        match a.outcome {
            Outcome::Ok => {
                notes.acks_ok += 1;
                acked.entry(a.seq).or_insert(a);
            }
            Outcome::Unknown => {
                notes.acks_other += 1;
                maybe.insert(a.seq);
            }
            Outcome::Fail => notes.acks_other += 1,
        }
    }
    if let Some(opened) = drain_opened {
        for d in deliveries.iter().filter(|d| d.consumer == DRAIN) {
            if let Some(a) = acked.get(&d.seq) {
                if a.consumer != DRAIN && a.end_us < opened {
                    out.push(violation(
                        Check::Redelivered,
                        format!(
                            "seq {} was acked by consumer {} (ok at {:.3}s) and delivered again to the final drain (delivery #{})",
                            d.seq,
                            a.consumer,
                            a.end_us as f64 / 1e6,
                            d.deliveries
                        ),
                        Vec::new(),
                    ));
                }
            }
        }
    }
    if finals.drain.is_ok() {
        let drained: HashSet<u64> = deliveries
            .iter()
            .filter(|d| d.consumer == DRAIN)
            .map(|d| d.seq)
            .collect();
        for seq in log.keys() {
            if !acked.contains_key(seq) && !maybe.contains(seq) && !drained.contains(seq) {
                out.push(violation(
                    Check::LostWrite,
                    format!("seq {seq} never reached the group: no ack of it took effect and the final drain did not get it"),
                    Vec::new(),
                ));
            }
        }
    }
    (out, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(value: &str, seq: Option<u64>, outcome: Outcome) -> Op {
        let mut op = Op::new(0, 0, Kind::Publish, crate::events::TOPIC);
        op.value = Some(value.into());
        op.version = seq;
        op.outcome = outcome;
        op
    }

    fn delivery(consumer: usize, stream: u64, group: bool, seq: u64, p: &str, n: u32) -> Delivery {
        Delivery {
            consumer,
            stream,
            node: 0,
            group,
            seq,
            payload: p.into(),
            deliveries: n,
            at_us: 0,
        }
    }

    fn stream(id: u64, consumer: usize, group: bool, from_seq: u64, opened_us: u64) -> Stream {
        Stream {
            id,
            consumer,
            node: 0,
            group,
            from_seq,
            opened_us,
            closed_us: None,
            error: None,
        }
    }

    fn ack(consumer: usize, seq: u64, end_us: u64) -> Ack {
        Ack {
            consumer,
            node: 0,
            seq,
            nack: false,
            outcome: Outcome::Ok,
            error: None,
            start_us: end_us - 1,
            end_us,
        }
    }

    fn finals(logs: Vec<BTreeMap<u64, String>>) -> Finals {
        Finals {
            logs: logs
                .into_iter()
                .enumerate()
                .map(|(i, l)| (i, Ok(l)))
                .collect(),
            drain: Ok(()),
        }
    }

    fn topic(items: &[(u64, &str)]) -> BTreeMap<u64, String> {
        items.iter().map(|(s, p)| (*s, p.to_string())).collect()
    }

    fn checks(v: &[Violation]) -> Vec<Check> {
        v.iter().map(|v| v.check).collect()
    }

    #[test]
    fn a_correct_run_passes() {
        let history = vec![
            publish("a", Some(1), Outcome::Ok),
            publish("b", None, Outcome::Unknown),
            publish("c", Some(3), Outcome::Ok),
        ];
        let t = topic(&[(1, "a"), (2, "b"), (3, "c")]);
        let deliveries = vec![
            delivery(0, 0, true, 1, "a", 1),
            delivery(1, 1, true, 2, "b", 1),
            delivery(0, 0, true, 2, "b", 2), // after member 1 let it run out
            delivery(100, 2, false, 1, "a", 0),
            delivery(100, 2, false, 2, "b", 0),
            delivery(DRAIN, 3, true, 3, "c", 1),
        ];
        let streams = vec![
            stream(0, 0, true, 0, 0),
            stream(1, 1, true, 0, 0),
            stream(2, 100, false, 1, 0),
            stream(3, DRAIN, true, 0, 100),
        ];
        let acks = vec![ack(0, 1, 10), ack(0, 2, 20), ack(DRAIN, 3, 110)];
        let (v, notes) = check(
            &history,
            &deliveries,
            &acks,
            &streams,
            &finals(vec![t.clone(), t]),
        );
        assert!(
            v.is_empty(),
            "{:?}",
            v.iter().map(|v| &v.what).collect::<Vec<_>>()
        );
        assert_eq!(notes.redeliveries, 1);
    }

    #[test]
    fn lost_duplicated_and_diverged_events_are_found() {
        let history = vec![
            publish("a", Some(1), Outcome::Ok),
            publish("b", Some(2), Outcome::Ok),
            publish("x", None, Outcome::Fail),
        ];
        let n0 = topic(&[(1, "a"), (3, "a"), (4, "x"), (5, "ghost")]);
        let n1 = topic(&[(1, "a")]);
        let (v, _) = check(&history, &[], &[], &[], &finals(vec![n0, n1]));
        let found = checks(&v);
        for c in [
            Check::Divergence,
            Check::LostWrite,
            Check::Duplicate,
            Check::FailedSeen,
            Check::Phantom,
        ] {
            assert!(found.contains(&c), "{c:?} not in {found:?}");
        }
    }

    #[test]
    fn bad_deliveries_are_found() {
        let history = vec![
            publish("a", Some(1), Outcome::Ok),
            publish("b", Some(2), Outcome::Ok),
            publish("c", Some(3), Outcome::Ok),
        ];
        let t = topic(&[(1, "a"), (2, "b"), (3, "c")]);
        let deliveries = vec![
            delivery(0, 0, true, 1, "a", 1),
            delivery(1, 1, true, 1, "a", 1), // the same claim twice
            delivery(100, 2, false, 1, "a", 0),
            delivery(100, 2, false, 3, "c", 0),   // skipped 2
            delivery(101, 4, false, 2, "zzz", 0), // not what is stored
            delivery(DRAIN, 3, true, 2, "b", 2),  // acked before the drain
        ];
        let streams = vec![
            stream(0, 0, true, 0, 0),
            stream(1, 1, true, 0, 0),
            stream(2, 100, false, 1, 0),
            stream(4, 101, false, 2, 0),
            stream(3, DRAIN, true, 0, 100),
        ];
        let acks = vec![ack(0, 1, 10), ack(1, 2, 20)];
        let (v, _) = check(&history, &deliveries, &acks, &streams, &finals(vec![t]));
        let found = checks(&v);
        assert!(found.contains(&Check::DoubleDelivery), "{found:?}");
        assert!(found.contains(&Check::Redelivered), "{found:?}");
        assert_eq!(
            found.iter().filter(|c| **c == Check::Incompatible).count(),
            2,
            "a skipped seq and a wrong payload: {found:?}"
        );
        // seq 3 was never acked nor drained
        assert!(v
            .iter()
            .any(|v| v.check == Check::LostWrite && v.what.contains("seq 3 never reached")));
    }
}
