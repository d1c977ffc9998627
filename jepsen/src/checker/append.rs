//! The list-append checks, in the spirit of Elle, for the lists `a/<k>`.
//!
//! Every append adds a unique element, so the elements name the appends.
//! Per key:
//!
//! * **duplicate**: no read holds an element twice (an append applied
//!   twice);
//! * **phantom** / **failed-seen**: every element a read holds was appended
//!   by some op, and not by one that failed with a definite error;
//! * **incompatible-order**: all reads are prefixes of one order, the
//!   longest read's (which, with the above, makes them pairwise
//!   prefix-compatible);
//! * **lost-write**: every acknowledged append is in every read that started
//!   after it was acknowledged, the final reads of every node included;
//! * **real-time**: a read never returns fewer elements than a read that
//!   ended before it started, and an append acknowledged before another
//!   started comes before it in the order;
//! * **divergence** / **unverified**: after healing every node returns the
//!   same list; a final read that kept failing.
//!
//! This module must never flag a history a correct store could produce.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{Check, Violation};
use crate::history::{Kind, Op, Outcome, FINAL_CLIENT};

/// At most this many violations of one check on one key are listed.
const PER_KEY: usize = 20;

fn push(out: &mut Vec<Violation>, counts: &mut HashMap<Check, usize>, v: Violation) {
    let n = counts.entry(v.check).or_default();
    *n += 1;
    if *n <= PER_KEY {
        out.push(v);
    }
}

pub fn check(history: &[Op], out: &mut Vec<Violation>) {
    let mut keys: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        if matches!(op.kind, Kind::Append | Kind::ReadList) {
            keys.entry(op.key.as_str()).or_default().push(op);
        }
    }
    for (key, ops) in keys {
        one_key(key, &ops, out);
    }
}

fn one_key(key: &str, ops: &[&Op], out: &mut Vec<Violation>) {
    let mut counts: HashMap<Check, usize> = HashMap::new();
    let mut appends: HashMap<u64, &Op> = HashMap::new();
    for a in ops.iter().filter(|o| o.kind == Kind::Append) {
        if let Some(v) = a.value.as_deref().and_then(|v| v.parse::<u64>().ok()) {
            appends.insert(v, a);
        }
    }
    let empty: Vec<u64> = Vec::new();
    // The ok reads with their lists (not found: the empty list).
    let mut reads: Vec<(&Op, &Vec<u64>)> = Vec::new();
    for r in ops
        .iter()
        .filter(|o| o.kind == Kind::ReadList && o.outcome == Outcome::Ok)
    {
        match (&r.list, &r.value) {
            (Some(l), _) => reads.push((r, l)),
            (None, Some(raw)) => push(
                out,
                &mut counts,
                Violation {
                    check: Check::Phantom,
                    what: format!("read #{} of {key} returned {raw:?}, not a list", r.id),
                    ops: vec![(*r).clone()],
                },
            ),
            (None, None) => reads.push((r, &empty)),
        }
    }

    // Each read on its own.
    for (r, list) in &reads {
        let mut seen = HashSet::new();
        for v in list.iter() {
            if !seen.insert(*v) {
                let mut shown = vec![(*r).clone()];
                shown.extend(appends.get(v).map(|a| (*a).clone()));
                push(
                    out,
                    &mut counts,
                    Violation {
                        check: Check::Duplicate,
                        what: format!(
                            "read #{} of {key} holds element {v} more than once: an append applied twice",
                            r.id
                        ),
                        ops: shown,
                    },
                );
                break;
            }
        }
        for v in list.iter() {
            match appends.get(v) {
                None => push(
                    out,
                    &mut counts,
                    Violation {
                        check: Check::Phantom,
                        what: format!(
                            "read #{} of {key} holds element {v}, which no one appended",
                            r.id
                        ),
                        ops: vec![(*r).clone()],
                    },
                ),
                Some(a) if a.outcome == Outcome::Fail => push(
                    out,
                    &mut counts,
                    Violation {
                        check: Check::FailedSeen,
                        what: format!(
                            "read #{} of {key} holds element {v}, whose append #{} failed with a definite error",
                            r.id, a.id
                        ),
                        ops: vec![(*r).clone(), (*a).clone()],
                    },
                ),
                Some(_) => {}
            }
        }
    }

    // One order: every read is a prefix of the longest.
    let Some(&(longest, order)) = reads.iter().max_by_key(|(r, l)| (l.len(), r.id)) else {
        return;
    };
    for (r, list) in &reads {
        if let Some(at) = list.iter().zip(order.iter()).position(|(a, b)| a != b) {
            push(
                out,
                &mut counts,
                Violation {
                    check: Check::Incompatible,
                    what: format!(
                        "reads #{} and #{} of {key} disagree at position {at} ({} vs {}): no one order has both as prefixes",
                        r.id, longest.id, list[at], order[at]
                    ),
                    ops: vec![(*r).clone(), longest.clone()],
                },
            );
        }
    }
    let pos: HashMap<u64, usize> = order.iter().enumerate().map(|(i, v)| (*v, i)).collect();

    // Acknowledged appends are in every read that started after.
    let mut acked: Vec<(&Op, u64)> = appends
        .iter()
        .filter(|(_, a)| a.outcome == Outcome::Ok)
        .map(|(v, a)| (*a, *v))
        .collect();
    acked.sort_by_key(|(a, _)| a.end_us);
    let mut by_start = reads.clone();
    by_start.sort_by_key(|(r, _)| r.start_us);
    // each append missing somewhere: the first read lacking it, and how
    // many do
    let mut lost: BTreeMap<usize, (&Op, u64, &Op, usize)> = BTreeMap::new();
    let mut i = 0;
    for (r, list) in &by_start {
        while i < acked.len() && acked[i].0.end_us < r.start_us {
            i += 1;
        }
        let has: HashSet<u64> = list.iter().copied().collect();
        for (a, v) in acked[..i].iter().filter(|(_, v)| !has.contains(v)) {
            lost.entry(a.id).or_insert((a, *v, r, 0)).3 += 1;
        }
    }
    for (a, v, r, n) in lost.into_values() {
        let which = if r.client == FINAL_CLIENT {
            format!("the final read #{} on n{}", r.id, r.node)
        } else {
            format!("read #{}", r.id)
        };
        push(
            out,
            &mut counts,
            Violation {
                check: Check::LostWrite,
                what: format!(
                    "acknowledged append #{} of {v} to {key} is missing from {which}, which started after it was acknowledged \
                     ({n} such read{} lack it)",
                    a.id,
                    if n == 1 { "" } else { "s" }
                ),
                ops: vec![a.clone(), r.clone()],
            },
        );
    }

    // Reads never go back in time.
    let mut by_end = reads.clone();
    by_end.sort_by_key(|(r, _)| r.end_us);
    let mut j = 0;
    let mut longest_before: Option<(&Op, usize)> = None;
    for (r, list) in &by_start {
        while j < by_end.len() && by_end[j].0.end_us < r.start_us {
            if longest_before.is_none_or(|(_, n)| by_end[j].1.len() > n) {
                longest_before = Some((by_end[j].0, by_end[j].1.len()));
            }
            j += 1;
        }
        if let Some((q, n)) = longest_before {
            if list.len() < n {
                push(
                    out,
                    &mut counts,
                    Violation {
                        check: Check::RealTime,
                        what: format!(
                            "read #{} of {key} returned {} elements, but read #{}, which ended before it started, returned {n}",
                            r.id,
                            list.len(),
                            q.id
                        ),
                        ops: vec![q.clone(), (*r).clone()],
                    },
                );
            }
        }
    }

    // An append acknowledged before another started comes before it.
    let mut present: Vec<(&Op, usize)> = appends
        .iter()
        .filter_map(|(v, a)| pos.get(v).map(|p| (*a, *p)))
        .collect();
    present.sort_by_key(|(a, _)| a.start_us);
    let mut k = 0;
    let mut latest: Option<(&Op, usize)> = None;
    let mut missing: Option<&Op> = None;
    let mut told: HashSet<usize> = HashSet::new();
    for (a2, p2) in present {
        while k < acked.len() && acked[k].0.end_us < a2.start_us {
            match pos.get(&acked[k].1) {
                Some(&p) if latest.is_none_or(|(_, q)| p > q) => latest = Some((acked[k].0, p)),
                Some(_) => {}
                None => missing = missing.or(Some(acked[k].0)),
            }
            k += 1;
        }
        if let Some(a1) = missing.filter(|a1| told.insert(a1.id)) {
            push(
                out,
                &mut counts,
                Violation {
                    check: Check::RealTime,
                    what: format!(
                        "append #{} to {key} was acknowledged before append #{} started, and read #{} holds #{}'s element but not #{}'s",
                        a1.id, a2.id, longest.id, a2.id, a1.id
                    ),
                    ops: vec![a1.clone(), a2.clone(), longest.clone()],
                },
            );
        }
        if let Some((a1, p1)) = latest {
            if p1 > p2 && told.insert(a1.id) {
                push(
                    out,
                    &mut counts,
                    Violation {
                        check: Check::RealTime,
                        what: format!(
                            "append #{} to {key} was acknowledged before append #{} started, yet comes after it in read #{}",
                            a1.id, a2.id, longest.id
                        ),
                        ops: vec![a1.clone(), a2.clone(), longest.clone()],
                    },
                );
            }
        }
    }

    // After healing, every node returns the same list.
    let finals: Vec<&&Op> = ops
        .iter()
        .filter(|o| o.client == FINAL_CLIENT && o.kind == Kind::ReadList)
        .collect();
    let failed: Vec<Op> = finals
        .iter()
        .filter(|o| o.outcome != Outcome::Ok)
        .map(|o| (**o).clone())
        .collect();
    if !failed.is_empty() {
        out.push(Violation {
            check: Check::Unverified,
            what: format!("a final read of {key} failed"),
            ops: failed,
        });
    } else if finals.windows(2).any(|p| p[0].list != p[1].list) {
        out.push(Violation {
            check: Check::Divergence,
            what: format!("the final reads of {key} on the nodes disagree"),
            ops: finals.iter().map(|o| (**o).clone()).collect(),
        });
    }
}
