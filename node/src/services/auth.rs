//! The Auth, Accounts and Rules services over the replicated state (the
//! layout is in [`crate::auth`]).
//!
//! Who may call these is decided like any call, by the rules; on top,
//! managing accounts and rules needs the `admin` scope, and an account only
//! changes its own secret unless it is an admin.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use micro_proto::auth::accounts_server::Accounts;
use micro_proto::auth::auth_server::Auth;
use micro_proto::auth::rules_server::Rules;
use micro_proto::auth::*;
use micro_raft::{now_millis, Cond, Op, Replica, Txn};
use tonic::{Request, Response, Status};

use crate::auth::{
    caller, hash_secret, random_password, random_token, require_admin, require_global_admin,
    token_hash, verify_secret, Authority, Claims, RuleJson, StoredAccount, StoredRefresh,
    REFRESH_TTL, ROOT_NAMESPACE,
};
use crate::grpc::{check_name, namespace, status};
use crate::login_limit::LoginLimiter;

/// The first admin's password when none is configured.
pub const DEFAULT_ADMIN_PASSWORD: &str = "micro";

use crate::keys::auth::{
    account as account_key, name as name_key, refresh as refresh_key, rule as rule_key,
    BOOTSTRAPPED,
};

fn invalid_credentials() -> Status {
    Status::unauthenticated("invalid credentials")
}

/// Account operations shared by the three services and the runtime.
#[derive(Clone)]
pub struct AuthStore {
    replica: Replica,
    authority: Arc<Authority>,
    limiter: Arc<LoginLimiter>,
}

impl AuthStore {
    pub fn new(replica: Replica, authority: Arc<Authority>) -> AuthStore {
        AuthStore {
            replica,
            authority,
            limiter: Arc::new(LoginLimiter::for_this_machine()),
        }
    }

    /// Hashes a secret. Hashing is slow and memory-hungry by design: it runs
    /// off the async threads, a bounded number at a time.
    async fn hash(&self, secret: String) -> Result<String, Status> {
        self.limiter
            .hash(move || hash_secret(&secret))
            .await?
            .map_err(Status::internal)
    }

    /// Whether `secret` matches `hash`, checked like [`Self::hash`] runs.
    async fn verify(&self, secret: String, hash: String) -> Result<bool, Status> {
        self.limiter
            .hash(move || verify_secret(&secret, &hash))
            .await
    }

    /// Checks a secret someone typed for `account` (as they named it) from
    /// `source`, under the login limits.
    async fn verify_attempt(
        &self,
        ns: &str,
        account: &str,
        source: Option<IpAddr>,
        secret: String,
        acc: Option<&StoredAccount>,
    ) -> Result<bool, Status> {
        // Loopback callers are this host's CLI or this node's own gateway,
        // which carries calls of many people: they are limited per
        // account only.
        let source = source.filter(|ip| !ip.is_loopback());
        // Keyed by the account's id when it exists, so naming it by id and
        // by name does not double the guesses.
        let who = format!("{ns}/{}", acc.map_or(account, |a| a.id.as_str()));
        self.limiter.check(&who, source)?;
        let ok = match acc {
            Some(a) => self.verify(secret, a.secret_hash.clone()).await?,
            None => false,
        };
        if ok {
            self.limiter.succeeded(&who);
        } else {
            self.limiter.failed(&who, source);
        }
        Ok(ok)
    }

    pub(crate) fn account(&self, ns: &str, id: &str) -> Result<Option<StoredAccount>, Status> {
        match self
            .replica
            .reader()
            .get(&account_key(ns, id), now_millis())
            .map_err(status)?
        {
            Some(rec) => {
                Ok(Some(serde_json::from_slice(&rec.value).map_err(|e| {
                    Status::internal(format!("corrupt account: {e}"))
                })?))
            }
            None => Ok(None),
        }
    }

    /// An account by id, or else by name.
    fn find(&self, ns: &str, id_or_name: &str) -> Result<Option<StoredAccount>, Status> {
        if let Some(a) = self.account(ns, id_or_name)? {
            return Ok(Some(a));
        }
        match self
            .replica
            .reader()
            .get(&name_key(ns, id_or_name), now_millis())
            .map_err(status)?
        {
            Some(rec) => self.account(ns, &String::from_utf8_lossy(&rec.value)),
            None => Ok(None),
        }
    }

    /// Creates an account; fails if its id or name is taken.
    pub async fn create(&self, acc: StoredAccount) -> Result<(), Status> {
        let raw = serde_json::to_vec(&acc).map_err(|e| Status::internal(e.to_string()))?;
        let txn = Txn::ops(vec![
            Op::Put {
                key: account_key(&acc.issuer, &acc.id),
                value: raw,
                expires_at: None,
            },
            Op::Put {
                key: name_key(&acc.issuer, &acc.name),
                value: acc.id.clone().into_bytes(),
                expires_at: None,
            },
        ])
        .when(Cond::Absent(account_key(&acc.issuer, &acc.id)))
        .when(Cond::Absent(name_key(&acc.issuer, &acc.name)));
        let res = self.replica.write(txn).await.map_err(status)?;
        if !res.succeeded {
            return Err(Status::already_exists(format!(
                "account {} already exists",
                acc.id
            )));
        }
        Ok(())
    }

    /// Deletes an account, its name and every refresh token it holds.
    pub async fn delete(&self, ns: &str, id: &str) -> Result<bool, Status> {
        let Some(acc) = self.account(ns, id)? else {
            return Ok(false);
        };
        let mut ops = vec![
            Op::Delete {
                key: account_key(ns, id),
            },
            Op::Delete {
                key: name_key(ns, &acc.name),
            },
        ];
        let prefix = crate::keys::auth::refreshes(ns);
        for (key, rec) in self
            .replica
            .reader()
            .scan(&prefix, now_millis(), false)
            .flatten()
        {
            if serde_json::from_slice::<StoredRefresh>(&rec.value).is_ok_and(|r| r.account == id) {
                ops.push(Op::Delete { key });
            }
        }
        self.replica.write(Txn::ops(ops)).await.map_err(status)?;
        Ok(true)
    }

    /// Sets an account's secret (no check of the old one).
    pub async fn set_secret(&self, ns: &str, id: &str, secret: &str) -> Result<(), Status> {
        let mut acc = self
            .account(ns, id)?
            .ok_or_else(|| Status::not_found(format!("account {id} not found")))?;
        acc.secret_hash = self.hash(secret.to_string()).await?;
        let raw = serde_json::to_vec(&acc).map_err(|e| Status::internal(e.to_string()))?;
        self.replica
            .write(Txn::put(account_key(ns, id), raw, None).when(Cond::Exists(account_key(ns, id))))
            .await
            .map_err(status)?;
        Ok(())
    }

    /// Issues an access token and a new refresh token for `acc`.
    async fn issue(&self, acc: &StoredAccount, ttl_secs: u64) -> Result<Token, Status> {
        let refresh_id = random_token(12);
        let refresh_secret = random_token(32);
        let stored = StoredRefresh {
            account: acc.id.clone(),
            secret_sha256: token_hash(&refresh_secret),
        };
        let now = now_millis();
        self.replica
            .write(Txn::put(
                refresh_key(&acc.issuer, &refresh_id),
                serde_json::to_vec(&stored).map_err(|e| Status::internal(e.to_string()))?,
                Some(now + REFRESH_TTL.as_millis() as u64),
            ))
            .await
            .map_err(status)?;
        Ok(self.access(acc, ttl_secs, format!("{refresh_id}.{refresh_secret}")))
    }

    fn access(&self, acc: &StoredAccount, ttl_secs: u64, refresh_token: String) -> Token {
        let now = now_millis() / 1000;
        let claims = Claims {
            sub: acc.id.clone(),
            iss: acc.issuer.clone(),
            kind: acc.kind.clone(),
            name: acc.name.clone(),
            scopes: acc.scopes.clone(),
            iat: now,
            exp: now + ttl_secs,
        };
        Token {
            access_token: self.authority.keys().sign(&claims),
            refresh_token,
            created: now as i64,
            expiry: (now + ttl_secs) as i64,
        }
    }

    /// Makes the first admin and the default rule, once per cluster.
    pub async fn bootstrap(&self, admin_password: &str) -> Result<(), Status> {
        if self
            .replica
            .reader()
            .get(BOOTSTRAPPED, now_millis())
            .map_err(status)?
            .is_some()
        {
            return Ok(());
        }
        let admin = StoredAccount {
            id: "admin".into(),
            name: "admin".into(),
            kind: "user".into(),
            issuer: ROOT_NAMESPACE.into(),
            scopes: vec!["admin".into()],
            metadata: HashMap::new(),
            secret_hash: self.hash(admin_password.to_string()).await?,
        };
        let default_rule = RuleJson {
            id: "default".into(),
            scope: String::new(),
            resource_type: "*".into(),
            resource_name: "*".into(),
            resource_endpoint: "*".into(),
            access: "granted".into(),
            priority: 0,
        };
        let ser = |e: serde_json::Error| Status::internal(e.to_string());
        let (admin_raw, rule_raw) = (
            serde_json::to_vec(&admin).map_err(ser)?,
            serde_json::to_vec(&default_rule).map_err(ser)?,
        );
        let txn = Txn::ops(vec![
            Op::Put {
                key: BOOTSTRAPPED.to_vec(),
                value: b"1".to_vec(),
                expires_at: None,
            },
            Op::Put {
                key: account_key(ROOT_NAMESPACE, "admin"),
                value: admin_raw,
                expires_at: None,
            },
            Op::Put {
                key: name_key(ROOT_NAMESPACE, "admin"),
                value: b"admin".to_vec(),
                expires_at: None,
            },
            Op::Put {
                key: rule_key("default"),
                value: rule_raw,
                expires_at: None,
            },
        ])
        .when(Cond::Absent(BOOTSTRAPPED.to_vec()));
        self.replica.write(txn).await.map_err(status)?;
        Ok(())
    }

    /// Whether the admin still has the default password.
    pub async fn admin_has_default_password(&self) -> bool {
        match self.account(ROOT_NAMESPACE, "admin") {
            Ok(Some(a)) => self
                .verify(DEFAULT_ADMIN_PASSWORD.to_string(), a.secret_hash)
                .await
                .unwrap_or(false),
            _ => false,
        }
    }
}

fn public_account(a: &StoredAccount, secret: String) -> Account {
    Account {
        id: a.id.clone(),
        r#type: a.kind.clone(),
        issuer: a.issuer.clone(),
        metadata: a.metadata.clone(),
        scopes: a.scopes.clone(),
        secret,
        name: a.name.clone(),
    }
}

/// The gRPC services.
pub struct AuthService {
    store: AuthStore,
}

impl AuthService {
    pub fn new(store: AuthStore) -> AuthService {
        AuthService { store }
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn generate(
        &self,
        req: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        let who = caller(&req);
        let ns = if req.get_ref().options_namespace.is_empty() {
            namespace(&req)?
        } else {
            req.get_ref().options_namespace.clone()
        };
        check_name("namespace", &ns)?;
        require_admin(&who, &ns)?;
        let r = req.into_inner();
        check_name("account id", &r.id)?;
        let name = if r.name.is_empty() {
            r.id.clone()
        } else {
            r.name.clone()
        };
        check_name("account name", &name)?;
        let (secret, shown) = if r.secret.is_empty() {
            let s = random_password();
            (s.clone(), s)
        } else {
            (r.secret.clone(), String::new())
        };
        let acc = StoredAccount {
            id: r.id,
            name,
            kind: if r.r#type.is_empty() {
                "user".into()
            } else {
                r.r#type
            },
            issuer: ns,
            scopes: r.scopes,
            metadata: r.metadata,
            secret_hash: self.store.hash(secret).await?,
        };
        self.store.create(acc.clone()).await?;
        Ok(Response::new(GenerateResponse {
            account: Some(public_account(&acc, shown)),
        }))
    }

    async fn inspect(
        &self,
        req: Request<InspectRequest>,
    ) -> Result<Response<InspectResponse>, Status> {
        let claims = self
            .store
            .authority
            .keys()
            .verify(&req.get_ref().token, now_millis() / 1000)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        Ok(Response::new(InspectResponse {
            account: Some(Account {
                id: claims.sub,
                r#type: claims.kind,
                issuer: claims.iss,
                scopes: claims.scopes,
                name: claims.name,
                ..Default::default()
            }),
        }))
    }

    async fn token(&self, req: Request<TokenRequest>) -> Result<Response<TokenResponse>, Status> {
        let ns = namespace(&req)?;
        let source = req.remote_addr().map(|a| a.ip());
        let r = req.into_inner();
        let ttl = match r.token_expiry {
            0 => self.store.authority.token_ttl.as_secs(),
            t if (1..=86_400).contains(&t) => t as u64,
            _ => {
                return Err(Status::invalid_argument(
                    "token_expiry must be 1 to 86400 seconds",
                ))
            }
        };
        if !r.refresh_token.is_empty() {
            let (id, secret) = r
                .refresh_token
                .split_once('.')
                .ok_or_else(invalid_credentials)?;
            check_name("refresh token", id).map_err(|_| invalid_credentials())?;
            let rec = self
                .store
                .replica
                .reader()
                .get(&refresh_key(&ns, id), now_millis())
                .map_err(status)?
                .ok_or_else(invalid_credentials)?;
            let stored: StoredRefresh =
                serde_json::from_slice(&rec.value).map_err(|_| invalid_credentials())?;
            if stored.secret_sha256 != token_hash(secret) {
                return Err(invalid_credentials());
            }
            let acc = self
                .store
                .account(&ns, &stored.account)?
                .ok_or_else(invalid_credentials)?;
            return Ok(Response::new(TokenResponse {
                token: Some(self.store.access(&acc, ttl, r.refresh_token)),
            }));
        }
        if r.id.is_empty() || check_name("account", &r.id).is_err() {
            return Err(invalid_credentials());
        }
        let acc = self.store.find(&ns, &r.id)?;
        if !self
            .store
            .verify_attempt(&ns, &r.id, source, r.secret, acc.as_ref())
            .await?
        {
            return Err(invalid_credentials());
        }
        let acc = acc.ok_or_else(invalid_credentials)?;
        Ok(Response::new(TokenResponse {
            token: Some(self.store.issue(&acc, ttl).await?),
        }))
    }

    async fn revoke(
        &self,
        req: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let ns = namespace(&req)?;
        let token = req.into_inner().refresh_token;
        let (id, secret) = token.split_once('.').ok_or_else(invalid_credentials)?;
        check_name("refresh token", id).map_err(|_| invalid_credentials())?;
        let key = refresh_key(&ns, id);
        if let Some(rec) = self
            .store
            .replica
            .reader()
            .get(&key, now_millis())
            .map_err(status)?
        {
            let stored: StoredRefresh =
                serde_json::from_slice(&rec.value).map_err(|_| invalid_credentials())?;
            if stored.secret_sha256 != token_hash(secret) {
                return Err(invalid_credentials());
            }
            self.store
                .replica
                .write(Txn::delete(key))
                .await
                .map_err(status)?;
        }
        Ok(Response::new(RevokeResponse {}))
    }
}

/// Accounts: list, delete, change a secret.
pub struct AccountsService {
    store: AuthStore,
}

impl AccountsService {
    pub fn new(store: AuthStore) -> AccountsService {
        AccountsService { store }
    }
}

#[tonic::async_trait]
impl Accounts for AccountsService {
    async fn list(
        &self,
        req: Request<ListAccountsRequest>,
    ) -> Result<Response<ListAccountsResponse>, Status> {
        let ns = namespace(&req)?;
        require_admin(&caller(&req), &ns)?;
        let prefix = crate::keys::auth::accounts(&ns);
        let mut accounts = Vec::new();
        for item in self
            .store
            .replica
            .reader()
            .scan(&prefix, now_millis(), false)
        {
            let (_, rec) = item.map_err(status)?;
            let a: StoredAccount =
                serde_json::from_slice(&rec.value).map_err(|e| Status::internal(e.to_string()))?;
            accounts.push(public_account(&a, String::new()));
        }
        Ok(Response::new(ListAccountsResponse { accounts }))
    }

    async fn delete(
        &self,
        req: Request<DeleteAccountRequest>,
    ) -> Result<Response<DeleteAccountResponse>, Status> {
        let ns = namespace(&req)?;
        require_admin(&caller(&req), &ns)?;
        let id = req.into_inner().id;
        check_name("account id", &id)?;
        if !self.store.delete(&ns, &id).await? {
            return Err(Status::not_found(format!("account {id} not found")));
        }
        Ok(Response::new(DeleteAccountResponse {}))
    }

    async fn change_secret(
        &self,
        req: Request<ChangeSecretRequest>,
    ) -> Result<Response<ChangeSecretResponse>, Status> {
        let who =
            caller(&req).ok_or_else(|| Status::unauthenticated("log in to change a secret"))?;
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let id = if r.id.is_empty() {
            who.sub.clone()
        } else {
            r.id
        };
        check_name("account id", &id)?;
        let is_admin = who.is_admin_in(&ns);
        if id != who.sub && !is_admin {
            return Err(Status::permission_denied(
                "only admins change other accounts' secrets",
            ));
        }
        if r.new_secret.is_empty() {
            return Err(Status::invalid_argument("the new secret must not be empty"));
        }
        let acc = self
            .store
            .account(&ns, &id)?
            .ok_or_else(|| Status::not_found(format!("account {id} not found")))?;
        let source = None; // the caller is logged in: limited per account
        if id == who.sub
            && !self
                .store
                .verify_attempt(&ns, &id, source, r.old_secret, Some(&acc))
                .await?
        {
            return Err(Status::permission_denied("the old secret is wrong"));
        }
        self.store.set_secret(&ns, &id, &r.new_secret).await?;
        Ok(Response::new(ChangeSecretResponse {}))
    }
}

/// Rules: create, delete, list (one set for the cluster).
pub struct RulesService {
    store: AuthStore,
}

impl RulesService {
    pub fn new(store: AuthStore) -> RulesService {
        RulesService { store }
    }
}

#[tonic::async_trait]
impl Rules for RulesService {
    async fn create(
        &self,
        req: Request<CreateRuleRequest>,
    ) -> Result<Response<CreateRuleResponse>, Status> {
        require_global_admin(&caller(&req))?;
        let rule = req
            .into_inner()
            .rule
            .ok_or_else(|| Status::invalid_argument("a rule is required"))?;
        check_name("rule id", &rule.id)?;
        if rule.access != "granted" && rule.access != "denied" {
            return Err(Status::invalid_argument("access must be granted or denied"));
        }
        let res = rule.resource.clone().unwrap_or_default();
        if res.r#type.is_empty() || res.name.is_empty() || res.endpoint.is_empty() {
            return Err(Status::invalid_argument(
                "the resource needs a type, name and endpoint",
            ));
        }
        let raw = serde_json::to_vec(&RuleJson::from(&rule))
            .map_err(|e| Status::internal(e.to_string()))?;
        let res = self
            .store
            .replica
            .write(Txn::put(rule_key(&rule.id), raw, None).when(Cond::Absent(rule_key(&rule.id))))
            .await
            .map_err(status)?;
        if !res.succeeded {
            return Err(Status::already_exists(format!(
                "rule {} already exists",
                rule.id
            )));
        }
        self.store.authority.reload_rules();
        Ok(Response::new(CreateRuleResponse {}))
    }

    async fn delete(
        &self,
        req: Request<DeleteRuleRequest>,
    ) -> Result<Response<DeleteRuleResponse>, Status> {
        require_global_admin(&caller(&req))?;
        let id = req.into_inner().id;
        check_name("rule id", &id)?;
        let res = self
            .store
            .replica
            .write(Txn::delete(rule_key(&id)).when(Cond::Exists(rule_key(&id))))
            .await
            .map_err(status)?;
        if !res.succeeded {
            return Err(Status::not_found(format!("rule {id} not found")));
        }
        self.store.authority.reload_rules();
        Ok(Response::new(DeleteRuleResponse {}))
    }

    async fn list(
        &self,
        req: Request<ListRulesRequest>,
    ) -> Result<Response<ListRulesResponse>, Status> {
        require_global_admin(&caller(&req))?;
        Ok(Response::new(ListRulesResponse {
            rules: self.store.authority.rules().to_vec(),
        }))
    }
}
