//! `micro call SVC Endpoint '{json}'`, and the call behind every dynamic
//! command: the service's descriptor from the registry turns JSON into its
//! protobuf request; the node routes the call; replies print as indented
//! JSON as they arrive. A client-streaming or bidirectional endpoint takes
//! its requests from the JSON given (if any), then one JSON object per
//! line of standard input, each sent as it is read.

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
    let stream = client
        .call_raw(service, method, message)
        .await
        .map_err(|e| failure(service, e))?;
    print_replies(service, method, stream).await
}

/// Prints each reply as indented JSON as it arrives.
async fn print_replies(
    service: &str,
    method: &MethodDescriptor,
    mut stream: tonic::Streaming<bytes::Bytes>,
) -> Result<(), Failure> {
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

/// Calls a client-streaming or bidirectional `method`: `first` (if any),
/// then each line of standard input is one JSON request, sent as it is
/// read; replies print as they arrive. A line that is not a JSON object
/// ends the call with an error naming it.
pub async fn stream_and_print(
    client: &micro::Client,
    service: &str,
    method: &MethodDescriptor,
    first: Option<serde_json::Value>,
) -> Result<(), Failure> {
    use tokio_stream::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, String>>(16);
    let encode = {
        let method = method.clone();
        move |v: &serde_json::Value| {
            micro::dynamic::encode_request(&method, v).map_err(|e| e.to_string())
        }
    };
    if let Some(first) = first {
        let _ = tx.send(encode(&first)).await;
    }
    std::thread::spawn(move || {
        use std::io::BufRead;
        for (n, line) in std::io::stdin().lock().lines().enumerate() {
            let request = match line {
                Err(e) => Err(format!("cannot read standard input: {e}")),
                Ok(l) if l.trim().is_empty() => continue,
                Ok(l) => match serde_json::from_str::<serde_json::Value>(&l) {
                    Ok(v) if v.is_object() => encode(&v),
                    Ok(_) => Err(format!(
                        "Invalid JSON request on line {}: it must be an object",
                        n + 1
                    )),
                    Err(e) => Err(format!("Invalid JSON request on line {}: {e}", n + 1)),
                },
            };
            let stop = request.is_err();
            if tx.blocking_send(request).is_err() || stop {
                return;
            }
        }
    });
    let bad = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = bad.clone();
    let requests =
        tokio_stream::wrappers::ReceiverStream::new(rx).map_while(move |request| match request {
            Ok(message) => Some(message),
            Err(e) => {
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                None
            }
        });
    let stream = client
        .call_streaming(service, method, requests)
        .await
        .map_err(|e| failure(service, e))?;
    let printed = print_replies(service, method, stream).await;
    if let Some(e) = bad.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(Failure::msg(e));
    }
    printed
}

/// `micro call SERVICE ENDPOINT [JSON]`.
pub async fn run(
    ctx: Context,
    service: &str,
    endpoint: &str,
    body: Option<&str>,
) -> Result<(), Failure> {
    let given: Option<serde_json::Value> = match body {
        None => None,
        Some(text) => Some(
            serde_json::from_str(text)
                .map_err(|e| Failure::msg(format!("Invalid JSON request: {e}")))?,
        ),
    };
    if given.as_ref().is_some_and(|r| !r.is_object()) {
        return Err(Failure::msg("Invalid JSON request: it must be an object"));
    }
    let client = ctx.connect().await?;
    let (_, pool) = client
        .describe(service)
        .await
        .map_err(|e| failure(service, e))?;
    let method = micro::dynamic::method(&pool, service, endpoint)
        .map_err(|e| Failure::msg(e.to_string()))?;
    if method.is_client_streaming() {
        return stream_and_print(&client, service, &method, given).await;
    }
    let request = given.unwrap_or_else(|| serde_json::json!({}));
    call_and_print(&client, service, &method, &request).await
}

/// A dynamic command: `micro SERVICE [endpoint words] [--flags]`, where
/// SERVICE is no builtin. Unknown services are unrecognized commands; so
/// is any name when the registry refuses an anonymous caller (it shows
/// services only to accounts), with a hint to log in. A node that cannot
/// be reached is named as for any other command.
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
    let client = ctx.connect().await?;
    let (reg, pool) = match client.describe(service).await {
        Ok(found) => found,
        Err(micro::Error::NoService(_)) => return Err(unrecognized()),
        Err(micro::Error::Status(s)) if s.code() == tonic::Code::Unauthenticated => {
            return Err(Failure::msg(format!(
                "Unrecognized micro command: {service}. Please refer to 'micro --help' (not logged in: services show after micro login)"
            )))
        }
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
    if method.is_client_streaming() {
        // Flags, when given, make the first request; stdin the rest.
        let first = (!flags.is_empty()).then_some(request);
        return stream_and_print(&client, service, &method, first).await;
    }
    call_and_print(&client, service, &method, &request).await
}
