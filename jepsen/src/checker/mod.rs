//! The checks run on the history and on the state read after healing.
//!
//! Every violation reported is a real one, given that the harness's one
//! clock orders the start and end of operations correctly. What is checked:
//!
//! * **linearizability** (`non-linearizable`, [`linear`]): per key, the
//!   registers `r/<k>` (read, write, CAS) and the lists `a/<k>` (each
//!   append is a CAS from the list it read; reads return the list) have a
//!   linearization: a Wing–Gong/Lowe search with memoization, as Porcupine
//!   does it. Unknown ops may take effect any time after their call, or
//!   never; failed ones are taken as not applied (a failed read says
//!   nothing). The search has a budget per key; a key that uses it up is
//!   *inconclusive* (a note, with the old sound-but-incomplete register
//!   checks run on it instead), neither a pass nor a violation.
//! * **the lists** ([`append`]): no duplicates, one order, acknowledged
//!   appends present in every later read, real-time order, failed appends
//!   never seen, every node's final list the same.
//! * **lost writes** (`lost-write`): every acknowledged write of a unique
//!   key is present with its value in a linearizable prefix scan of `w/` on
//!   every node after healing, and is returned, with its value, by a
//!   linearizable point read on every node (all keys, or a random sample of
//!   `--final-reads` of them).
//! * **phantom reads** (`phantom`): every value any read returned (during
//!   the run, in the final point reads, in the final scans of `w/` and `r/`)
//!   was written to that key by some write operation, whatever its outcome.
//! * **unique reads** (`stale-read`): a read of a unique key that started
//!   after the key's write was acknowledged must find it.
//! * **divergence** (`divergence`): after healing, every node returns the
//!   same value for every register (point reads), the same list for every
//!   list, the same records under the scanned prefixes, and the same test
//!   services in `Registry.ListServices`.
//! * **registrations** (`lost-write`, `phantom`): every acknowledged
//!   registration of a test service is listed by every node after healing;
//!   no node lists a test service no one registered.
//! * **unverified** (`unverified`): a final read or scan that still failed
//!   after 30 s of retries on a healed cluster; the properties above could
//!   not be checked for it, which is a failure too.
//! * **recovery** (`recovery`, added by the harness): a killed node that
//!   would not start again on its data directory, or a cluster that did not
//!   become healthy within 60 s of healing, or that refused writes
//!   afterwards.
//!
//! The checker must never report a violation for a history a correct
//! linearizable store could have produced.

pub mod append;
pub mod events;
pub mod linear;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use crate::history::{Kind, Op, Outcome, FINAL_CLIENT};

/// The test services the harness registers are named `jepsen-<n>`.
pub const SERVICE_PREFIX: &str = "jepsen-";

/// The kinds of violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    NotLinearizable,
    LostWrite,
    Phantom,
    StaleRead,
    FutureRead,
    Duplicate,
    Incompatible,
    RealTime,
    FailedSeen,
    Divergence,
    Unverified,
    Recovery,
    DoubleDelivery,
    Redelivered,
}

impl Check {
    pub const ALL: [Check; 14] = [
        Check::NotLinearizable,
        Check::LostWrite,
        Check::Phantom,
        Check::StaleRead,
        Check::FutureRead,
        Check::Duplicate,
        Check::Incompatible,
        Check::RealTime,
        Check::FailedSeen,
        Check::Divergence,
        Check::Unverified,
        Check::Recovery,
        Check::DoubleDelivery,
        Check::Redelivered,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::NotLinearizable => "non-linearizable",
            Check::LostWrite => "lost-write",
            Check::Phantom => "phantom",
            Check::StaleRead => "stale-read",
            Check::FutureRead => "future-read",
            Check::Duplicate => "duplicate",
            Check::Incompatible => "incompatible-order",
            Check::RealTime => "real-time",
            Check::FailedSeen => "failed-seen",
            Check::Divergence => "divergence",
            Check::Unverified => "unverified",
            Check::Recovery => "recovery",
            Check::DoubleDelivery => "double-delivery",
            Check::Redelivered => "redelivered",
        }
    }
}

/// What the checks are, for the report.
pub const CHECKED: &str = "\
checked:
  non-linearizable    per key, registers r/<k> (read, write, CAS) and lists a/<k> (append = CAS
                      from the list read) have a linearization (Wing-Gong/Lowe search with
                      memoization, as Porcupine); unknown ops may take effect after their call or
                      never, failed ones did not; a key whose search budget runs out is
                      inconclusive (a note) and gets the weaker stale-read/future-read checks
  duplicate           no list read holds an element twice
  incompatible-order  every list read is a prefix of one order (the longest read's)
  lost-write          every acknowledged append is in every read of its list that started later
                      (the final reads on every node too); every acknowledged unique write is in
                      the final scan of w/ and its final point read on every node; every
                      acknowledged test service is listed by every node after healing
  real-time           no list read is shorter than one that ended before it started; an append
                      acknowledged before another started comes first
  failed-seen         no read holds an append that failed with a definite error
  phantom             every value read was written by some op; every element appended by some op;
                      no node lists a test service no one registered
  stale-read          a read of a unique key that started after its write was acknowledged finds it
  divergence          after healing, all nodes return the same registers, lists, records under the
                      scanned prefixes and test services
  unverified          a final read, scan or service listing that failed after 30 s of retries
  recovery            a killed node that would not start again, or a cluster that was not healthy
                      within 60 s of healing, or refused writes
events (with --workload events):
  lost-write          an acknowledged publish is at the sequence its reply gave, on every node; every
                      stored event reached the group (acked, an ack of unknown outcome, or drained)
  duplicate/phantom   no payload stored twice; none no one published; none whose publish failed
  incompatible-order  every consumer got what is stored at each sequence; a plain stream gets its
                      sequences one after another from its start
  double-delivery     no two deliveries of one event to the group with the same delivery count
  redelivered         the final drain gets no event whose ack had succeeded
  divergence          every node stores the same topic";

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
    /// the test services (`jepsen-*`) `Registry.ListServices` lists, or why
    /// it could not be asked; `None` when no services were registered
    pub services: Option<Result<BTreeSet<String>, String>>,
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
    /// keys searched for a linearization, the ops given to the search, and
    /// its steps in all
    pub linear_keys: usize,
    pub linear_ops: usize,
    pub linear_steps: u64,
    /// unknown writes left out of the search: no read or CAS ever saw
    /// their value, so leaving them out cannot hide an anomaly
    pub unknown_unseen: usize,
    /// unknown writes some read or CAS showed to have taken effect: given
    /// to the search as ending when the first of those ended
    pub unknown_placed: usize,
    /// keys whose search ran out of budget: (key, why)
    pub inconclusive: Vec<(String, String)>,
    /// how long the checks took
    pub elapsed: Duration,
}

/// The search budget of one key in a real run.
pub const BUDGET: linear::Budget = linear::Budget {
    steps: 20_000_000,
    time: Duration::from_secs(20),
};

/// Runs every check. `history` holds the clients' operations and the
/// final point reads (client [`FINAL_CLIENT`]).
pub fn check(history: &[Op], scans: &[NodeScan], nodes: &[usize]) -> (Vec<Violation>, Notes) {
    check_with(history, scans, nodes, BUDGET)
}

/// [`check`] with a given search budget per key.
pub fn check_with(
    history: &[Op],
    scans: &[NodeScan],
    nodes: &[usize],
    budget: linear::Budget,
) -> (Vec<Violation>, Notes) {
    let started = Instant::now();
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
    linearizable(history, budget, &mut out, &mut notes);
    let fallback: HashSet<&str> = notes.inconclusive.iter().map(|(k, _)| k.as_str()).collect();
    registers(history, &writes, &fallback, &mut out);
    unique_reads(history, &writes, &mut out);
    append::check(history, &mut out);
    divergence(history, scans, nodes, &mut out);
    registry(history, scans, &mut out);
    notes.elapsed = started.elapsed();
    (out, notes)
}

/// The linearizability search of every register and list key.
fn linearizable(
    history: &[Op],
    budget: linear::Budget,
    out: &mut Vec<Violation>,
    notes: &mut Notes,
) {
    let mut keys: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        if op.kind.is_register() || matches!(op.kind, Kind::Append | Kind::ReadList) {
            keys.entry(op.key.as_str()).or_default().push(op);
        }
    }
    for (key, ops) in keys {
        let mut names: Vec<String> = Vec::new();
        let mut ids: HashMap<String, u32> = HashMap::new();
        let mut intern = |v: &str| -> u32 {
            if let Some(&i) = ids.get(v) {
                return i;
            }
            let i = names.len() as u32;
            names.push(v.to_string());
            ids.insert(v.to_string(), i);
            i
        };
        let json = |l: &[u64]| serde_json::to_string(l).unwrap_or_default();
        // What a register op reads, expects and writes, as text.
        type Shape = (
            Option<Option<String>>,
            Option<Option<String>>,
            Option<String>,
        );
        let shape = |o: &Op| -> Option<Shape> {
            // (read, expected, written)
            match o.kind {
                Kind::ReadRegister => Some((Some(o.value.clone()), None, None)),
                Kind::WriteRegister => Some((None, None, o.value.clone())),
                Kind::CasRegister => Some((None, Some(o.expected.clone()), o.value.clone())),
                Kind::ReadList => match (&o.list, &o.value) {
                    (None, Some(_)) => None, // unreadable: a phantom, reported by `append`
                    (l, _) => Some((Some(l.as_deref().map(json)), None, None)),
                },
                Kind::Append => {
                    let v = o.value.as_deref()?.parse::<u64>().ok()?;
                    let mut new = o.list.clone().unwrap_or_default();
                    new.push(v);
                    Some((None, Some(o.list.as_deref().map(json)), Some(json(&new))))
                }
                _ => None,
            }
        };
        // Values some op saw: an unknown write of any other value can be
        // left out (nothing could tell whether it took effect). An unknown
        // write whose value an ok read returned or an ok CAS expected did
        // take effect, before the first such op ended: it is placed in
        // that interval (sound: every linearization puts it there), which
        // spares the search from trying it everywhere.
        let mut seen: HashSet<String> = HashSet::new();
        let mut seen_by: HashMap<String, u64> = HashMap::new();
        for o in &ops {
            let Some((read, expected, _)) = shape(o) else {
                continue;
            };
            for v in [read, expected].into_iter().flatten().flatten() {
                if o.outcome == Outcome::Ok {
                    let t = seen_by.entry(v.clone()).or_insert(o.end_us);
                    *t = (*t).min(o.end_us);
                }
                if o.outcome != Outcome::Fail {
                    seen.insert(v);
                }
            }
        }
        let mut entries = Vec::new();
        for (h, o) in ops.iter().enumerate() {
            if o.outcome == Outcome::Fail {
                continue;
            }
            let Some((read, expected, written)) = shape(o) else {
                continue;
            };
            let mut ret = (o.outcome == Outcome::Ok).then_some(o.end_us);
            let f = match (read, expected, written) {
                (Some(r), _, _) => linear::F::Read(r.as_deref().map(&mut intern)),
                (None, e, Some(w)) => {
                    if o.outcome == Outcome::Unknown {
                        if let Some(&t) = seen_by.get(&w) {
                            ret = Some(t.max(o.start_us));
                            notes.unknown_placed += 1;
                        } else if !seen.contains(&w) {
                            notes.unknown_unseen += 1;
                            continue;
                        }
                    }
                    let w = intern(&w);
                    match e {
                        None => linear::F::Write(w),
                        Some(e) => linear::F::Cas(e.as_deref().map(&mut intern), w),
                    }
                }
                _ => continue,
            };
            entries.push(linear::Entry {
                op: h,
                call: o.start_us,
                ret,
                f,
            });
        }
        notes.linear_keys += 1;
        notes.linear_ops += entries.len();
        match linear::check(&entries, budget) {
            linear::Verdict::Linearizable { steps } => notes.linear_steps += steps,
            linear::Verdict::Inconclusive { steps, reason } => {
                notes.linear_steps += steps;
                notes.inconclusive.push((key.to_string(), reason));
            }
            linear::Verdict::Violation { steps, stuck } => {
                notes.linear_steps += steps;
                let value = |s: Option<u32>| match s {
                    Some(i) => format!("{:?}", names[i as usize]),
                    None => "nothing".to_string(),
                };
                let mut shown: Vec<Op> = Vec::new();
                for &h in stuck.before.iter().chain(&stuck.blocked).chain(&stuck.open) {
                    if !shown.iter().any(|s| s.id == ops[h].id) {
                        shown.push(ops[h].clone());
                    }
                }
                let blocked = match stuck.blocked {
                    Some(h) => format!("#{} returned", ops[h].id),
                    None => "the end".to_string(),
                };
                out.push(Violation {
                    check: Check::NotLinearizable,
                    what: format!(
                        "{key} is not linearizable: no order of its ops fits them all. The longest linearizable prefix found \
                         has {} ops (the {} with a known outcome must all fit); after it {key} held {}, and no op still open could take effect \
                         before {blocked}. Shown: the last ops of that prefix, then the blocked op and the others open then",
                        stuck.depth,
                        stuck.required,
                        value(stuck.state),
                    ),
                    ops: shown,
                });
            }
        }
    }
}

/// Registry convergence: after healing every node lists the same test
/// services, each acknowledged registration among them, and none that no
/// one tried to register.
fn registry(history: &[Op], scans: &[NodeScan], out: &mut Vec<Violation>) {
    let tried: HashMap<&str, &Op> = history
        .iter()
        .filter(|o| o.kind == Kind::Register)
        .map(|o| (o.key.as_str(), o))
        .collect();
    let mut lists = Vec::new();
    for s in scans {
        match &s.services {
            None => {}
            Some(Err(e)) => out.push(Violation {
                check: Check::Unverified,
                what: format!("the final service listing on n{} failed: {e}", s.node),
                ops: vec![],
            }),
            Some(Ok(l)) => lists.push((s.node, l)),
        }
    }
    for (node, l) in &lists {
        for name in l.iter().filter(|n| !tried.contains_key(n.as_str())) {
            out.push(Violation {
                check: Check::Phantom,
                what: format!("n{node} lists the test service {name}, which no one registered"),
                ops: vec![],
            });
        }
        for (name, op) in tried.iter().filter(|(_, o)| o.outcome == Outcome::Ok) {
            if !l.contains(*name) {
                out.push(Violation {
                    check: Check::LostWrite,
                    what: format!(
                        "acknowledged registration of {name} is not listed by n{node} after healing"
                    ),
                    ops: vec![(*op).clone()],
                });
            }
        }
    }
    if lists.windows(2).any(|p| p[0].1 != p[1].1) {
        let all: BTreeSet<&String> = lists.iter().flat_map(|(_, l)| l.iter()).collect();
        let differ: Vec<String> = all
            .into_iter()
            .filter(|n| !lists.iter().all(|(_, l)| l.contains(*n)))
            .map(|n| {
                let on: Vec<String> = lists
                    .iter()
                    .filter(|(_, l)| l.contains(n))
                    .map(|(i, _)| format!("n{i}"))
                    .collect();
                format!("{n} (on {})", on.join(","))
            })
            .collect();
        out.push(Violation {
            check: Check::Divergence,
            what: format!(
                "the nodes list different test services after healing: {}",
                differ.join("; ")
            ),
            ops: vec![],
        });
    }
}

fn phantoms(
    history: &[Op],
    scans: &[NodeScan],
    writes: &HashMap<(&str, &str), &Op>,
    out: &mut Vec<Violation>,
    notes: &mut Notes,
) {
    for r in history
        .iter()
        .filter(|o| matches!(o.kind, Kind::ReadRegister | Kind::ReadUnique))
    {
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
            // (lists hold appended elements, checked by `append`)
            let Ok(found) = found else { continue };
            if prefix.starts_with("a/") {
                continue;
            }
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

/// The register checks of old, sound but incomplete, for the keys whose
/// linearizability search was inconclusive: stale reads and future reads
/// (see the `README`).
fn registers(
    history: &[Op],
    writes: &HashMap<(&str, &str), &Op>,
    only: &HashSet<&str>,
    out: &mut Vec<Violation>,
) {
    let mut keys: BTreeSet<&str> = BTreeSet::new();
    for op in history {
        if op.kind.is_register() && only.contains(op.key.as_str()) {
            keys.insert(op.key.as_str());
        }
    }
    for key in keys {
        let reads: Vec<&Op> = history
            .iter()
            .filter(|o| o.kind == Kind::ReadRegister && o.key == key && o.outcome == Outcome::Ok)
            .collect();
        let mut known: Vec<Known> = Vec::new();
        for w in history.iter().filter(|o| {
            matches!(o.kind, Kind::WriteRegister | Kind::CasRegister)
                && o.key == key
                && o.outcome == Outcome::Ok
        }) {
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
    use Outcome::{Fail as N, Ok as Y, Unknown as U};

    fn op(
        id: usize,
        kind: Kind,
        key: &str,
        value: Option<&str>,
        outcome: Outcome,
        span: (u64, u64),
    ) -> Op {
        let mut o = Op::new(id, 0, kind, key);
        o.id = id;
        o.value = value.map(str::to_string);
        o.outcome = outcome;
        o.start_us = span.0;
        o.end_us = span.1;
        o
    }

    fn w(id: usize, v: &str, outcome: Outcome, span: (u64, u64)) -> Op {
        op(id, Kind::WriteRegister, "r/0", Some(v), outcome, span)
    }

    fn r(id: usize, v: Option<&str>, span: (u64, u64)) -> Op {
        op(id, Kind::ReadRegister, "r/0", v, Y, span)
    }

    fn cas(id: usize, from: Option<&str>, to: &str, outcome: Outcome, span: (u64, u64)) -> Op {
        let mut o = op(id, Kind::CasRegister, "r/0", Some(to), outcome, span);
        o.expected = from.map(str::to_string);
        o
    }

    fn append(id: usize, base: Option<&[u64]>, v: u64, outcome: Outcome, span: (u64, u64)) -> Op {
        let mut o = op(id, Kind::Append, "a/0", Some(&v.to_string()), outcome, span);
        o.list = base.map(<[u64]>::to_vec);
        o
    }

    fn rl(id: usize, list: Option<&[u64]>, span: (u64, u64)) -> Op {
        let mut o = op(id, Kind::ReadList, "a/0", None, Y, span);
        o.list = list.map(<[u64]>::to_vec);
        o
    }

    fn names(v: &[Violation]) -> Vec<&'static str> {
        let mut n: Vec<&'static str> = v.iter().map(|v| v.check.name()).collect();
        n.sort();
        n
    }

    fn passes(h: &[Op]) {
        let (v, notes) = check(h, &[], &[0]);
        let shown: Vec<String> = v.iter().map(|v| v.to_string()).collect();
        assert!(v.is_empty(), "{}", shown.join(""));
        assert!(notes.inconclusive.is_empty());
    }

    #[test]
    fn a_read_of_an_overwritten_value_is_not_linearizable() {
        let h = vec![
            w(0, "a", Y, (0, 10)),
            w(1, "b", Y, (20, 30)),
            r(2, Some("a"), (40, 50)),
        ];
        let (v, _) = check(&h, &[], &[0]);
        assert_eq!(names(&v), ["non-linearizable"]);
        // the report names the read that could not be placed, and the write
        // that overwrote its value
        let ids: Vec<usize> = v[0].ops.iter().map(|o| o.id).collect();
        assert!(ids.contains(&2) && ids.contains(&1), "{ids:?}");
        assert!(v[0].what.contains("\"b\""), "{}", v[0].what);
    }

    #[test]
    fn concurrent_writes_may_be_read_in_either_order_but_not_both() {
        for (a, b) in [("a", "b"), ("b", "a")] {
            passes(&[
                w(0, "a", Y, (0, 25)),
                w(1, "b", Y, (20, 30)),
                r(2, Some(a), (40, 50)),
                r(3, Some(a), (60, 70)),
            ]);
            let (v, _) = check(
                &[
                    w(0, "a", Y, (0, 25)),
                    w(1, "b", Y, (20, 30)),
                    r(2, Some(a), (40, 50)),
                    r(3, Some(b), (60, 70)),
                ],
                &[],
                &[0],
            );
            assert_eq!(names(&v), ["non-linearizable"]);
        }
    }

    #[test]
    fn an_unknown_write_once_observed_stays_in_effect() {
        let h = vec![
            w(0, "a", Y, (0, 10)),
            // unknown, but a read shows it took effect
            w(1, "b", U, (20, 30)),
            r(2, Some("b"), (40, 50)),
            r(3, Some("a"), (60, 70)),
        ];
        let (v, _) = check(&h, &[], &[0]);
        assert_eq!(names(&v), ["non-linearizable"]);
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_been_applied() {
        // applied late: after a read that did not see it
        passes(&[
            w(0, "a", Y, (0, 10)),
            w(1, "b", U, (20, 30)),
            r(2, Some("a"), (40, 50)),
            r(3, Some("b"), (60, 70)),
            op(4, Kind::WriteUnique, "w/0/1", Some("0-1"), U, (0, 10)),
        ]);
        // never applied
        passes(&[
            w(0, "a", Y, (0, 10)),
            w(1, "b", U, (20, 30)),
            r(2, Some("a"), (40, 50)),
            r(3, Some("a"), (60, 70)),
        ]);
        // but not before it was called
        let (v, _) = check(
            &[
                w(0, "a", Y, (0, 10)),
                r(1, Some("b"), (12, 15)),
                w(2, "b", U, (20, 30)),
            ],
            &[],
            &[0],
        );
        assert_eq!(names(&v), ["non-linearizable"]);
    }

    #[test]
    fn an_unknown_write_seen_late_may_have_taken_effect_late() {
        passes(&[
            w(0, "a", Y, (0, 10)),
            w(1, "b", U, (5, 100)),
            r(2, Some("a"), (20, 30)),
            r(3, Some("b"), (40, 50)),
            r(4, Some("b"), (60, 70)),
        ]);
    }

    #[test]
    fn a_lost_write_is_not_linearizable() {
        let mut fin = r(2, None, (100, 110));
        fin.client = FINAL_CLIENT;
        let h = vec![w(0, "a", Y, (0, 10)), r(1, Some("a"), (20, 30)), fin];
        let (v, _) = check(&h, &[], &[0]);
        assert_eq!(names(&v), ["non-linearizable"]);
    }

    #[test]
    fn two_cas_from_the_same_value_cannot_both_succeed() {
        // sequential and concurrent
        for second in [(40, 50), (25, 35)] {
            let h = vec![
                w(0, "a", Y, (0, 10)),
                cas(1, Some("a"), "b", Y, (20, 30)),
                cas(2, Some("a"), "c", Y, second),
            ];
            let (v, _) = check(&h, &[], &[0]);
            assert_eq!(names(&v), ["non-linearizable"], "{second:?}");
        }
        // one of them refused: fine
        passes(&[
            w(0, "a", Y, (0, 10)),
            cas(1, Some("a"), "b", Y, (20, 30)),
            cas(2, Some("a"), "c", N, (25, 35)),
            r(3, Some("b"), (40, 50)),
        ]);
        // a CAS from nothing, then one from its value
        passes(&[
            cas(0, None, "a", Y, (0, 10)),
            cas(1, Some("a"), "b", Y, (20, 30)),
            r(2, Some("b"), (40, 50)),
        ]);
        // a CAS whose expected value was never there
        let (v, _) = check(
            &[w(0, "a", Y, (0, 10)), cas(1, Some("z"), "b", Y, (20, 30))],
            &[],
            &[0],
        );
        assert_eq!(names(&v), ["non-linearizable"]);
    }

    #[test]
    fn an_unknown_cas_may_or_may_not_have_been_applied() {
        for seen in ["a", "b"] {
            passes(&[
                w(0, "a", Y, (0, 10)),
                cas(1, Some("a"), "b", U, (20, 30)),
                r(2, Some(seen), (40, 50)),
            ]);
        }
        // an unknown CAS cannot succeed from a value the register did not hold
        let (v, _) = check(
            &[
                w(0, "a", Y, (0, 10)),
                w(1, "c", Y, (15, 18)),
                cas(2, Some("a"), "b", U, (20, 30)),
                r(3, Some("b"), (40, 50)),
            ],
            &[],
            &[0],
        );
        assert_eq!(names(&v), ["non-linearizable"]);
    }

    #[test]
    fn phantom_values_are_named() {
        let h = vec![r(0, Some("zz"), (0, 5))];
        let (v, _) = check(&h, &[], &[0]);
        assert_eq!(names(&v), ["non-linearizable", "phantom"]);
    }

    #[test]
    fn acknowledged_unique_writes_must_survive_everywhere() {
        let mut h = vec![op(0, Kind::WriteUnique, "w/0/1", Some("0-1"), Y, (0, 10))];
        let mut r0 = op(1, Kind::ReadUnique, "w/0/1", Some("0-1"), Y, (100, 110));
        r0.client = FINAL_CLIENT;
        let mut r1 = op(2, Kind::ReadUnique, "w/0/1", None, Y, (100, 110));
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
            services: None,
        };
        let (v, _) = check(&h, &[scan(0, true), scan(1, false)], &[0, 1]);
        assert_eq!(names(&v), ["divergence", "lost-write", "lost-write"]);
    }

    #[test]
    fn a_good_list_history_passes() {
        passes(&[
            rl(0, None, (0, 5)),
            append(1, None, 1, Y, (6, 10)),
            // concurrent appends from [1]: one wins, one is refused
            append(2, Some(&[1]), 2, Y, (20, 30)),
            append(3, Some(&[1]), 3, N, (21, 31)),
            // unknown, and applied
            append(4, Some(&[1, 2]), 4, U, (40, 50)),
            rl(5, Some(&[1, 2, 4]), (60, 70)),
            // unknown, never applied
            append(6, Some(&[1, 2, 4]), 5, U, (80, 90)),
            rl(7, Some(&[1, 2, 4]), (100, 110)),
        ]);
    }

    #[test]
    fn a_duplicate_append_is_flagged() {
        let h = vec![
            append(0, None, 1, Y, (0, 10)),
            append(1, Some(&[1]), 1, U, (20, 30)),
            rl(2, Some(&[1, 1]), (40, 50)),
        ];
        let (v, _) = check(&h, &[], &[0]);
        assert!(names(&v).contains(&"duplicate"), "{:?}", names(&v));
    }

    #[test]
    fn an_acknowledged_append_missing_from_a_later_read_is_lost() {
        let h = vec![
            append(0, None, 1, Y, (0, 10)),
            append(1, Some(&[1]), 2, Y, (20, 30)),
            rl(2, Some(&[1]), (40, 50)),
        ];
        let (v, _) = check(&h, &[], &[0]);
        assert_eq!(names(&v), ["lost-write", "non-linearizable"]);
        let lost = v.iter().find(|v| v.check == Check::LostWrite);
        assert!(lost.is_some_and(|l| l.what.contains("#1 of 2")));
    }

    #[test]
    fn reads_that_are_not_prefixes_of_one_order_are_flagged() {
        let h = vec![
            append(0, None, 1, U, (0, 10)),
            append(1, None, 2, U, (0, 10)),
            append(2, Some(&[1]), 3, U, (0, 10)),
            rl(3, Some(&[1, 3]), (20, 30)),
            rl(4, Some(&[2]), (20, 30)),
        ];
        let (v, _) = check(&h, &[], &[0]);
        assert_eq!(names(&v), ["incompatible-order", "non-linearizable"]);
    }

    #[test]
    fn a_failed_append_must_never_appear() {
        let h = vec![
            append(0, None, 1, Y, (0, 10)),
            append(1, Some(&[1]), 2, N, (20, 30)),
            rl(2, Some(&[1, 2]), (40, 50)),
        ];
        let (v, _) = check(&h, &[], &[0]);
        assert_eq!(names(&v), ["failed-seen", "non-linearizable"]);
    }

    #[test]
    fn a_read_shorter_than_an_earlier_one_goes_back_in_time() {
        let h = vec![
            append(0, None, 1, U, (0, 10)),
            rl(1, Some(&[1]), (20, 30)),
            rl(2, None, (40, 50)),
        ];
        let (v, _) = check(&h, &[], &[0]);
        assert_eq!(names(&v), ["non-linearizable", "real-time"]);
    }

    #[test]
    fn the_nodes_must_list_the_same_services() {
        let reg =
            |id, name: &str, outcome| op(id, Kind::Register, name, Some(name), outcome, (0, 10));
        let h = vec![reg(0, "jepsen-1", Y), reg(1, "jepsen-2", U)];
        let scan = |node, names: &[&str]| NodeScan {
            node,
            by_prefix: BTreeMap::new(),
            services: Some(Ok(names.iter().map(|n| n.to_string()).collect())),
        };
        // the unknown one may be missing, if everywhere
        let (v, _) = check(
            &h,
            &[scan(0, &["jepsen-1"]), scan(1, &["jepsen-1"])],
            &[0, 1],
        );
        assert!(v.is_empty());
        let (v, _) = check(
            &h,
            &[
                scan(0, &["jepsen-1", "jepsen-2"]),
                scan(1, &["jepsen-2", "jepsen-9"]),
            ],
            &[0, 1],
        );
        assert_eq!(names(&v), ["divergence", "lost-write", "phantom"]);
    }

    #[test]
    fn a_key_out_of_budget_is_inconclusive_not_passed_nor_failed() {
        let h = vec![
            w(0, "a", Y, (0, 10)),
            w(1, "b", Y, (15, 30)),
            w(2, "c", Y, (16, 31)),
            r(3, Some("c"), (40, 50)),
        ];
        let tiny = linear::Budget {
            steps: 2,
            time: Duration::from_secs(1),
        };
        let (v, notes) = check_with(&h, &[], &[0], tiny);
        assert!(v.is_empty());
        assert_eq!(notes.inconclusive.len(), 1);
        assert_eq!(notes.inconclusive[0].0, "r/0");
        // the fallback checks still see a stale read
        let mut h = h;
        h.push(r(4, Some("a"), (60, 70)));
        let (v, notes) = check_with(&h, &[], &[0], tiny);
        assert_eq!(notes.inconclusive.len(), 1);
        assert_eq!(names(&v), ["stale-read"]);
    }

    #[test]
    fn a_long_valid_register_history_checks_within_seconds() {
        use linear::F;
        let entries = linear::tests::simulate(11, 2000, 6, 5);
        let name = |v: Option<u32>| v.map(|v| format!("v{v}"));
        let h: Vec<Op> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let span = (e.call, e.ret.unwrap_or(e.call + 50));
                let outcome = if e.ret.is_some() { Y } else { U };
                let mut o = match e.f {
                    F::Read(v) => r(i, name(v).as_deref(), span),
                    F::Write(v) => w(i, &format!("v{v}"), outcome, span),
                    F::Cas(from, to) => {
                        cas(i, name(from).as_deref(), &format!("v{to}"), outcome, span)
                    }
                };
                o.client = i % 6;
                o
            })
            .collect();
        let t = Instant::now();
        let (v, notes) = check(&h, &[], &[0]);
        assert!(v.is_empty(), "{}", v[0]);
        assert!(notes.inconclusive.is_empty());
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t.elapsed()
        );
    }
}
