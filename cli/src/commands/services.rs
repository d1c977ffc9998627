//! `micro services`: the names of the registered services, sorted.

use micro_proto::registry::ListRequest;

use super::{out, Context};
use crate::errors::Failure;

pub async fn run(ctx: Context) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let resp = client
        .registry()
        .list_services(ListRequest::default())
        .await?
        .into_inner();
    let mut names: Vec<String> = resp.services.into_iter().map(|s| s.name).collect();
    names.sort();
    names.dedup();
    let mut text = String::new();
    for n in names {
        text.push_str(&n);
        text.push('\n');
    }
    out(text.as_bytes())
}
