//! The identity foca gossips about.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Who a member is, as seen on the wire.
///
/// foca groups identities by [`foca::Identity::addr`], the advertised socket
/// address: two identities with the same address are the same slot, and
/// the one with the larger `bump` wins. `bump` is taken from the wall clock
/// (milliseconds) when a node starts, so a restarted process with the same
/// node id and address replaces its previous, possibly Down, self. When the
/// cluster declares a live node Down, foca asks for a renewed identity and
/// the node comes back with a larger bump.
///
/// Keying by address (rather than node id) is what lets `announce` reach a
/// peer we only know by address: foca accepts an announce whose destination
/// shares its address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Ident {
    pub(crate) node_id: u64,
    pub(crate) addr: SocketAddr,
    pub(crate) bump: u64,
}

impl Ident {
    /// A fresh identity for a process starting now.
    pub(crate) fn fresh(node_id: u64, addr: SocketAddr) -> Self {
        Self {
            node_id,
            addr,
            bump: next_bump(0),
        }
    }

    /// A placeholder used only as the destination of an announce: the
    /// receiver matches it by address alone.
    pub(crate) fn placeholder(addr: SocketAddr) -> Self {
        Self {
            node_id: 0,
            addr,
            bump: 0,
        }
    }
}

impl foca::Identity for Ident {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            node_id: self.node_id,
            addr: self.addr,
            bump: next_bump(self.bump),
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // A total order, so exactly one side of any conflict wins.
        (self.bump, self.node_id) > (adversary.bump, adversary.node_id)
    }
}

/// Last bump handed out by this process, so that two identities created in
/// the same millisecond (tests restart nodes quickly) still differ.
static LAST_BUMP: AtomicU64 = AtomicU64::new(0);

/// A bump strictly larger than `previous` and than any bump this process has
/// produced before, and at least the current wall clock in milliseconds.
fn next_bump(previous: u64) -> u64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut last = LAST_BUMP.load(Ordering::Relaxed);
    loop {
        let candidate = now_ms
            .max(previous.saturating_add(1))
            .max(last.saturating_add(1));
        match LAST_BUMP.compare_exchange_weak(last, candidate, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => return candidate,
            Err(seen) => last = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    #[test]
    fn renewed_identity_wins() {
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let first = Ident::fresh(1, addr);
        let renewed = first.renew().unwrap();
        assert_eq!(renewed.node_id, 1);
        assert_eq!(renewed.addr, addr);
        assert!(renewed.win_addr_conflict(&first));
        assert!(!first.win_addr_conflict(&renewed));

        let restarted = Ident::fresh(1, addr);
        assert!(restarted.bump > renewed.bump);
        assert!(restarted.win_addr_conflict(&renewed));
    }
}
