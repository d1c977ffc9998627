//! Sessions and the auth service: `micro login` (exchange a username and
//! password for tokens, kept in the tokens file), `micro logout`, and
//! `micro auth list|create|delete accounts|rules`. Also the prompts that
//! read a username or a password from the terminal (or from stdin when it
//! is not one).

use std::io::{BufRead, IsTerminal};

use micro_proto::auth::{
    Account, DeleteAccountRequest, DeleteRuleRequest, GenerateRequest, ListAccountsRequest,
    ListRulesRequest, Resource, RevokeRequest, Rule, TokenRequest,
};

use super::{columns, out, Context};
use crate::args::{
    Access, AuthArgs, AuthCommand, AuthCreateCommand, AuthDeleteCommand, AuthListCommand, LoginArgs,
};
use crate::errors::Failure;
use crate::tokens::{Entry, Tokens};

/// Prints `prompt` and reads one line from stdin, without its line ending.
fn read_line(prompt: &str) -> Result<String, Failure> {
    out(prompt.as_bytes())?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::msg(format!("Cannot read input: {e}")))?;
    let trimmed = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(trimmed);
    Ok(line)
}

/// Reads a secret: from the terminal without echo, or, when stdin is not a
/// terminal, the next line of stdin.
pub fn read_secret(prompt: &str) -> Result<String, Failure> {
    if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)
            .map_err(|e| Failure::msg(format!("Cannot read the password: {e}")))
    } else {
        read_line(prompt)
    }
}

/// `micro login`.
pub async fn login(ctx: Context, args: &LoginArgs) -> Result<(), Failure> {
    let username = match &args.username {
        Some(u) => u.trim().to_string(),
        None => read_line("Enter username: ")?.trim().to_string(),
    };
    if username.is_empty() {
        return Err(Failure::msg("Login failed: no username given"));
    }
    let password = match &args.password {
        Some(p) => p.clone(),
        None => read_secret("Enter password: ")?,
    };
    let ns = ctx.current_namespace()?;
    let client = ctx.connect_anonymous(&ns).await?;
    let resp = client
        .auth()
        .token(TokenRequest {
            id: username.clone(),
            secret: password,
            ..Default::default()
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::Unauthenticated => {
                Failure::msg("Login failed: invalid username or password")
            }
            _ => s.into(),
        })?;
    let token = resp
        .into_inner()
        .token
        .filter(|t| !t.access_token.is_empty())
        .ok_or_else(|| Failure::msg("Login failed: the server sent no token"))?;
    let path = ctx.tokens_path();
    let mut tokens = Tokens::load(&path)?;
    tokens.set(Entry {
        env: ctx.env_name().to_string(),
        namespace: ns,
        account: super::user::subject(&token.access_token).unwrap_or(username),
        access_token: token.access_token,
        refresh_token: token.refresh_token,
        created: token.created,
        expiry: token.expiry,
    })?;
    tokens.save()?;
    out(b"Successfully logged in.\n")
}

/// `micro logout`: revokes the refresh token (best effort) and forgets the
/// session.
pub async fn logout(ctx: Context) -> Result<(), Failure> {
    let ns = ctx.current_namespace()?;
    let path = ctx.tokens_path();
    let mut tokens = Tokens::load(&path)?;
    let Some(entry) = tokens.remove(ctx.env_name(), &ns) else {
        return Ok(());
    };
    if !entry.refresh_token.is_empty() {
        if let Ok(client) = ctx.connect_anonymous(&ns).await {
            if entry.expiry > super::now_secs() {
                client.set_token(Some(&entry.access_token));
            }
            let _ = client
                .auth()
                .revoke(RevokeRequest {
                    refresh_token: entry.refresh_token.clone(),
                })
                .await;
        }
    }
    tokens.save()
}

/// `micro auth ...`.
pub async fn run(ctx: Context, args: &AuthArgs) -> Result<(), Failure> {
    match &args.command {
        AuthCommand::List { what } => {
            let client = ctx.connect().await?;
            let text = match what {
                AuthListCommand::Accounts => {
                    let resp = client.accounts().list(ListAccountsRequest {}).await?;
                    accounts_table(resp.into_inner().accounts)
                }
                AuthListCommand::Rules => {
                    let resp = client.rules().list(ListRulesRequest {}).await?;
                    rules_table(resp.into_inner().rules)
                }
            };
            out(text.as_bytes())
        }
        AuthCommand::Create {
            what: AuthCreateCommand::Account { id, secret, scopes },
        } => {
            // The global --namespace names the new account's namespace; the
            // call is made with the session of the environment's namespace.
            let client = ctx.connect_in(&ctx.env_namespace()?).await?;
            let resp = client
                .auth()
                .generate(GenerateRequest {
                    id: id.clone(),
                    secret: secret.clone().unwrap_or_default(),
                    scopes: scopes.iter().filter(|s| !s.is_empty()).cloned().collect(),
                    r#type: "user".into(),
                    options_namespace: ctx.namespace.clone().unwrap_or_default(),
                    ..Default::default()
                })
                .await?;
            let account = resp
                .into_inner()
                .account
                .ok_or_else(|| Failure::msg("The server sent no account"))?;
            out(format!("Account created: {}\n", account_json(&account)).as_bytes())
        }
        AuthCommand::Create {
            what:
                AuthCreateCommand::Rule {
                    id,
                    resource,
                    scope,
                    access,
                    priority,
                },
        } => {
            let rule = Rule {
                id: id.clone(),
                scope: scope.clone(),
                resource: Some(parse_resource(resource)?),
                access: match access {
                    Access::Granted => "granted".into(),
                    Access::Denied => "denied".into(),
                },
                priority: *priority,
            };
            let client = ctx.connect().await?;
            client
                .rules()
                .create(micro_proto::auth::CreateRuleRequest { rule: Some(rule) })
                .await?;
            out(b"Rule created\n")
        }
        AuthCommand::Delete { what } => {
            let client = ctx.connect().await?;
            match what {
                AuthDeleteCommand::Rule { id } => {
                    client
                        .rules()
                        .delete(DeleteRuleRequest { id: id.clone() })
                        .await
                        .map_err(|s| not_found(s, "Rule", id))?;
                    out(b"Rule deleted\n")
                }
                AuthDeleteCommand::Account { id } => {
                    client
                        .accounts()
                        .delete(DeleteAccountRequest { id: id.clone() })
                        .await
                        .map_err(|s| not_found(s, "Account", id))?;
                    out(b"Account deleted\n")
                }
            }
        }
    }
}

/// Names what was not found rather than a bare "Not found".
fn not_found(s: tonic::Status, what: &str, id: &str) -> Failure {
    match s.code() {
        tonic::Code::NotFound => Failure::msg(format!("{what} '{id}' does not exist")),
        _ => s.into(),
    }
}

/// Parses `type:name:endpoint`, each part non-empty.
pub fn parse_resource(s: &str) -> Result<Resource, Failure> {
    let bad = || {
        Failure::msg(format!(
            "Invalid resource '{s}': expected TYPE:NAME:ENDPOINT, e.g. service:helloworld:Helloworld.Call"
        ))
    };
    let parts: Vec<&str> = s.split(':').collect();
    let [r#type, name, endpoint] = parts.as_slice() else {
        return Err(bad());
    };
    if [r#type, name, endpoint].iter().any(|p| p.trim().is_empty()) {
        return Err(bad());
    }
    Ok(Resource {
        r#type: r#type.to_string(),
        name: name.to_string(),
        endpoint: endpoint.to_string(),
    })
}

/// `ID  Name  Scopes  Metadata`, accounts sorted by id.
fn accounts_table(mut accounts: Vec<Account>) -> String {
    accounts.sort_by(|a, b| a.id.cmp(&b.id));
    let mut rows = vec![vec![
        "ID".to_string(),
        "Name".into(),
        "Scopes".into(),
        "Metadata".into(),
    ]];
    for a in accounts {
        let mut meta: Vec<String> = a.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
        meta.sort();
        let meta = if meta.is_empty() {
            "n/a".to_string()
        } else {
            meta.join(", ")
        };
        rows.push(vec![a.id, a.name, a.scopes.join(","), meta]);
    }
    columns(&rows)
}

/// `ID  Scope  Access  Resource  Priority`, highest priority first, then by id.
fn rules_table(mut rules: Vec<Rule>) -> String {
    rules.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
    let mut rows = vec![vec![
        "ID".to_string(),
        "Scope".into(),
        "Access".into(),
        "Resource".into(),
        "Priority".into(),
    ]];
    for r in rules {
        let scope = if r.scope.is_empty() {
            "<public>".to_string()
        } else {
            r.scope
        };
        let resource = r
            .resource
            .map(|x| format!("{}:{}:{}", x.r#type, x.name, x.endpoint))
            .unwrap_or_default();
        rows.push(vec![
            r.id,
            scope,
            r.access.to_uppercase(),
            resource,
            r.priority.to_string(),
        ]);
    }
    columns(&rows)
}

/// The account as compact JSON with its keys in a fixed order: id, type,
/// issuer, metadata (null when empty), scopes, secret, name.
fn account_json(a: &Account) -> String {
    use serde_json::Value;
    let s = |v: &str| Value::String(v.to_string()).to_string();
    let metadata = if a.metadata.is_empty() {
        Value::Null
    } else {
        let mut m: Vec<(&String, &String)> = a.metadata.iter().collect();
        m.sort();
        Value::Object(
            m.into_iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    };
    let scopes = Value::Array(a.scopes.iter().cloned().map(Value::String).collect());
    format!(
        r#"{{"id":{},"type":{},"issuer":{},"metadata":{},"scopes":{},"secret":{},"name":{}}}"#,
        s(&a.id),
        s(&a.r#type),
        s(&a.issuer),
        metadata,
        scopes,
        s(&a.secret),
        s(&a.name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: &str, name: &str, scopes: &[&str], meta: &[(&str, &str)]) -> Account {
        Account {
            id: id.into(),
            r#type: "user".into(),
            issuer: "micro".into(),
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            secret: String::new(),
            name: name.into(),
        }
    }

    fn rule(id: &str, scope: &str, access: &str, res: (&str, &str, &str), priority: i32) -> Rule {
        Rule {
            id: id.into(),
            scope: scope.into(),
            resource: Some(Resource {
                r#type: res.0.into(),
                name: res.1.into(),
                endpoint: res.2.into(),
            }),
            access: access.into(),
            priority,
        }
    }

    #[test]
    fn resources_parse() {
        let r = parse_resource("service:helloworld:Helloworld.Call").unwrap();
        assert_eq!(
            (r.r#type.as_str(), r.name.as_str(), r.endpoint.as_str()),
            ("service", "helloworld", "Helloworld.Call")
        );
        let r = parse_resource("*:*:*").unwrap();
        assert_eq!(r.endpoint, "*");
        for bad in [
            "", "service", "a:b", "a:b:c:d", "a::c", ":b:c", "a:b:", "a: :c",
        ] {
            assert!(parse_resource(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accounts_table_renders_sorted() {
        let text = accounts_table(vec![
            account("zed", "Zed", &["a", "b"], &[("x", "1"), ("a", "2")]),
            account("admin", "admin", &["admin"], &[]),
        ]);
        assert_eq!(
            text,
            "ID     Name   Scopes  Metadata\n\
             admin  admin  admin   n/a\n\
             zed    Zed    a,b     a=2, x=1\n"
        );
    }

    #[test]
    fn rules_table_renders_by_priority() {
        let text = rules_table(vec![
            rule("default", "", "granted", ("*", "*", "*"), 0),
            rule("b", "admin", "denied", ("service", "foo", "Foo.Bar"), 10),
            rule("a", "*", "granted", ("service", "foo", "*"), 10),
            rule("low", "x", "granted", ("service", "x", "*"), -1),
        ]);
        assert_eq!(
            text,
            "ID       Scope     Access   Resource             Priority\n\
             a        *         GRANTED  service:foo:*        10\n\
             b        admin     DENIED   service:foo:Foo.Bar  10\n\
             default  <public>  GRANTED  *:*:*                0\n\
             low      x         GRANTED  service:x:*          -1\n"
        );
    }

    #[test]
    fn account_json_keeps_its_key_order() {
        let mut a = account("bob", "Bob", &["a", "b"], &[]);
        a.secret = "s3cr\"t".into();
        assert_eq!(
            account_json(&a),
            r#"{"id":"bob","type":"user","issuer":"micro","metadata":null,"scopes":["a","b"],"secret":"s3cr\"t","name":"Bob"}"#
        );
        let a = account("x", "", &[], &[("k2", "v2"), ("k1", "v1")]);
        assert_eq!(
            account_json(&a),
            r#"{"id":"x","type":"user","issuer":"micro","metadata":{"k1":"v1","k2":"v2"},"scopes":[],"secret":"","name":""}"#
        );
    }
}
