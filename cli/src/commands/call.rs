//! `micro call SVC Endpoint '{json}'`, and the call behind every dynamic
//! command: the service's descriptor from the registry turns JSON into its
//! protobuf request; the node routes the call; replies print as indented
//! JSON.

use std::str::FromStr;

use bytes::Bytes;
use micro::dynamic::RawCodec;
use micro_proto::registry::{GetRequest, Service};
use prost_reflect::{DescriptorPool, MethodDescriptor};
use tonic::codegen::http::uri::PathAndQuery;

use super::{out, Context};
use crate::errors::Failure;

/// The service's registration (with its descriptor), or the "not found" line.
pub async fn lookup(client: &micro::Client, service: &str) -> Result<Service, Failure> {
    let req = GetRequest {
        service: service.to_string(),
        options: None,
    };
    match client.registry().get_service(req).await {
        Ok(r) => r
            .into_inner()
            .services
            .into_iter()
            .next()
            .ok_or_else(|| Failure::msg(format!("Service \"{service}\" not found"))),
        Err(s) if s.code() == tonic::Code::NotFound => {
            Err(Failure::msg(format!("Service \"{service}\" not found")))
        }
        Err(s) => Err(s.into()),
    }
}

/// The descriptor pool a registration carries.
pub fn pool(svc: &Service) -> Result<DescriptorPool, Failure> {
    if svc.descriptor.is_empty() {
        return Err(Failure::msg(format!(
            "Service \"{}\" registered no descriptor; it cannot be called with JSON",
            svc.name
        )));
    }
    DescriptorPool::decode(svc.descriptor.as_slice()).map_err(|e| {
        Failure::msg(format!(
            "Service \"{}\" has an invalid descriptor: {e}",
            svc.name
        ))
    })
}

/// Calls `method` of `service` with a JSON request; prints each reply.
pub async fn call_and_print(
    client: &micro::Client,
    service: &str,
    method: &MethodDescriptor,
    request: &serde_json::Value,
) -> Result<(), Failure> {
    let message =
        micro::dynamic::encode_request(method, request).map_err(|e| Failure::msg(e.to_string()))?;
    let path = PathAndQuery::from_str(&micro::dynamic::path(method))
        .map_err(|e| Failure::msg(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(client.channel());
    grpc.ready().await.map_err(|_| {
        Failure::msg(format!(
            "Failed to connect to micro server at {}",
            client.address()
        ))
    })?;
    let mut req = tonic::Request::new(message);
    if let Ok(v) = service.parse() {
        req.metadata_mut().insert("micro-service", v);
    }
    let error =
        |s: tonic::Status| Failure::msg(micro::errors::Error::from_status(service, &s).detail);
    let print = |bytes: &Bytes| -> Result<(), Failure> {
        let json =
            micro::dynamic::decode_reply(method, bytes).map_err(|e| Failure::msg(e.to_string()))?;
        let text = serde_json::to_string_pretty(&json).map_err(|e| Failure::msg(e.to_string()))?;
        out(format!("{text}\n").as_bytes())
    };
    if method.is_server_streaming() {
        let mut stream = grpc
            .server_streaming(req, path, RawCodec)
            .await
            .map_err(error)?
            .into_inner();
        while let Some(msg) = stream.message().await.map_err(error)? {
            print(&msg)?;
        }
        Ok(())
    } else {
        let reply = grpc
            .unary(req, path, RawCodec)
            .await
            .map_err(error)?
            .into_inner();
        print(&reply)
    }
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
    let svc = lookup(&client, service).await?;
    let pool = pool(&svc)?;
    let method = micro::dynamic::method(&pool, service, endpoint)
        .map_err(|e| Failure::msg(e.to_string()))?;
    call_and_print(&client, service, &method, &request).await
}
