//! `micro user`: who the session of the current environment and namespace
//! is (`micro user`), a valid access token of it (`user token`), the
//! namespace commands act in (`user namespace [set NS]`), and changing the
//! account's password (`user set password`).

use base64::Engine;
use micro_proto::auth::ChangeSecretRequest;

use super::{out, Context, Session};
use crate::args::{NamespaceCommand, UserArgs, UserCommand, UserSetCommand};
use crate::errors::Failure;
use crate::tokens::{Entry, Tokens};

const NOT_LOGGED_IN: &str = "You are not logged in";

pub async fn run(mut ctx: Context, args: &UserArgs) -> Result<(), Failure> {
    match &args.command {
        None => whoami(&ctx),
        Some(UserCommand::Token) => token(&ctx).await,
        Some(UserCommand::Namespace(a)) => match &a.command {
            None => out(format!("{}\n", ctx.current_namespace()?).as_bytes()),
            Some(NamespaceCommand::Set { namespace }) => set_namespace(&mut ctx, namespace),
        },
        Some(UserCommand::Set {
            command:
                UserSetCommand::Password {
                    old_password,
                    new_password,
                },
        }) => set_password(&ctx, old_password.as_deref(), new_password.as_deref()).await,
    }
}

/// The claims of a JWT: its middle part, base64url (padding tolerated)
/// JSON. `None` if the token is not shaped so.
pub fn claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut parts = token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    parts.next()?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&raw).ok()? {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    }
}

/// The account id (`sub`) an access token was issued to.
pub fn subject(token: &str) -> Option<String> {
    match claims(token)?.get("sub")? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The account id of a session: its token's subject, else the account
/// recorded at login.
fn account_of(entry: &Entry) -> Option<String> {
    subject(&entry.access_token).or_else(|| Some(entry.account.clone()).filter(|a| !a.is_empty()))
}

/// `micro user`: the stored session's account, without asking the server.
fn whoami(ctx: &Context) -> Result<(), Failure> {
    let tokens = Tokens::load(&ctx.tokens_path())?;
    let ns = ctx.current_namespace()?;
    let account = tokens
        .get(ctx.env_name(), &ns)
        .and_then(account_of)
        .ok_or_else(|| Failure::msg(NOT_LOGGED_IN))?;
    out(format!("{account}\n").as_bytes())
}

/// `micro user token`: an access token good for at least a minute.
async fn token(ctx: &Context) -> Result<(), Failure> {
    let ns = ctx.current_namespace()?;
    match ctx.session(&ns, None).await? {
        Session::Active(entry) => out(format!("{}\n", entry.access_token).as_bytes()),
        Session::Stale(_, why) => Err(why),
        Session::None => Err(Failure::msg(NOT_LOGGED_IN)),
    }
}

/// Names the server accepts as namespaces: 1 to 128 bytes, no '/', no
/// control characters.
fn check_namespace(ns: &str) -> Result<(), Failure> {
    if ns.is_empty() || ns.len() > 128 || ns.contains('/') || ns.chars().any(char::is_control) {
        return Err(Failure::msg(format!(
            "Invalid namespace '{}': use 1 to 128 characters, without '/' or control characters",
            ns.escape_default()
        )));
    }
    Ok(())
}

/// `micro user namespace set NS`: saves NS as the environment's namespace.
fn set_namespace(ctx: &mut Context, ns: &str) -> Result<(), Failure> {
    check_namespace(ns)?;
    let name = ctx.env_name().to_string();
    // `get` also yields the built-in `local`, which then gets a saved entry.
    let mut env = ctx.config.get(&name)?;
    env.namespace = ns.to_string();
    ctx.config.envs.insert(name, env);
    Ok(ctx.config.save()?)
}

/// `micro user set password`.
async fn set_password(ctx: &Context, old: Option<&str>, new: Option<&str>) -> Result<(), Failure> {
    let ns = ctx.current_namespace()?;
    let entry = Tokens::load(&ctx.tokens_path())?
        .get(ctx.env_name(), &ns)
        .cloned()
        .ok_or_else(|| Failure::msg(NOT_LOGGED_IN))?;
    let id = account_of(&entry).ok_or_else(|| Failure::msg(NOT_LOGGED_IN))?;
    let old_secret = match old {
        Some(p) => p.to_string(),
        None => super::auth::read_secret("Enter old password: ")?,
    };
    let new_secret = match new {
        Some(p) => p.to_string(),
        None => super::auth::read_secret("Enter new password: ")?,
    };
    if new_secret.is_empty() {
        return Err(Failure::msg("The new password must not be empty"));
    }
    let client = ctx.connect_in(&ns).await?;
    client
        .accounts()
        .change_secret(ChangeSecretRequest {
            id,
            old_secret,
            new_secret,
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b(r#"{"alg":"EdDSA","typ":"JWT"}"#), b(payload))
    }

    #[test]
    fn jwt_subject_is_the_account_id() {
        let t = jwt(r#"{"sub":"admin","iss":"micro","name":"Admin","scopes":["admin"],"exp":99}"#);
        assert_eq!(subject(&t).as_deref(), Some("admin"));
        let c = claims(&t).unwrap();
        assert_eq!(c["iss"], "micro");
        assert_eq!(c["exp"], 99);
        // Padding some encoders add is tolerated.
        let padded = t.replacen(".sig", "", 1);
        let (h, p) = padded.split_once('.').unwrap();
        let p = format!("{p}{}", "=".repeat((4 - p.len() % 4) % 4));
        assert_eq!(subject(&format!("{h}.{p}.sig")).as_deref(), Some("admin"));
    }

    #[test]
    fn malformed_tokens_have_no_subject() {
        assert_eq!(subject(""), None);
        assert_eq!(subject("opaque-token"), None);
        assert_eq!(subject("a.b"), None);
        assert_eq!(subject("a.!!!.c"), None);
        assert_eq!(subject(&jwt("[1,2]")), None);
        assert_eq!(subject(&jwt(r#"{"sub":7}"#)), None);
        assert_eq!(subject(&jwt(r#"{"sub":""}"#)), None);
        assert_eq!(subject(&format!("{}.x", jwt("{}"))), None);
    }

    #[test]
    fn session_account_falls_back_to_the_stored_one() {
        let mut e = Entry {
            env: "local".into(),
            namespace: "micro".into(),
            account: "bob".into(),
            access_token: jwt(r#"{"sub":"alice"}"#),
            refresh_token: "r".into(),
            created: 0,
            expiry: 0,
        };
        assert_eq!(account_of(&e).as_deref(), Some("alice"));
        e.access_token = "opaque".into();
        assert_eq!(account_of(&e).as_deref(), Some("bob"));
        e.account.clear();
        assert_eq!(account_of(&e), None);
    }

    #[test]
    fn namespace_names() {
        assert!(check_namespace("foo").is_ok());
        assert!(check_namespace("team-a_1").is_ok());
        for bad in ["", "a/b", "a\tb", &"x".repeat(129)] {
            assert!(check_namespace(bad).is_err(), "{bad}");
        }
    }
}
