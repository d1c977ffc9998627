//! helloworld: a Micro service with a unary `Call`, a server-streaming
//! `Stream` and a bidirectional `Chat` endpoint.

use micro::errors;
use tonic::{Request, Response, Status};

mod proto {
    tonic::include_proto!("helloworld");
}

use proto::helloworld_server::HelloworldServer;
use proto::{CallRequest, CallResponse, StreamRequest, StreamResponse};

const GREETING: &str = "Hello";

/// The service's handlers. (The trait is named by its path so that no
/// service name can clash with this struct's.)
struct Handlers;

#[tonic::async_trait]
impl proto::helloworld_server::Helloworld for Handlers {
    async fn call(&self, req: Request<CallRequest>) -> Result<Response<CallResponse>, Status> {
        println!("Received Helloworld.Call request");
        let name = req.into_inner().name;
        if name.is_empty() {
            return Err(errors::bad_request("helloworld", "a name is required").into());
        }
        Ok(Response::new(CallResponse {
            msg: format!("{GREETING} {name}"),
        }))
    }

    type StreamStream = tokio_stream::Iter<std::vec::IntoIter<Result<StreamResponse, Status>>>;

    async fn stream(
        &self,
        req: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let count = req.into_inner().count;
        if !(0..=1000).contains(&count) {
            return Err(
                errors::bad_request("helloworld", "count must be between 0 and 1000").into(),
            );
        }
        let replies: Vec<_> = (0..count)
            .map(|i| Ok(StreamResponse { count: i }))
            .collect();
        Ok(Response::new(tokio_stream::iter(replies)))
    }

    type ChatStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<CallResponse, Status>> + Send + 'static>,
    >;

    async fn chat(
        &self,
        req: Request<tonic::Streaming<CallRequest>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        use tokio_stream::StreamExt;
        let replies = req.into_inner().map(|msg| {
            let name = msg?.name;
            if name.is_empty() {
                return Err(errors::bad_request("helloworld", "a name is required").into());
            }
            Ok(CallResponse {
                msg: format!("{GREETING} {name}"),
            })
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

#[tokio::main]
async fn main() {
    println!("Starting helloworld");
    let service = micro::Service::new("helloworld")
        .descriptor(micro::include_descriptor!())
        .handle(HelloworldServer::new(Handlers));
    if let Err(e) = service.run().await {
        eprintln!("{e}");
        std::process::exit(1);
    }
}
