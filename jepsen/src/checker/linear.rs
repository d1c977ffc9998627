//! A linearizability checker for one register with read, write and
//! compare-and-set: the Wing–Gong search with Lowe's memoization, as
//! Porcupine does it.
//!
//! The history of one key is a list of operations, each with the time it
//! was called and the time it returned. The search looks for a total order
//! of the operations that respects real time (an op that returned before
//! another was called comes first) and in which every op is legal for a
//! register: a read returns the value then held, a CAS succeeds only from
//! its expected value. It walks the calls in time order, linearizes the
//! first op that can take effect next, and backtracks when it meets the
//! return of an op it has not linearized; every (set of linearized ops,
//! register value) pair it has been in is remembered, so no configuration
//! is explored twice.
//!
//! An op with an *unknown* outcome (`ret: None`) may have taken effect at
//! any moment after its call, or never: it has no return event, so it
//! never forces anything, and the search succeeds once every op with a
//! known outcome is linearized. A failed op (known not applied; a failed
//! read says nothing) must not be given to this module at all.
//!
//! The search is exponential in the worst case; `Budget` bounds it, and
//! running out is reported as inconclusive, never as a pass. This module
//! must never report a violation for a history that has a linearization.

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// What an op does to the register; values are interned as numbers and
/// `None` is "no record".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F {
    /// returned this value
    Read(Option<u32>),
    /// wrote this value
    Write(u32),
    /// wrote the second value if the register held the first
    Cas(Option<u32>, u32),
}

/// One op of the key's history.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// the caller's handle for the op (reported back in a violation)
    pub op: usize,
    pub call: u64,
    /// `None`: the outcome is unknown (it may take effect any time after
    /// `call`, or never)
    pub ret: Option<u64>,
    pub f: F,
}

/// How much search one key may use.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub steps: u64,
    pub time: Duration,
}

/// Where the search got stuck: the deepest point it reached.
#[derive(Debug)]
pub struct Stuck {
    /// how many ops the longest linearizable prefix found has
    pub depth: usize,
    /// how many ops had to be linearized (known outcomes)
    pub required: usize,
    /// the last ops of that prefix, in order (handles)
    pub before: Vec<usize>,
    /// the register's value after them
    pub state: Option<u32>,
    /// the op whose return was reached without it having taken effect
    pub blocked: Option<usize>,
    /// other ops called by then and not yet linearized: none of them could
    /// take effect next either
    pub open: Vec<usize>,
}

#[derive(Debug)]
pub enum Verdict {
    Linearizable { steps: u64 },
    Violation { steps: u64, stuck: Stuck },
    Inconclusive { steps: u64, reason: String },
}

fn step(state: Option<u32>, f: F) -> Option<Option<u32>> {
    match f {
        F::Read(v) => (state == v).then_some(state),
        F::Write(v) => Some(Some(v)),
        F::Cas(e, n) => (state == e).then_some(Some(n)),
    }
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// The events in time order as a doubly linked list that ops can be lifted
/// out of and put back into (in reverse order).
struct Events {
    /// for node n (1-based; 0 is the head): the entry, and whether it is the
    /// return (else the call)
    what: Vec<(usize, bool)>,
    next: Vec<usize>,
    prev: Vec<usize>,
    call_node: Vec<usize>,
    ret_node: Vec<usize>,
}

impl Events {
    fn new(entries: &[Entry]) -> Events {
        let mut evs: Vec<(u64, bool, usize)> = Vec::with_capacity(entries.len() * 2);
        for (i, e) in entries.iter().enumerate() {
            evs.push((e.call, false, i));
            if let Some(r) = e.ret {
                // a return is never before its own call
                evs.push((r.max(e.call), true, i));
            }
        }
        // Calls before returns at the same time: such ops count as
        // concurrent, which only ever allows more orders.
        evs.sort_unstable();
        let m = evs.len();
        let mut ev = Events {
            what: Vec::with_capacity(m + 1),
            next: Vec::with_capacity(m + 1),
            prev: Vec::with_capacity(m + 1),
            call_node: vec![NIL; entries.len()],
            ret_node: vec![NIL; entries.len()],
        };
        ev.what.push((NIL, false));
        ev.prev.push(NIL);
        ev.next.push(if m > 0 { 1 } else { NIL });
        for (k, &(_, is_ret, i)) in evs.iter().enumerate() {
            let n = k + 1;
            ev.what.push((i, is_ret));
            ev.prev.push(n - 1);
            ev.next.push(if n < m { n + 1 } else { NIL });
            if is_ret {
                ev.ret_node[i] = n;
            } else {
                ev.call_node[i] = n;
            }
        }
        ev
    }

    fn remove(&mut self, n: usize) {
        let (p, x) = (self.prev[n], self.next[n]);
        self.next[p] = x;
        if x != NIL {
            self.prev[x] = p;
        }
    }

    fn reinsert(&mut self, n: usize) {
        let (p, x) = (self.prev[n], self.next[n]);
        self.next[p] = n;
        if x != NIL {
            self.prev[x] = n;
        }
    }

    fn lift(&mut self, i: usize) {
        self.remove(self.call_node[i]);
        if self.ret_node[i] != NIL {
            self.remove(self.ret_node[i]);
        }
    }

    fn unlift(&mut self, i: usize) {
        if self.ret_node[i] != NIL {
            self.reinsert(self.ret_node[i]);
        }
        self.reinsert(self.call_node[i]);
    }
}

/// Searches for a linearization of `entries`, starting from an absent
/// register.
pub fn check(entries: &[Entry], budget: Budget) -> Verdict {
    let started = Instant::now();
    let n = entries.len();
    let mut ev = Events::new(entries);
    let required = entries.iter().filter(|e| e.ret.is_some()).count();
    let mut left = required;
    let mut bits = vec![0u64; n.div_ceil(64)];
    let mut cache: HashSet<(Vec<u64>, Option<u32>)> = HashSet::new();
    // the linearized ops, with the state before each
    let mut stack: Vec<(usize, Option<u32>)> = Vec::new();
    let mut state: Option<u32> = None;
    let mut best: Option<Stuck> = None;
    let mut steps = 0u64;
    let mut cur = ev.next[HEAD];
    loop {
        if left == 0 {
            return Verdict::Linearizable { steps };
        }
        steps += 1;
        if steps > budget.steps {
            return Verdict::Inconclusive {
                steps,
                reason: format!("search budget of {} steps used up", budget.steps),
            };
        }
        if steps.is_multiple_of(4096) && started.elapsed() > budget.time {
            return Verdict::Inconclusive {
                steps,
                reason: format!("search time of {:?} used up", budget.time),
            };
        }
        let (i, is_ret) = if cur == NIL {
            (NIL, true)
        } else {
            ev.what[cur]
        };
        if !is_ret {
            if let Some(next_state) = step(state, entries[i].f) {
                bits[i / 64] |= 1 << (i % 64);
                if cache.insert((bits.clone(), next_state)) {
                    stack.push((i, state));
                    state = next_state;
                    ev.lift(i);
                    if entries[i].ret.is_some() {
                        left -= 1;
                    }
                    cur = ev.next[HEAD];
                    continue;
                }
                bits[i / 64] &= !(1 << (i % 64));
            }
            cur = ev.next[cur];
            continue;
        }
        // The return of an op not linearized (or the end): something
        // linearized earlier must go back.
        if best.as_ref().is_none_or(|b| stack.len() > b.depth) {
            let mut open = Vec::new();
            let mut k = ev.next[HEAD];
            while k != cur && k != NIL && open.len() < 8 {
                let (j, r) = ev.what[k];
                if !r && j != i {
                    open.push(entries[j].op);
                }
                k = ev.next[k];
            }
            best = Some(Stuck {
                depth: stack.len(),
                required,
                before: stack
                    .iter()
                    .rev()
                    .take(5)
                    .rev()
                    .map(|&(j, _)| entries[j].op)
                    .collect(),
                state,
                blocked: (i != NIL).then(|| entries[i].op),
                open,
            });
        }
        let Some((j, before)) = stack.pop() else {
            let stuck = best.unwrap_or(Stuck {
                depth: 0,
                required,
                before: vec![],
                state: None,
                blocked: None,
                open: vec![],
            });
            return Verdict::Violation { steps, stuck };
        };
        state = before;
        bits[j / 64] &= !(1 << (j % 64));
        ev.unlift(j);
        if entries[j].ret.is_some() {
            left += 1;
        }
        cur = ev.next[ev.call_node[j]];
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const BUDGET: Budget = Budget {
        steps: 10_000_000,
        time: Duration::from_secs(60),
    };

    fn e(op: usize, call: u64, ret: Option<u64>, f: F) -> Entry {
        Entry { op, call, ret, f }
    }

    fn ok(v: Verdict) -> bool {
        match v {
            Verdict::Linearizable { .. } => true,
            Verdict::Violation { .. } => false,
            Verdict::Inconclusive { reason, .. } => panic!("inconclusive: {reason}"),
        }
    }

    #[test]
    fn sequential_and_concurrent_histories() {
        use F::*;
        // write 1; read 1; cas 1->2; read 2
        let h = [
            e(0, 0, Some(1), Write(1)),
            e(1, 2, Some(3), Read(Some(1))),
            e(2, 4, Some(5), Cas(Some(1), 2)),
            e(3, 6, Some(7), Read(Some(2))),
        ];
        assert!(ok(check(&h, BUDGET)));
        // a read of 1 after 2 was written is stale
        let h = [
            e(0, 0, Some(1), Write(1)),
            e(1, 2, Some(3), Write(2)),
            e(2, 4, Some(5), Read(Some(1))),
        ];
        let Verdict::Violation { stuck, .. } = check(&h, BUDGET) else {
            panic!("a stale read passed");
        };
        assert_eq!(stuck.blocked, Some(2));
        assert_eq!(stuck.state, Some(2));
        // two overlapping writes: read in either order
        for (a, b) in [(1, 2), (2, 1)] {
            let h = [
                e(0, 0, Some(10), Write(1)),
                e(1, 1, Some(9), Write(2)),
                e(2, 11, Some(12), Read(Some(a))),
                e(3, 13, Some(14), Read(Some(a))),
            ];
            assert!(ok(check(&h, BUDGET)));
            let h = [
                e(0, 0, Some(10), Write(1)),
                e(1, 1, Some(9), Write(2)),
                e(2, 11, Some(12), Read(Some(a))),
                e(3, 13, Some(14), Read(Some(b))),
            ];
            assert!(!ok(check(&h, BUDGET)), "flip-flop {a} {b} passed");
        }
    }

    /// A random history of one register: `clients` clients doing reads,
    /// writes and CAS against a real (atomic) register, each op taking
    /// effect at a random moment inside its interval; some ops are made
    /// unknown (half of them really applied).
    pub fn simulate(seed: u64, ops: usize, clients: usize, unknowns: usize) -> Vec<Entry> {
        let mut rng = StdRng::seed_from_u64(seed);
        // (client busy until, ...): generate intervals per client
        let mut free_at = vec![0u64; clients];
        let mut planned: Vec<(u64, u64, u64, usize)> = Vec::new(); // (effect, call, ret, client)
        for k in 0..ops {
            let c = k % clients;
            let call = free_at[c] + rng.gen_range(0..5);
            let len = rng.gen_range(1..40);
            let ret = call + len;
            let effect = call + rng.gen_range(0..=len);
            free_at[c] = ret + 1;
            planned.push((effect, call, ret, c));
        }
        planned.sort();
        let mut state: Option<u32> = None;
        let mut next_value = 0u32;
        let mut out = Vec::new();
        for (_, call, ret, _) in planned {
            let f = match rng.gen_range(0..10) {
                0..4 => F::Read(state),
                4..7 => {
                    next_value += 1;
                    F::Write(next_value)
                }
                _ => {
                    next_value += 1;
                    // a CAS from the current value (succeeds)
                    F::Cas(state, next_value)
                }
            };
            match f {
                F::Write(v) | F::Cas(_, v) => state = Some(v),
                F::Read(_) => {}
            }
            out.push(Entry {
                op: out.len(),
                call,
                ret: Some(ret),
                f,
            });
        }
        // Unknowns: a few writes lose their reply (applied), and a few
        // writes never reached the register (not applied: drop their effect
        // by turning them into writes no one reads, which only an unapplied
        // write can be).
        let writes: Vec<usize> = (0..out.len())
            .filter(|&i| matches!(out[i].f, F::Write(_) | F::Cas(..)))
            .collect();
        for _ in 0..unknowns {
            let i = writes[rng.gen_range(0..writes.len())];
            out[i].ret = None;
        }
        for _ in 0..unknowns {
            next_value += 1;
            let call = rng.gen_range(0..free_at.iter().max().copied().unwrap_or(1));
            out.push(Entry {
                op: out.len(),
                call,
                ret: None,
                f: F::Write(next_value + 1_000_000),
            });
        }
        out.sort_by_key(|e| e.call);
        out
    }

    #[test]
    fn random_valid_histories_pass() {
        for seed in 0..30 {
            let h = simulate(seed, 200, 5, 3);
            assert!(ok(check(&h, BUDGET)), "seed {seed}");
        }
    }

    #[test]
    fn two_thousand_ops_on_one_key_check_within_seconds() {
        let h = simulate(7, 2000, 6, 5);
        let t = Instant::now();
        let v = check(&h, BUDGET);
        let took = t.elapsed();
        assert!(ok(v));
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }

    #[test]
    fn the_budget_makes_a_hard_search_inconclusive() {
        let h = simulate(3, 400, 6, 0);
        let tiny = Budget {
            steps: 10,
            time: Duration::from_secs(60),
        };
        assert!(matches!(check(&h, tiny), Verdict::Inconclusive { .. }));
    }
}
