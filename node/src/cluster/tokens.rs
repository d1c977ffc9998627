//! Join tokens as the cluster keeps them: each token minted (by a global
//! admin, through `micro cluster token`) leaves the SHA-256 of its secret
//! in the replicated state under `cluster/tokens/<id>`, expiring with the
//! token, so any member can check a token a joiner presents, and revoking
//! every token is one prefix delete.
//!
//! Must never: keep or log a token's secret (only its digest is stored),
//! or take a token whose record is gone, expired or different.

use std::time::Duration;

use micro_raft::{now_millis, Cond, Op, Replica, Txn};
use tonic::Status;

use super::pki::{secrets_equal, JoinToken};
use crate::keys::cluster as keys;

/// How long a token works unless told otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest a token may work.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// The answer for a token that is not (or no longer) this cluster's.
pub fn not_valid() -> Status {
    Status::permission_denied("the join token is not valid for this cluster")
}

/// The answer for a token whose time is up.
pub fn expired() -> Status {
    Status::permission_denied("the join token has expired")
}

/// Mints a token for the cluster whose CA has `ca_fingerprint`, working
/// for `ttl`; with `revoke_all`, every token issued before is deleted in
/// the same transaction.
pub async fn mint(
    replica: &Replica,
    ca_fingerprint: &str,
    ttl: Duration,
    revoke_all: bool,
) -> Result<JoinToken, Status> {
    if ttl < Duration::from_secs(1) {
        return Err(Status::invalid_argument(
            "a join token must work for at least 1 second",
        ));
    }
    if ttl > MAX_TTL {
        return Err(Status::invalid_argument(
            "a join token may work for at most 366 days",
        ));
    }
    let expires_at = (now_millis() + ttl.as_millis() as u64).div_ceil(1000);
    let token = JoinToken::mint(ca_fingerprint, expires_at);
    let mut ops = Vec::new();
    if revoke_all {
        ops.push(Op::DeletePrefix {
            prefix: keys::TOKENS.as_bytes().to_vec(),
        });
    }
    ops.push(Op::Put {
        key: keys::token(&token.id),
        value: token.secret_digest().into_bytes(),
        expires_at: Some(token.expires_at * 1000),
    });
    replica
        .write(Txn::ops(ops))
        .await
        .map_err(crate::grpc::status)?;
    Ok(token)
}

/// Checks a token a joiner presents against the current (linearized)
/// state. On success, returns the condition under which it still holds, for
/// the transaction that records the join.
pub async fn check(
    replica: &Replica,
    ca_fingerprint: &str,
    token: &JoinToken,
) -> Result<Cond, Status> {
    if token.ca_fingerprint != ca_fingerprint {
        return Err(not_valid());
    }
    let now = now_millis();
    if token.expires_at.saturating_mul(1000) <= now {
        return Err(expired());
    }
    replica.linearize().await.map_err(crate::grpc::status)?;
    let key = keys::token(&token.id);
    let record = replica
        .reader()
        .get(&key, now_millis())
        .map_err(crate::grpc::status)?
        .ok_or_else(not_valid)?;
    let digest = String::from_utf8_lossy(&record.value);
    if !secrets_equal(&digest, &token.secret_digest())
        || record.expires_at != Some(token.expires_at.saturating_mul(1000))
    {
        return Err(not_valid());
    }
    Ok(Cond::ValueEq(key, record.value))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn replica(dir: &std::path::Path) -> Replica {
        let r = Replica::open(dir, 1, micro_raft::Options::default())
            .await
            .unwrap();
        r.bootstrap_alone("127.0.0.1:1".into()).await.unwrap();
        for _ in 0..100 {
            if r.linearize().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        r
    }

    #[tokio::test]
    async fn tokens_work_until_they_expire_or_are_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let r = replica(dir.path()).await;
        let fp = "ab".repeat(32);
        let a = mint(&r, &fp, DEFAULT_TTL, false).await.unwrap();
        assert!(check(&r, &fp, &a).await.is_ok());
        // A token of another CA, a wrong secret, an edited expiry.
        assert_eq!(
            check(&r, &"cd".repeat(32), &a).await.unwrap_err().message(),
            "the join token is not valid for this cluster"
        );
        let wrong = JoinToken {
            secret: "x".repeat(32),
            ..a.clone()
        };
        assert!(check(&r, &fp, &wrong).await.is_err());
        let longer = JoinToken {
            expires_at: a.expires_at + 1000,
            ..a.clone()
        };
        assert!(check(&r, &fp, &longer).await.is_err());

        // A short one expires.
        let short = mint(&r, &fp, Duration::from_secs(1), false).await.unwrap();
        assert!(check(&r, &fp, &short).await.is_ok());
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(
            check(&r, &fp, &short).await.unwrap_err().message(),
            "the join token has expired"
        );

        // Revoking all: the old one stops, the new one works.
        let b = mint(&r, &fp, DEFAULT_TTL, true).await.unwrap();
        assert_eq!(
            check(&r, &fp, &a).await.unwrap_err().message(),
            "the join token is not valid for this cluster"
        );
        assert!(check(&r, &fp, &b).await.is_ok());

        assert!(mint(&r, &fp, Duration::ZERO, false).await.is_err());
        assert!(mint(&r, &fp, MAX_TTL * 2, false).await.is_err());
        r.shutdown().await;
    }
}
