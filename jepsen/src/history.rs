//! The history: every operation a client (or the final checker) attempted,
//! with when it started and ended on the harness's one monotonic clock,
//! which client made it through which node, and what came of it.
//!
//! Times are microseconds since the run's start (`Clock`). An operation's
//! start is taken just before its request is sent and its end just after
//! its reply (or its timeout), so the interval always contains the moment
//! the cluster actually carried it out.

use std::fmt;
use std::time::Instant;

use serde::Serialize;

/// The client number given to the reads the checker makes after healing.
pub const FINAL_CLIENT: usize = usize::MAX;

/// The run's clock: microseconds since it started.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    /// Microseconds since the start.
    pub fn now(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }

    /// `[  12.345s]`, for log lines.
    pub fn stamp(&self) -> String {
        format!("[{:>8.3}s]", self.now() as f64 / 1e6)
    }
}

/// What an operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    /// a write of a fresh key `w/<client>/<n>`, written exactly once
    WriteUnique,
    /// a write of a unique value to a shared register `r/<k>`
    WriteRegister,
    /// a linearizable read of a shared register
    ReadRegister,
    /// a linearizable read of a unique key whose write was acknowledged
    ReadUnique,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::WriteUnique,
        Kind::WriteRegister,
        Kind::ReadRegister,
        Kind::ReadUnique,
    ];

    pub fn is_write(self) -> bool {
        matches!(self, Kind::WriteUnique | Kind::WriteRegister)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::WriteUnique => "write unique key",
            Kind::WriteRegister => "write register",
            Kind::ReadRegister => "read register",
            Kind::ReadUnique => "read unique key",
        }
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Acknowledged (a write) or answered (a read; `value` holds what it
    /// returned, `None` for not found).
    Ok,
    /// Refused in a way that says the request was not carried out (an
    /// invalid argument, a permission error), or a read that got no answer.
    /// The checker never relies on a failed write not having happened.
    Fail,
    /// A write whose fate is unknown: it timed out, the connection broke, or
    /// the node answered unavailable. It may or may not have been applied,
    /// now or later.
    Unknown,
}

/// One operation.
#[derive(Clone, Debug, Serialize)]
pub struct Op {
    /// position in the merged history (ordered by start)
    pub id: usize,
    pub client: usize,
    /// the node the client talked to
    pub node: usize,
    pub kind: Kind,
    pub key: String,
    /// a write: the value written; a successful read: the value it
    /// returned (`None` when the key was not found)
    pub value: Option<String>,
    pub outcome: Outcome,
    /// why it failed or is unknown
    pub error: Option<String>,
    pub start_us: u64,
    pub end_us: u64,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = if self.client == FINAL_CLIENT {
            "final".to_string()
        } else {
            format!("c{}", self.client)
        };
        let verb = if self.kind.is_write() {
            "write"
        } else {
            "read "
        };
        let value = match &self.value {
            Some(v) => format!("{v:?}"),
            None if self.outcome == Outcome::Ok => "<not found>".to_string(),
            None => "-".to_string(),
        };
        let outcome = match self.outcome {
            Outcome::Ok => "ok".to_string(),
            Outcome::Fail => format!("FAIL ({})", self.error.as_deref().unwrap_or("")),
            Outcome::Unknown => format!("UNKNOWN ({})", self.error.as_deref().unwrap_or("")),
        };
        write!(
            f,
            "#{:<6} {:>5}@n{} {} {:<10} = {:<14} {} [{:.6}s .. {:.6}s]",
            self.id,
            who,
            self.node,
            verb,
            self.key,
            value,
            outcome,
            self.start_us as f64 / 1e6,
            self.end_us as f64 / 1e6
        )
    }
}

/// Merges the clients' histories into one ordered by start time and
/// numbers the operations.
pub fn merge(parts: Vec<Vec<Op>>) -> Vec<Op> {
    let mut all: Vec<Op> = parts.into_iter().flatten().collect();
    all.sort_by_key(|o| (o.start_us, o.end_us, o.client));
    for (i, op) in all.iter_mut().enumerate() {
        op.id = i;
    }
    all
}

/// Appends operations to the history, numbering them after the last one.
pub fn append(history: &mut Vec<Op>, more: Vec<Op>) {
    for mut op in more {
        op.id = history.len();
        history.push(op);
    }
}
