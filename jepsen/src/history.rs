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
    /// a compare-and-set of a register: write `value` only if it holds
    /// `expected` (sent as a version condition: values are unique, so the
    /// version read with `expected` names it)
    CasRegister,
    /// a linearizable read of a unique key whose write was acknowledged
    ReadUnique,
    /// append the element `value` to the list `a/<k>`: a compare-and-set
    /// from the list it read (`list`) to that list and the element
    Append,
    /// a linearizable read of a list `a/<k>` (the list in `list`)
    ReadList,
    /// registering the test service `value` through the registry (`key`
    /// is its name)
    Register,
    /// publishing the event `value` (also its message id) to the topic
    /// `key`; `version` is the sequence the reply gave
    Publish,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::WriteUnique,
        Kind::ReadUnique,
        Kind::WriteRegister,
        Kind::CasRegister,
        Kind::ReadRegister,
        Kind::Append,
        Kind::ReadList,
        Kind::Register,
        Kind::Publish,
    ];

    /// Whether `value` is what the op stored at `key` (a write or a CAS).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Kind::WriteUnique | Kind::WriteRegister | Kind::CasRegister
        )
    }

    /// Whether the op only reads.
    pub fn is_read(self) -> bool {
        matches!(self, Kind::ReadRegister | Kind::ReadUnique | Kind::ReadList)
    }

    /// An op on a register `r/<k>`.
    pub fn is_register(self) -> bool {
        matches!(
            self,
            Kind::WriteRegister | Kind::ReadRegister | Kind::CasRegister
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::WriteUnique => "write unique key",
            Kind::WriteRegister => "write register",
            Kind::ReadRegister => "read register",
            Kind::CasRegister => "cas register",
            Kind::ReadUnique => "read unique key",
            Kind::Append => "append to list",
            Kind::ReadList => "read list",
            Kind::Register => "register service",
            Kind::Publish => "publish event",
        }
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Acknowledged (a write) or answered (a read; `value` or `list` holds
    /// what it returned, `None` for not found).
    Ok,
    /// Refused in a way that says the request was not carried out (an
    /// invalid argument, a permission error, a compare-and-set conflict),
    /// or a read that got no answer. The linearizability checker takes a
    /// failed write as not applied; a failed read says nothing.
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
    /// a write or CAS: the value written; a successful read: the value it
    /// returned (`None` when the key was not found); an append: the
    /// element appended
    pub value: Option<String>,
    /// a CAS: the value it required the register to hold (`None`: absent)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// a list read: the list it returned (`None`: not found); an append:
    /// the list it extended (`None`: it required the key to be absent)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<Vec<u64>>,
    /// a read: the version of the record it returned; a write: the new
    /// version the reply gave
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    pub outcome: Outcome,
    /// why it failed or is unknown
    pub error: Option<String>,
    pub start_us: u64,
    pub end_us: u64,
}

impl Op {
    /// An ok op of `kind` on `key` with nothing read or written yet.
    pub fn new(client: usize, node: usize, kind: Kind, key: &str) -> Op {
        Op {
            id: 0,
            client,
            node,
            kind,
            key: key.to_string(),
            value: None,
            expected: None,
            list: None,
            version: None,
            outcome: Outcome::Ok,
            error: None,
            start_us: 0,
            end_us: 0,
        }
    }
}

fn show(v: &Option<String>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "<absent>".to_string(),
    }
}

fn show_list(l: &Option<Vec<u64>>) -> String {
    match l {
        Some(l) => format!("{l:?}"),
        None => "<absent>".to_string(),
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = if self.client == FINAL_CLIENT {
            "final".to_string()
        } else {
            format!("c{}", self.client)
        };
        let ok = self.outcome == Outcome::Ok;
        let what = match self.kind {
            Kind::WriteUnique | Kind::WriteRegister => {
                format!("write  {:<8} = {}", self.key, show(&self.value))
            }
            Kind::ReadRegister | Kind::ReadUnique if ok => {
                format!("read   {:<8} = {}", self.key, show(&self.value))
            }
            Kind::ReadRegister | Kind::ReadUnique => format!("read   {:<8}", self.key),
            Kind::CasRegister => format!(
                "cas    {:<8} {} -> {}",
                self.key,
                show(&self.expected),
                show(&self.value)
            ),
            Kind::Append => format!(
                "append {:<8} {} + {}",
                self.key,
                show_list(&self.list),
                self.value.as_deref().unwrap_or("?")
            ),
            Kind::ReadList if ok => match (&self.list, &self.value) {
                (None, Some(raw)) => format!("read   {:<8} = unreadable {raw:?}", self.key),
                (l, _) => format!("read   {:<8} = {}", self.key, show_list(l)),
            },
            Kind::ReadList => format!("read   {:<8}", self.key),
            Kind::Register => format!("register service {}", self.key),
            Kind::Publish => match self.version {
                Some(seq) => format!("publish {:<8} {} -> seq {seq}", self.key, show(&self.value)),
                None => format!("publish {:<8} {}", self.key, show(&self.value)),
            },
        };
        let outcome = match self.outcome {
            Outcome::Ok => "ok".to_string(),
            Outcome::Fail => format!("FAIL ({})", self.error.as_deref().unwrap_or("")),
            Outcome::Unknown => format!("UNKNOWN ({})", self.error.as_deref().unwrap_or("")),
        };
        write!(
            f,
            "#{:<6} {:>5}@n{} {} {} [{:.6}s .. {:.6}s]",
            self.id,
            who,
            self.node,
            what,
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
