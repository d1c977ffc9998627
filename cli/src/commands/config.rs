//! `micro config`: get, set and delete configuration by dot path.

use micro_proto::config::{DeleteRequest, GetRequest, Options, SetRequest, Value};

use super::{out, Context};
use crate::args::{ConfigArgs, ConfigCommand};
use crate::errors::Failure;

pub async fn run(ctx: Context, args: &ConfigArgs) -> Result<(), Failure> {
    let Some(cmd) = &args.command else {
        return Err(Failure::msg(
            "No command provided to micro config. Please refer to 'micro config --help'",
        ));
    };
    let client = ctx.connect().await?;
    let mut config = client.config();
    match cmd {
        ConfigCommand::Get { path, secret } => {
            let resp = config
                .get(GetRequest {
                    namespace: String::new(),
                    path: path.clone(),
                    options: Some(Options { secret: *secret }),
                })
                .await?
                .into_inner();
            let data = resp.value.map(|v| v.data).unwrap_or_default();
            // Strings print bare; everything else as compact JSON.
            let shown = match serde_json::from_str::<serde_json::Value>(&data) {
                Ok(serde_json::Value::String(s)) => s,
                Ok(v) => v.to_string(),
                Err(_) => data,
            };
            out(format!("{shown}\n").as_bytes())
        }
        ConfigCommand::Set {
            path,
            value,
            secret,
        } => {
            config
                .set(SetRequest {
                    namespace: String::new(),
                    path: path.clone(),
                    value: Some(Value {
                        data: value.clone(),
                    }),
                    options: Some(Options { secret: *secret }),
                })
                .await?;
            Ok(())
        }
        ConfigCommand::Del { path } => {
            config
                .delete(DeleteRequest {
                    namespace: String::new(),
                    path: path.clone(),
                })
                .await?;
            Ok(())
        }
    }
}
