//! The checks run on the history and on the state read after healing.
//!
//! These are sound but deliberately incomplete: every violation they report
//! is a real one (given that the harness's clock orders events correctly),
//! but a history they accept is not thereby proven linearizable. No search
//! over orderings is done. What is checked, exactly:
//!
//! * **lost writes** (`lost-write`): every acknowledged write of a unique
//!   key is present with its value in a linearizable prefix scan of `w/` on
//!   every node after healing, and is returned, with its value, by a
//!   linearizable point read on every node (all keys, or a random sample of
//!   `--final-reads` of them).
//! * **phantom reads** (`phantom`): every value any read returned (during
//!   the run, in the final point reads, in the final scans of `w/` and `r/`)
//!   was written to that key by some write operation, whatever its outcome
//!   (acknowledged, failed or unknown: the checker never assumes a write
//!   did not happen).
//! * **stale reads** (`stale-read`): for a read R of a register, call a write
//!   W *known to precede* R if W was acknowledged before R started, or some
//!   read that ended before R started returned W's value. If R returned the
//!   value of an acknowledged write V, then no write W known to precede R
//!   may have started after V was acknowledged (V would be overwritten). If
//!   R returned not-found, no write may be known to precede it. The same
//!   for reads of unique keys during the run: a read that started after the
//!   key's write was acknowledged must find it.
//! * **future reads** (`future-read`): no read returned a value whose write
//!   started after the read ended.
//! * **divergence** (`divergence`): after healing, every node returns the
//!   same value for every register (point reads) and the same set of
//!   records under `w/` and `r/` (scans).
//! * **unverified** (`unverified`): a final read or scan that still failed
//!   after 30 s of retries on a healed cluster; the properties above could
//!   not be checked for it, which is a failure too.
//! * **recovery** (`recovery`, added by the harness): a killed node that
//!   would not start again on its data directory, or a cluster that did not
//!   become healthy (every node alive and a voter, one leader everyone
//!   agrees on) within 60 s of healing, or that refused writes afterwards.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use crate::history::{Kind, Op, Outcome, FINAL_CLIENT};

/// The kinds of violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    LostWrite,
    Phantom,
    StaleRead,
    FutureRead,
    Divergence,
    Unverified,
    Recovery,
}

impl Check {
    pub const ALL: [Check; 7] = [
        Check::LostWrite,
        Check::Phantom,
        Check::StaleRead,
        Check::FutureRead,
        Check::Divergence,
        Check::Unverified,
        Check::Recovery,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::LostWrite => "lost-write",
            Check::Phantom => "phantom",
            Check::StaleRead => "stale-read",
            Check::FutureRead => "future-read",
            Check::Divergence => "divergence",
            Check::Unverified => "unverified",
            Check::Recovery => "recovery",
        }
    }
}

/// One violation, with the operations that show it.
pub struct Violation {
    pub check: Check,
    pub what: String,
    pub ops: Vec<Op>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[{}] {}", self.check.name(), self.what)?;
        for op in &self.ops {
            writeln!(f, "      {op}")?;
        }
        Ok(())
    }
}

/// What the scans after healing found on one node.
pub struct NodeScan {
    pub node: usize,
    /// prefix -> the records under it, or why they could not be read
    pub by_prefix: BTreeMap<String, Result<BTreeMap<String, String>, String>>,
}

/// Facts worth reporting that are not violations.
#[derive(Default)]
pub struct Notes {
    /// unique-key writes with an unknown outcome that turned out applied
    pub unknown_applied: usize,
    /// … and those that did not
    pub unknown_absent: usize,
    /// reads that returned the value of a write classified as failed
    pub failed_write_seen: Vec<usize>,
}

/// Runs every check. `history` holds the clients' operations and the
/// final point reads (client [`FINAL_CLIENT`]).
pub fn check(history: &[Op], scans: &[NodeScan], nodes: &[usize]) -> (Vec<Violation>, Notes) {
    let mut out = Vec::new();
    let mut notes = Notes::default();
    // Every value in the run is written at most once, by one op.
    let mut writes: HashMap<(&str, &str), &Op> = HashMap::new();
    for op in history.iter().filter(|o| o.kind.is_write()) {
        if let Some(v) = &op.value {
            writes.insert((op.key.as_str(), v.as_str()), op);
        }
    }
    phantoms(history, scans, &writes, &mut out, &mut notes);
    lost_writes(history, scans, nodes, &mut out, &mut notes);
    registers(history, &writes, &mut out);
    unique_reads(history, &writes, &mut out);
    divergence(history, scans, nodes, &mut out);
    (out, notes)
}

fn phantoms(
    history: &[Op],
    scans: &[NodeScan],
    writes: &HashMap<(&str, &str), &Op>,
    out: &mut Vec<Violation>,
    notes: &mut Notes,
) {
    for r in history.iter().filter(|o| !o.kind.is_write()) {
        let (Outcome::Ok, Some(v)) = (r.outcome, &r.value) else {
            continue;
        };
        match writes.get(&(r.key.as_str(), v.as_str())) {
            None => out.push(Violation {
                check: Check::Phantom,
                what: format!("read of {} returned {v:?}, which no one wrote", r.key),
                ops: vec![r.clone()],
            }),
            Some(w) if w.outcome == Outcome::Fail => notes.failed_write_seen.push(r.id),
            Some(_) => {}
        }
    }
    for scan in scans {
        for (prefix, found) in &scan.by_prefix {
            let Ok(found) = found else { continue };
            for (k, v) in found {
                if !writes.contains_key(&(k.as_str(), v.as_str())) {
                    out.push(Violation {
                        check: Check::Phantom,
                        what: format!(
                            "the final scan of {prefix} on n{} holds {k} = {v:?}, which no one wrote",
                            scan.node
                        ),
                        ops: vec![],
                    });
                }
            }
        }
    }
}

fn lost_writes(
    history: &[Op],
    scans: &[NodeScan],
    nodes: &[usize],
    out: &mut Vec<Violation>,
    notes: &mut Notes,
) {
    let mut finals: HashMap<(&str, usize), &Op> = HashMap::new();
    let mut sampled: HashSet<&str> = HashSet::new();
    for r in history
        .iter()
        .filter(|o| o.client == FINAL_CLIENT && o.kind == Kind::ReadUnique)
    {
        finals.insert((r.key.as_str(), r.node), r);
        sampled.insert(r.key.as_str());
    }
    for w in history.iter().filter(|o| o.kind == Kind::WriteUnique) {
        let value = w.value.as_deref().unwrap_or_default();
        if w.outcome == Outcome::Unknown {
            // Applied or not: the first scan that could be read decides.
            let seen = scans.iter().find_map(|s| match s.by_prefix.get("w/") {
                Some(Ok(m)) => Some(m.contains_key(&w.key)),
                _ => None,
            });
            match seen {
                Some(true) => notes.unknown_applied += 1,
                Some(false) => notes.unknown_absent += 1,
                None => {}
            }
        }
        if w.outcome != Outcome::Ok {
            continue;
        }
        for &node in nodes.iter().filter(|_| sampled.contains(w.key.as_str())) {
            match finals.get(&(w.key.as_str(), node)) {
                None => out.push(Violation {
                    check: Check::Unverified,
                    what: format!("no final read of {} on n{node}", w.key),
                    ops: vec![w.clone()],
                }),
                Some(r) if r.outcome != Outcome::Ok => out.push(Violation {
                    check: Check::Unverified,
                    what: format!("the final read of {} on n{node} failed", w.key),
                    ops: vec![w.clone(), (*r).clone()],
                }),
                Some(r) if r.value.as_deref() != Some(value) => out.push(Violation {
                    check: Check::LostWrite,
                    what: format!(
                        "acknowledged write of {} = {value:?} not read back on n{node}",
                        w.key
                    ),
                    ops: vec![w.clone(), (*r).clone()],
                }),
                Some(_) => {}
            }
        }
        for scan in scans {
            // (A scan that could not be read is reported by `divergence`.)
            if let Some(Ok(m)) = scan.by_prefix.get("w/") {
                if m.get(&w.key).map(String::as_str) != Some(value) {
                    out.push(Violation {
                        check: Check::LostWrite,
                        what: format!(
                            "acknowledged write of {} = {value:?}: the final scan on n{} has {:?}",
                            w.key,
                            scan.node,
                            m.get(&w.key)
                        ),
                        ops: vec![w.clone()],
                    });
                }
            }
        }
    }
}

/// A write known to precede some point in time: it was acknowledged, or
/// a read that had ended returned its value.
#[derive(Clone, Copy)]
struct Known<'a> {
    /// when it became known
    at: u64,
    write: &'a Op,
    /// the read that showed it, when it was not acknowledged by then
    via: Option<&'a Op>,
}

fn registers(history: &[Op], writes: &HashMap<(&str, &str), &Op>, out: &mut Vec<Violation>) {
    let mut keys: BTreeSet<&str> = BTreeSet::new();
    for op in history {
        if matches!(op.kind, Kind::WriteRegister | Kind::ReadRegister) {
            keys.insert(op.key.as_str());
        }
    }
    for key in keys {
        let reads: Vec<&Op> = history
            .iter()
            .filter(|o| o.kind == Kind::ReadRegister && o.key == key && o.outcome == Outcome::Ok)
            .collect();
        let mut known: Vec<Known> = Vec::new();
        for w in history
            .iter()
            .filter(|o| o.kind == Kind::WriteRegister && o.key == key && o.outcome == Outcome::Ok)
        {
            known.push(Known {
                at: w.end_us,
                write: w,
                via: None,
            });
        }
        for r in &reads {
            if let Some(v) = &r.value {
                if let Some(w) = writes.get(&(key, v.as_str())) {
                    known.push(Known {
                        at: r.end_us,
                        write: w,
                        via: Some(r),
                    });
                }
            }
        }
        known.sort_by_key(|k| k.at);
        let mut by_start = reads.clone();
        by_start.sort_by_key(|r| r.start_us);
        // The known-preceding write that started last, over a sweep of the
        // reads in order of start.
        let mut latest: Option<Known> = None;
        let mut i = 0;
        for r in by_start {
            while i < known.len() && known[i].at < r.start_us {
                if latest.is_none_or(|l| known[i].write.start_us > l.write.start_us) {
                    latest = Some(known[i]);
                }
                i += 1;
            }
            let shown = |k: &Known| {
                let mut ops = vec![k.write.clone()];
                if let Some(via) = k.via {
                    ops.push(via.clone());
                }
                ops
            };
            let how = |k: &Known| match k.via {
                None => format!("#{} was acknowledged", k.write.id),
                Some(via) => format!("#{} returned the value of #{}", via.id, k.write.id),
            };
            match &r.value {
                None => {
                    if let Some(l) = latest {
                        let mut ops = vec![r.clone()];
                        ops.extend(shown(&l));
                        out.push(Violation {
                            check: Check::StaleRead,
                            what: format!(
                                "read #{} of {key} found nothing, but before it started {}",
                                r.id,
                                how(&l)
                            ),
                            ops,
                        });
                    }
                }
                Some(v) => {
                    let Some(w) = writes.get(&(key, v.as_str())) else {
                        continue; // a phantom, reported already
                    };
                    if w.start_us > r.end_us {
                        out.push(Violation {
                            check: Check::FutureRead,
                            what: format!(
                                "read #{} of {key} returned the value of #{}, which started after the read ended",
                                r.id, w.id
                            ),
                            ops: vec![r.clone(), (*w).clone()],
                        });
                    }
                    if let Some(l) = latest {
                        if w.outcome == Outcome::Ok && l.write.start_us > w.end_us {
                            let mut ops = vec![r.clone(), (*w).clone()];
                            ops.extend(shown(&l));
                            out.push(Violation {
                                check: Check::StaleRead,
                                what: format!(
                                    "read #{} of {key} returned the value of #{}, acknowledged before #{} started; \
                                     and before the read started {}",
                                    r.id,
                                    w.id,
                                    l.write.id,
                                    how(&l)
                                ),
                                ops,
                            });
                        }
                    }
                }
            }
        }
    }
}

/// Reads of unique keys during the run: the key's write was acknowledged
/// before the read started, so the read must find it. (Final reads are
/// judged by `lost_writes`; other values by `phantoms`.)
fn unique_reads(history: &[Op], writes: &HashMap<(&str, &str), &Op>, out: &mut Vec<Violation>) {
    let by_key: HashMap<&str, &Op> = writes
        .values()
        .filter(|w| w.kind == Kind::WriteUnique)
        .map(|w| (w.key.as_str(), *w))
        .collect();
    for r in history.iter().filter(|o| {
        o.kind == Kind::ReadUnique && o.client != FINAL_CLIENT && o.outcome == Outcome::Ok
    }) {
        let Some(w) = by_key.get(r.key.as_str()) else {
            continue;
        };
        if w.outcome == Outcome::Ok && w.end_us < r.start_us && r.value.is_none() {
            out.push(Violation {
                check: Check::StaleRead,
                what: format!(
                    "read #{} of {} found nothing, though its write #{} was acknowledged before the read started",
                    r.id, r.key, w.id
                ),
                ops: vec![r.clone(), (*w).clone()],
            });
        }
    }
}

fn divergence(history: &[Op], scans: &[NodeScan], nodes: &[usize], out: &mut Vec<Violation>) {
    // Scans: every node must hold the same records.
    let prefixes: BTreeSet<&String> = scans.iter().flat_map(|s| s.by_prefix.keys()).collect();
    for prefix in prefixes {
        let mut maps = Vec::new();
        for s in scans {
            match s.by_prefix.get(prefix) {
                Some(Ok(m)) => maps.push((s.node, m)),
                Some(Err(e)) => out.push(Violation {
                    check: Check::Unverified,
                    what: format!("the final scan of {prefix} on n{} failed: {e}", s.node),
                    ops: vec![],
                }),
                None => {}
            }
        }
        let all: BTreeSet<&String> = maps.iter().flat_map(|(_, m)| m.keys()).collect();
        for k in all {
            let values: Vec<(usize, Option<&String>)> =
                maps.iter().map(|(n, m)| (*n, m.get(k))).collect();
            if values.windows(2).any(|p| p[0].1 != p[1].1) {
                out.push(Violation {
                    check: Check::Divergence,
                    what: format!(
                        "nodes disagree on {k} in the final scans: {}",
                        values
                            .iter()
                            .map(|(n, v)| format!("n{n}={v:?}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    ops: vec![],
                });
            }
        }
    }
    // Final point reads of the registers.
    let mut regs: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for r in history
        .iter()
        .filter(|o| o.client == FINAL_CLIENT && o.kind == Kind::ReadRegister)
    {
        regs.entry(r.key.as_str()).or_default().push(r);
    }
    for (key, reads) in regs {
        let failed: Vec<&&Op> = reads.iter().filter(|r| r.outcome != Outcome::Ok).collect();
        if !failed.is_empty() {
            out.push(Violation {
                check: Check::Unverified,
                what: format!("a final read of {key} failed"),
                ops: failed.into_iter().map(|r| (*r).clone()).collect(),
            });
            continue;
        }
        let values: BTreeSet<&Option<String>> = reads.iter().map(|r| &r.value).collect();
        if values.len() > 1 || reads.len() != nodes.len() {
            out.push(Violation {
                check: Check::Divergence,
                what: format!(
                    "the final reads of {key} on the {} nodes disagree",
                    nodes.len()
                ),
                ops: reads.into_iter().cloned().collect(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        id: usize,
        kind: Kind,
        key: &str,
        value: Option<&str>,
        outcome: Outcome,
        span: (u64, u64),
    ) -> Op {
        Op {
            id,
            client: id,
            node: 0,
            kind,
            key: key.into(),
            value: value.map(str::to_string),
            outcome,
            error: None,
            start_us: span.0,
            end_us: span.1,
        }
    }

    fn names(v: &[Violation]) -> Vec<&'static str> {
        v.iter().map(|v| v.check.name()).collect()
    }

    #[test]
    fn a_read_of_an_overwritten_value_is_stale() {
        use Kind::*;
        use Outcome::Ok as Y;
        let h = vec![
            op(0, WriteRegister, "r/0", Some("a"), Y, (0, 10)),
            op(1, WriteRegister, "r/0", Some("b"), Y, (20, 30)),
            op(2, ReadRegister, "r/0", Some("a"), Y, (40, 50)),
        ];
        let (v, _) = check(&h, &[], &[0]);
        assert_eq!(names(&v), ["stale-read"]);
    }

    #[test]
    fn concurrent_writes_may_be_read_in_either_order() {
        use Kind::*;
        use Outcome::Ok as Y;
        let h = vec![
            op(0, WriteRegister, "r/0", Some("a"), Y, (0, 25)),
            op(1, WriteRegister, "r/0", Some("b"), Y, (20, 30)),
            op(2, ReadRegister, "r/0", Some("a"), Y, (40, 50)),
            op(3, ReadRegister, "r/0", Some("a"), Y, (60, 70)),
        ];
        let (v, _) = check(&h, &[], &[0]);
        assert!(v.is_empty(), "{:?}", names(&v));
    }

    #[test]
    fn a_value_once_observed_supersedes_older_ones() {
        use Kind::*;
        use Outcome::{Ok as Y, Unknown as U};
        let h = vec![
            op(0, WriteRegister, "r/0", Some("a"), Y, (0, 10)),
            // unknown, but a read shows it took effect
            op(1, WriteRegister, "r/0", Some("b"), U, (20, 30)),
            op(2, ReadRegister, "r/0", Some("b"), Y, (40, 50)),
            op(3, ReadRegister, "r/0", Some("a"), Y, (60, 70)),
        ];
        let (v, _) = check(&h, &[], &[0]);
        assert_eq!(names(&v), ["stale-read"]);
    }

    #[test]
    fn phantoms_future_reads_and_missing_values() {
        use Kind::*;
        use Outcome::Ok as Y;
        let h = vec![
            op(0, ReadRegister, "r/0", Some("zz"), Y, (0, 5)),
            op(1, ReadRegister, "r/1", Some("b"), Y, (0, 5)),
            op(2, WriteRegister, "r/1", Some("b"), Y, (10, 20)),
            op(3, ReadRegister, "r/1", None, Y, (30, 40)),
        ];
        let (v, _) = check(&h, &[], &[0]);
        let mut n = names(&v);
        n.sort();
        assert_eq!(n, ["future-read", "phantom", "stale-read"]);
    }

    #[test]
    fn unknown_writes_may_or_may_not_appear() {
        use Kind::*;
        use Outcome::{Ok as Y, Unknown as U};
        let h = vec![
            op(0, WriteRegister, "r/0", Some("a"), Y, (0, 10)),
            op(1, WriteRegister, "r/0", Some("b"), U, (20, 30)),
            op(2, ReadRegister, "r/0", Some("a"), Y, (40, 50)),
            op(3, ReadRegister, "r/0", Some("b"), Y, (60, 70)),
            op(4, WriteUnique, "w/0/1", Some("0-1"), U, (0, 10)),
        ];
        let (v, _) = check(&h, &[], &[0]);
        assert!(v.is_empty(), "{:?}", names(&v));
    }

    #[test]
    fn acknowledged_unique_writes_must_survive_everywhere() {
        use Kind::*;
        use Outcome::Ok as Y;
        let mut h = vec![op(0, WriteUnique, "w/0/1", Some("0-1"), Y, (0, 10))];
        let mut r0 = op(1, ReadUnique, "w/0/1", Some("0-1"), Y, (100, 110));
        r0.client = FINAL_CLIENT;
        let mut r1 = op(2, ReadUnique, "w/0/1", None, Y, (100, 110));
        r1.client = FINAL_CLIENT;
        r1.node = 1;
        h.extend([r0, r1]);
        let scan = |node, has: bool| NodeScan {
            node,
            by_prefix: BTreeMap::from([(
                "w/".to_string(),
                Ok(if has {
                    BTreeMap::from([("w/0/1".to_string(), "0-1".to_string())])
                } else {
                    BTreeMap::new()
                }),
            )]),
        };
        let (v, _) = check(&h, &[scan(0, true), scan(1, false)], &[0, 1]);
        let mut n = names(&v);
        n.sort();
        assert_eq!(n, ["divergence", "lost-write", "lost-write"]);
    }
}
