//! `micro call SVC Endpoint '{json}'`, and the call behind every dynamic
//! command: the service's descriptor from the registry turns JSON into its
//! protobuf request; the node routes the call; replies print as indented
//! JSON.

use prost_reflect::MethodDescriptor;

use super::{out, Context};
use crate::errors::Failure;

/// A failed call as the user sees it: the service's detail for its own
/// errors, the client's message otherwise.
pub fn failure(service: &str, e: micro::Error) -> Failure {
    match e {
        micro::Error::Status(s) if s.code() == tonic::Code::Unauthenticated => Failure::from(s),
        micro::Error::Status(s) => {
            Failure::msg(micro::errors::Error::from_status(service, &s).detail)
        }
        micro::Error::Connect(addr) => {
            Failure::msg(format!("Failed to connect to micro server at {addr}"))
        }
        other => Failure::msg(other.to_string()),
    }
}

/// Calls `method` of `service` with a JSON request; prints each reply as
/// indented JSON as it arrives.
pub async fn call_and_print(
    client: &micro::Client,
    service: &str,
    method: &MethodDescriptor,
    request: &serde_json::Value,
) -> Result<(), Failure> {
    let message =
        micro::dynamic::encode_request(method, request).map_err(|e| Failure::msg(e.to_string()))?;
    let mut stream = client
        .call_raw(service, method, message)
        .await
        .map_err(|e| failure(service, e))?;
    while let Some(msg) = stream
        .message()
        .await
        .map_err(|s| failure(service, s.into()))?
    {
        let json =
            micro::dynamic::decode_reply(method, &msg).map_err(|e| Failure::msg(e.to_string()))?;
        let text = serde_json::to_string_pretty(&json).map_err(|e| Failure::msg(e.to_string()))?;
        out(format!("{text}\n").as_bytes())?;
    }
    Ok(())
}

/// `micro call SERVICE ENDPOINT [JSON]`.
pub async fn run(
    ctx: Context,
    service: &str,
    endpoint: &str,
    body: Option<&str>,
) -> Result<(), Failure> {
    let request: serde_json::Value = match body {
        None => serde_json::json!({}),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| Failure::msg(format!("Invalid JSON request: {e}")))?,
    };
    if !request.is_object() {
        return Err(Failure::msg("Invalid JSON request: it must be an object"));
    }
    let client = ctx.connect().await?;
    let (_, pool) = client
        .describe(service)
        .await
        .map_err(|e| failure(service, e))?;
    let method = micro::dynamic::method(&pool, service, endpoint)
        .map_err(|e| Failure::msg(e.to_string()))?;
    call_and_print(&client, service, &method, &request).await
}

/// A dynamic command: `micro SERVICE [endpoint words] [--flags]`, where
/// SERVICE is no builtin. Unknown services are unrecognized commands.
pub async fn dynamic(ctx: Context, words: &[String]) -> Result<(), Failure> {
    let Some((service, rest)) = words.split_first() else {
        return Err(Failure::msg(
            "No command provided to micro. Please refer to 'micro --help'",
        ));
    };
    let unrecognized = || {
        Failure::msg(format!(
            "Unrecognized micro command: {service}. Please refer to 'micro --help'"
        ))
    };
    let client = ctx.connect().await.map_err(|_| unrecognized())?;
    let (reg, pool) = match client.describe(service).await {
        Ok(found) => found,
        Err(micro::Error::NoService(_)) => return Err(unrecognized()),
        Err(e) => return Err(failure(service, e)),
    };
    let (positional, flags) = crate::dynamic::split_args(rest);
    let words: Vec<&str> = positional.iter().map(String::as_str).collect();
    let help = flags.iter().any(|f| f == "--help" || f == "-h");
    if help && words.is_empty() {
        return out(crate::dynamic::service_help(&reg).as_bytes());
    }
    let endpoint = crate::dynamic::endpoint_name(service, &words).map_err(Failure::msg)?;
    let method = micro::dynamic::method(&pool, service, &endpoint)
        .map_err(|e| Failure::msg(e.to_string()))?;
    if help {
        let word = words.last().copied().unwrap_or("call");
        return out(crate::dynamic::endpoint_help(service, word, &method.input()).as_bytes());
    }
    let request = crate::dynamic::flags_to_json(&method.input(), &flags).map_err(Failure::msg)?;
    call_and_print(&client, service, &method, &request).await
}
