//! Auth, all values JSON:
//!
//! * `auth/<ns>/accounts/<id>` an account (secret hashed)
//! * `auth/<ns>/names/<name>`  the id of the account with that name
//! * `auth/<ns>/refresh/<id>`  a refresh token (hashed), expiring with it
//! * `auth/micro/rules/<id>`   a rule: one set for the whole cluster, kept
//!   under the root namespace
//! * `auth/bootstrapped`       the first admin and default rule were made

/// The root namespace, where the cluster's one set of rules is kept
/// (`auth::ROOT_NAMESPACE`, which a test holds equal to this).
pub const RULES_NAMESPACE: &str = "micro";

pub const BOOTSTRAPPED: &[u8] = b"auth/bootstrapped";

pub fn account(ns: &str, id: &str) -> Vec<u8> {
    format!("auth/{ns}/accounts/{id}").into_bytes()
}

/// The prefix of every account of `ns`.
pub fn accounts(ns: &str) -> Vec<u8> {
    format!("auth/{ns}/accounts/").into_bytes()
}

pub fn name(ns: &str, name: &str) -> Vec<u8> {
    format!("auth/{ns}/names/{name}").into_bytes()
}

pub fn refresh(ns: &str, id: &str) -> Vec<u8> {
    format!("auth/{ns}/refresh/{id}").into_bytes()
}

/// The prefix of every refresh token of `ns`.
pub fn refreshes(ns: &str) -> Vec<u8> {
    format!("auth/{ns}/refresh/").into_bytes()
}

pub fn rule(id: &str) -> Vec<u8> {
    format!("auth/{RULES_NAMESPACE}/rules/{id}").into_bytes()
}

/// The prefix of every rule.
pub fn rules() -> Vec<u8> {
    format!("auth/{RULES_NAMESPACE}/rules/").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_do_not_overlap() {
        assert!(account("team", "a").starts_with(&accounts("team")));
        assert!(!account("team2", "a").starts_with(&accounts("team")));
        assert!(refresh("team", "r").starts_with(&refreshes("team")));
        assert!(rule("x").starts_with(&rules()));
        assert!(!name("micro", "x").starts_with(&rules()));
    }
}
