//! Authentication and authorization: the signing key, access tokens (JWTs
//! signed with Ed25519), secret hashing (argon2id), and the rule check every
//! call goes through.
//!
//! State (replicated, under `auth/`):
//! * `auth/<ns>/accounts/<id>`  account, secret hashed with argon2id
//! * `auth/<ns>/names/<name>`   id of the account with that name (unique)
//! * `auth/<ns>/refresh/<id>`   refresh token: account and SHA-256 of its secret,
//!   expiring with the token
//! * `auth/micro/rules/<id>`    the rules (one set for the cluster)
//! * `auth/bootstrapped`        set once the first admin and rule exist
//!
//! The signing key is this cluster's own (a 0600 file in the data dir), so a
//! token from another cluster never verifies. Must never: store or log a
//! secret or token in clear, or hold a lock across an await.

use crate::data_dir::{DataDir, File, FileError};
use crate::target::Target;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use micro_proto::auth::{Resource, Rule};
use micro_raft::{now_millis, Change, Replica};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The namespace whose rules apply to every call, and whose admins and
/// services may act in any namespace.
pub const ROOT_NAMESPACE: &str = "micro";
/// How long an access token lives unless configured otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(600);
/// How long a refresh token lives.
pub const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// An account as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredAccount {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub issuer: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub metadata: std::collections::HashMap<String, String>,
    /// argon2id PHC string
    pub secret_hash: String,
}

/// A refresh token as stored (its secret only as a hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredRefresh {
    pub account: String,
    pub secret_sha256: String,
}

/// What a verified access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// the account id
    pub sub: String,
    /// the account's namespace
    pub iss: String,
    #[serde(rename = "typ")]
    pub kind: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub iat: u64,
    pub exp: u64,
}

impl Claims {
    /// An account acts in its own namespace; admins and services of the
    /// root namespace act in every namespace.
    pub fn may_act_in(&self, namespace: &str) -> bool {
        self.iss == namespace
            || self.is_global_admin()
            || (self.kind == "service" && self.iss == ROOT_NAMESPACE)
    }

    /// Whether the account holds the `admin` scope.
    fn has_admin_scope(&self) -> bool {
        self.scopes.iter().any(|s| s == "admin")
    }

    /// An admin of the root namespace: admin of every namespace, of the
    /// rules and of the cluster.
    pub fn is_global_admin(&self) -> bool {
        self.iss == ROOT_NAMESPACE && self.has_admin_scope()
    }

    /// An admin of `namespace`: one of its own admins, or a global admin.
    /// An admin of another namespace has no rights here.
    pub fn is_admin_in(&self, namespace: &str) -> bool {
        self.has_admin_scope() && (self.iss == namespace || self.iss == ROOT_NAMESPACE)
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature is not this cluster's")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
}

/// The signing key of this cluster's access tokens.
pub struct Keys {
    signing: SigningKey,
    verifying: VerifyingKey,
}

const JWT_HEADER: &str = r#"{"alg":"EdDSA","typ":"JWT"}"#;

impl Keys {
    /// The key kept in the data dir, made the first time.
    pub fn load(data: &DataDir) -> Result<Keys, FileError> {
        Ok(Keys::from_seed(data.key_or_new(File::AuthSigningKey)?))
    }

    /// The signing key's seed: every node of a cluster signs with the same.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    pub fn from_seed(seed: [u8; 32]) -> Keys {
        let signing = SigningKey::from_bytes(&seed);
        Keys {
            verifying: signing.verifying_key(),
            signing,
        }
    }

    /// A signed access token carrying `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let body = serde_json::to_vec(claims).expect("claims serialize");
        let mut token = format!("{}.{}", B64URL.encode(JWT_HEADER), B64URL.encode(body));
        let sig = self.signing.sign(token.as_bytes());
        token.push('.');
        token.push_str(&B64URL.encode(sig.to_bytes()));
        token
    }

    /// The claims of a token this cluster signed and that has not expired
    /// at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let mut parts = token.rsplitn(2, '.');
        let (sig, signed) = match (parts.next(), parts.next()) {
            (Some(s), Some(rest)) => (s, rest),
            _ => return Err(TokenError::Malformed),
        };
        let (header, body) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        if B64URL.decode(header).ok().as_deref() != Some(JWT_HEADER.as_bytes()) {
            return Err(TokenError::Malformed);
        }
        let sig: [u8; 64] = B64URL
            .decode(sig)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or(TokenError::Malformed)?;
        self.verifying
            .verify(
                signed.as_bytes(),
                &ed25519_dalek::Signature::from_bytes(&sig),
            )
            .map_err(|_| TokenError::BadSignature)?;
        let body = B64URL.decode(body).map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&body).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Hashes a secret with argon2id and a random salt.
pub fn hash_secret(secret: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `secret` matches an argon2 hash.
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash)
        .map(|h| {
            argon2::Argon2::default()
                .verify_password(secret.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// SHA-256 of a high-entropy token secret (hex). Refresh secrets are 32
/// random bytes, so a fast hash is enough; argon2 is for human secrets.
pub fn token_hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A secret a person may have to type or paste on a command line: 32
/// letters and digits (about 190 bits). Never starts with `-`, which a
/// shell tool would read as a flag.
pub fn random_password() -> String {
    use rand::Rng;
    rand::rngs::OsRng
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// `n` random bytes, base64url.
pub fn random_token(n: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    B64URL.encode(b)
}

/// The outcome of a rule check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Granted,
    /// no (valid) account, and no public rule grants it: 401
    Unauthorized,
    /// an account without the right: 403
    Forbidden,
}

fn matches(pattern: &str, value: &str) -> bool {
    pattern == "*" || pattern == value
}

/// The rule check: rules whose type, name and endpoint equal the resource's
/// or `*`, highest priority first; a public rule decides at once; otherwise
/// an account is needed (scope `*` means any account, else the account must
/// hold the scope); no match is a denial.
pub fn check(rules: &[Rule], account: Option<&Claims>, resource: &Resource) -> Verdict {
    let mut applicable: Vec<&Rule> = rules
        .iter()
        .filter(|r| {
            r.resource.as_ref().is_some_and(|res| {
                matches(&res.r#type, &resource.r#type)
                    && matches(&res.name, &resource.name)
                    && matches(&res.endpoint, &resource.endpoint)
            })
        })
        .collect();
    applicable.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
    let denied = || {
        if account.is_some() {
            Verdict::Forbidden
        } else {
            Verdict::Unauthorized
        }
    };
    for rule in applicable {
        let granted = rule.access == "granted";
        if rule.scope.is_empty() {
            return if granted { Verdict::Granted } else { denied() };
        }
        let Some(acc) = account else {
            // A rule for accounts grants nothing to anonymous callers, but
            // one that takes a right away from accounts takes it from them
            // too: anonymous callers never get more than an account.
            if granted {
                continue;
            }
            return Verdict::Unauthorized;
        };
        if rule.scope == "*" || acc.scopes.contains(&rule.scope) {
            return if granted {
                Verdict::Granted
            } else {
                Verdict::Forbidden
            };
        }
    }
    denied()
}

/// Verifies tokens and checks rules on every call. The rules are kept in
/// memory and reloaded when the replicated rules change.
pub struct Authority {
    replica: Replica,
    keys: Keys,
    rules: RwLock<Arc<Vec<Rule>>>,
    pub token_ttl: Duration,
}

fn rules_prefix() -> Vec<u8> {
    crate::keys::auth::rules()
}

impl Authority {
    pub fn new(replica: Replica, keys: Keys, token_ttl: Duration) -> Arc<Authority> {
        let a = Arc::new(Authority {
            replica,
            keys,
            rules: RwLock::new(Arc::new(Vec::new())),
            token_ttl,
        });
        a.reload_rules();
        a
    }

    /// The signing keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Re-reads the rules from the local replica.
    pub fn reload_rules(&self) {
        let mut rules = Vec::new();
        for (_, rec) in self
            .replica
            .reader()
            .scan(&rules_prefix(), now_millis(), false)
            .flatten()
        {
            if let Ok(r) = serde_json::from_slice::<RuleJson>(&rec.value) {
                rules.push(r.into());
            }
        }
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
    }

    /// The current rules.
    pub fn rules(&self) -> Arc<Vec<Rule>> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps the in-memory rules in step with the replicated ones.
    pub fn spawn_rule_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let mut changes = self.replica.subscribe();
        tokio::spawn(async move {
            let prefix = rules_prefix();
            loop {
                match changes.recv().await {
                    Ok(batch) => {
                        let touched = batch.iter().any(|c| match c {
                            Change::Put { key, .. } | Change::Delete { key } => {
                                key.starts_with(&prefix)
                            }
                            Change::Reset => true,
                        });
                        if touched {
                            me.reload_rules();
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => me.reload_rules(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    }

    /// Checks a call of `service:<name>:<endpoint>` in `namespace` by the
    /// bearer of `token`. Returns the caller's claims when it had a valid
    /// token, or the denial as a gRPC status.
    pub fn authorize(
        &self,
        token: Option<&str>,
        namespace: &str,
        name: &str,
        endpoint: &str,
    ) -> Result<Option<Claims>, tonic::Status> {
        let now = now_millis() / 1000;
        // A token that does not verify is refused, not taken as anonymous:
        // the caller meant to be someone and should hear why it is not.
        let claims = match token {
            None => None,
            Some(t) => Some(self.keys.verify(t, now).map_err(|e| {
                tonic::Status::unauthenticated(format!(
                    "Unauthorized call made to {name}:{endpoint}: {e}"
                ))
            })?),
        };
        let resource = Resource {
            r#type: "service".into(),
            name: name.to_string(),
            endpoint: endpoint.to_string(),
        };
        let rules = self.rules();
        match check(&rules, claims.as_ref(), &resource) {
            Verdict::Granted => {}
            Verdict::Unauthorized => {
                return Err(tonic::Status::unauthenticated(format!(
                    "Unauthorized call made to {name}:{endpoint}"
                )))
            }
            Verdict::Forbidden => {
                return Err(tonic::Status::permission_denied(format!(
                    "Forbidden call made to {name}:{endpoint}"
                )))
            }
        }
        if let Some(c) = &claims {
            if !c.may_act_in(namespace) {
                return Err(tonic::Status::permission_denied(format!(
                    "Forbidden call made to {name}:{endpoint}: account {} cannot act in namespace {namespace}",
                    c.sub
                )));
            }
        }
        Ok(claims)
    }
}

/// A rule as stored (the proto's shape in JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleJson {
    pub id: String,
    pub scope: String,
    pub resource_type: String,
    pub resource_name: String,
    pub resource_endpoint: String,
    pub access: String,
    pub priority: i32,
}

impl From<RuleJson> for Rule {
    fn from(r: RuleJson) -> Rule {
        Rule {
            id: r.id,
            scope: r.scope,
            resource: Some(Resource {
                r#type: r.resource_type,
                name: r.resource_name,
                endpoint: r.resource_endpoint,
            }),
            access: r.access,
            priority: r.priority,
        }
    }
}

impl From<&Rule> for RuleJson {
    fn from(r: &Rule) -> RuleJson {
        let res = r.resource.clone().unwrap_or_default();
        RuleJson {
            id: r.id.clone(),
            scope: r.scope.clone(),
            resource_type: res.r#type,
            resource_name: res.name,
            resource_endpoint: res.endpoint,
            access: r.access.clone(),
            priority: r.priority,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, scope: &str, res: &str, access: &str, priority: i32) -> Rule {
        let mut p = res.split(':');
        Rule {
            id: id.into(),
            scope: scope.into(),
            resource: Some(Resource {
                r#type: p.next().unwrap().into(),
                name: p.next().unwrap().into(),
                endpoint: p.next().unwrap().into(),
            }),
            access: access.into(),
            priority,
        }
    }

    fn claims(scopes: &[&str]) -> Claims {
        Claims {
            sub: "u".into(),
            iss: "micro".into(),
            kind: "user".into(),
            name: "u".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            iat: 0,
            exp: u64::MAX,
        }
    }

    fn res(name: &str, ep: &str) -> Resource {
        Resource {
            r#type: "service".into(),
            name: name.into(),
            endpoint: ep.into(),
        }
    }

    #[test]
    fn the_rule_check() {
        let default = vec![rule("default", "", "*:*:*", "granted", 0)];
        assert_eq!(
            check(&default, None, &res("hw", "Hw.Call")),
            Verdict::Granted
        );

        let locked = vec![
            rule("onlyloggedin", "*", "*:*:*", "granted", 0),
            rule("auth-public", "", "service:auth:*", "granted", 0),
        ];
        assert_eq!(
            check(&locked, None, &res("hw", "Hw.Call")),
            Verdict::Unauthorized
        );
        assert_eq!(
            check(&locked, Some(&claims(&[])), &res("hw", "Hw.Call")),
            Verdict::Granted
        );
        assert_eq!(
            check(&locked, None, &res("auth", "Auth.Token")),
            Verdict::Granted
        );

        let scoped = vec![
            rule("admins", "admin", "service:store:*", "granted", 1),
            rule("deny-store", "*", "service:store:*", "denied", 0),
        ];
        assert_eq!(
            check(
                &scoped,
                Some(&claims(&["admin"])),
                &res("store", "Store.Read")
            ),
            Verdict::Granted
        );
        assert_eq!(
            check(
                &scoped,
                Some(&claims(&["dev"])),
                &res("store", "Store.Read")
            ),
            Verdict::Forbidden
        );
        assert_eq!(
            check(&scoped, None, &res("store", "Store.Read")),
            Verdict::Unauthorized
        );
        assert_eq!(
            check(&scoped, Some(&claims(&["dev"])), &res("hw", "Hw.Call")),
            Verdict::Forbidden,
            "no match is denied"
        );

        let public_deny = vec![
            rule("nope", "", "service:hw:Hw.Call", "denied", 5),
            rule("all", "", "*:*:*", "granted", 0),
        ];
        assert_eq!(
            check(&public_deny, None, &res("hw", "Hw.Call")),
            Verdict::Unauthorized,
            "higher priority first"
        );
        assert_eq!(
            check(&public_deny, None, &res("hw", "Hw.Other")),
            Verdict::Granted
        );

        // The bootstrap rule plus a deny for accounts: anonymous callers
        // must not keep what logged-in accounts lost.
        let deny_accounts = vec![
            rule("no-store", "*", "service:store:*", "denied", 10),
            rule("default", "", "*:*:*", "granted", 0),
        ];
        assert_eq!(
            check(
                &deny_accounts,
                Some(&claims(&[])),
                &res("store", "Store.Read")
            ),
            Verdict::Forbidden
        );
        assert_eq!(
            check(&deny_accounts, None, &res("store", "Store.Read")),
            Verdict::Unauthorized,
            "a deny rule for accounts applies to anonymous callers"
        );
        let deny_scope = vec![
            rule("no-dev", "dev", "service:store:*", "denied", 10),
            rule("default", "", "*:*:*", "granted", 0),
        ];
        assert_eq!(
            check(&deny_scope, None, &res("store", "Store.Read")),
            Verdict::Unauthorized
        );
        assert_eq!(
            check(
                &deny_scope,
                Some(&claims(&["ops"])),
                &res("store", "Store.Read")
            ),
            Verdict::Granted,
            "a deny for one scope leaves other accounts alone"
        );
    }

    #[test]
    fn tokens_verify_only_here_and_only_until_expiry() {
        let keys = Keys::from_seed([7; 32]);
        let mut c = claims(&["admin"]);
        c.exp = 1000;
        let token = keys.sign(&c);
        assert_eq!(keys.verify(&token, 999).unwrap(), c);
        assert_eq!(keys.verify(&token, 1000), Err(TokenError::Expired));
        let other = Keys::from_seed([8; 32]);
        assert_eq!(
            other.verify(&token, 1),
            Err(TokenError::BadSignature),
            "another cluster's token"
        );
        // tamper with the claims: give ourselves a longer life
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut forged = c.clone();
        forged.exp = u64::MAX;
        parts[1] = B64URL.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            keys.verify(&parts.join("."), 1),
            Err(TokenError::BadSignature)
        );
        assert_eq!(keys.verify("not-a-token", 1), Err(TokenError::Malformed));
    }

    #[test]
    fn secrets_hash_and_verify() {
        let h = hash_secret("micro").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("micro"));
        assert!(verify_secret("micro", &h));
        assert!(!verify_secret("Micro", &h));
        assert!(!verify_secret("micro", "garbage"));
    }

    #[test]
    fn namespaces_bound_accounts() {
        let mut c = claims(&[]);
        c.iss = "team".into();
        assert!(c.may_act_in("team"));
        assert!(!c.may_act_in("micro"));
        c.scopes = vec!["admin".into()];
        assert!(
            !c.may_act_in("micro"),
            "an admin of another namespace is no admin here"
        );
        assert!(c.is_admin_in("team") && !c.is_admin_in("micro") && !c.is_global_admin());
        c.iss = "micro".into();
        assert!(c.may_act_in("team") && c.is_admin_in("team") && c.is_global_admin());
        let mut svc = claims(&[]);
        svc.kind = "service".into();
        assert!(svc.may_act_in("anything"), "services of micro act anywhere");
    }
}

/// gRPC paths anyone may call: health checks and reflection.
fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

// The checks that hold whatever the rules say.

/// The claims the guard found for the caller of `req`, if any.
pub fn caller<T>(req: &tonic::Request<T>) -> Option<Claims> {
    req.extensions().get::<Claims>().cloned()
}

/// The caller, who must be logged in and allowed to act in `namespace`,
/// whatever the public rules say (running code, reading secrets).
pub fn require_account<'a>(
    c: &'a Option<Claims>,
    namespace: &str,
) -> Result<&'a Claims, tonic::Status> {
    match c {
        None => Err(tonic::Status::unauthenticated("log in to do this")),
        Some(c) if c.may_act_in(namespace) => Ok(c),
        Some(c) => Err(tonic::Status::permission_denied(format!(
            "account {} cannot act in namespace {namespace}",
            c.sub
        ))),
    }
}

/// The caller, who must be an admin of `namespace` (its own admin, or an
/// admin of the root namespace).
pub fn require_admin<'a>(
    c: &'a Option<Claims>,
    namespace: &str,
) -> Result<&'a Claims, tonic::Status> {
    match c {
        None => Err(tonic::Status::unauthenticated(
            "log in as an admin to do this",
        )),
        Some(c) if c.is_admin_in(namespace) => Ok(c),
        Some(c) => Err(tonic::Status::permission_denied(format!(
            "account {} is not an admin of namespace {namespace}",
            c.sub
        ))),
    }
}

/// The caller, who must be an admin of the root namespace: the rules and
/// the cluster are everyone's.
pub fn require_global_admin(c: &Option<Claims>) -> Result<&Claims, tonic::Status> {
    require_admin(c, ROOT_NAMESPACE)
}

/// Marks a request whose caller was already checked for this target (the
/// gateway did, and passes it to this node's own stack): the guard lets it
/// through with these claims if the request is for exactly that target,
/// and checks it anew otherwise. Only in-process code sets extensions.
#[derive(Debug, Clone)]
pub struct Checked(pub Target, pub Option<Claims>);

/// Middleware on the gRPC endpoint: every call is checked against the rules
/// before it reaches a core service or the router; the caller's claims ride
/// along in the request's extensions.
pub async fn grpc_guard(
    axum::extract::State(authority): axum::extract::State<Arc<Authority>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = req.uri().path().to_string();
    if is_open(&path) {
        return next.run(req).await;
    }
    let target = match Target::checked(req.headers(), &path) {
        Ok(t) => t,
        Err(status) => return status.into_http(),
    };
    // The gateway already checked this very target: no second check.
    let checked = match req.extensions_mut().remove::<Checked>() {
        Some(Checked(done, claims)) if done == target => Ok(claims),
        _ => authority.authorize(
            micro::bearer::from_headers(req.headers()),
            &target.namespace,
            &target.service,
            &target.endpoint,
        ),
    };
    match checked {
        Ok(claims) => {
            if let Some(claims) = claims {
                req.extensions_mut().insert(claims);
            }
            // Resolved once: the router takes the target from here.
            req.extensions_mut().insert(target);
            next.run(req).await
        }
        Err(status) => status.into_http(),
    }
}

#[cfg(test)]
mod guard_tests {
    use super::*;

    #[test]
    fn rules_are_kept_under_the_root_namespace() {
        assert_eq!(crate::keys::auth::RULES_NAMESPACE, ROOT_NAMESPACE);
    }

    #[test]
    fn core_paths_cannot_be_renamed_by_metadata() {
        let mut h = http::HeaderMap::new();
        h.insert("micro-service", "public-thing".parse().unwrap());
        let resource_of = |h: &http::HeaderMap, path: &str| {
            Target::checked(h, path).map(|t| (t.service, t.endpoint))
        };
        assert_eq!(
            resource_of(&h, "/store.Store/Write").unwrap(),
            ("store".into(), "Store.Write".into())
        );
        assert_eq!(
            resource_of(&h, "/auth.Rules/Create").unwrap(),
            ("auth".into(), "Rules.Create".into())
        );
        assert_eq!(
            resource_of(&h, "/cluster.Cluster/Token").unwrap(),
            ("cluster".into(), "Cluster.Token".into()),
            "the cluster service cannot be renamed either"
        );
        assert_eq!(
            resource_of(&h, "/greeter.Greeter/Call").unwrap(),
            ("public-thing".into(), "Greeter.Call".into())
        );
        let h = http::HeaderMap::new();
        assert_eq!(
            resource_of(&h, "/greeter.Greeter/Call").unwrap(),
            ("greeter".into(), "Greeter.Call".into())
        );
    }
}
