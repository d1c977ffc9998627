//! `micro env`: list, get, add, set and delete environments.

use super::{columns, out, Context};
use crate::args::{EnvArgs, EnvCommand};
use crate::errors::Failure;

pub fn run(mut ctx: Context, args: &EnvArgs) -> Result<(), Failure> {
    match &args.command {
        None => {
            let current = ctx.config.current_name().to_string();
            let rows: Vec<Vec<String>> = ctx
                .config
                .all()
                .into_values()
                .map(|e| {
                    let mark = if e.name == current { "*" } else { " " };
                    let address = e.address();
                    vec![mark.to_string(), e.name, address, e.description]
                })
                .collect();
            // "* name" reads as one column: join the mark and the name.
            let rows: Vec<Vec<String>> = rows
                .into_iter()
                .map(|r| vec![format!("{} {}", r[0], r[1]), r[2].clone(), r[3].clone()])
                .collect();
            out(columns(&rows).as_bytes())
        }
        Some(EnvCommand::Get) => out(format!("{}\n", ctx.config.current_name()).as_bytes()),
        Some(EnvCommand::Add {
            name,
            address,
            description,
            ca,
        }) => {
            let ca = match ca {
                Some(path) => {
                    let pem = std::fs::read_to_string(path).map_err(|e| {
                        Failure::msg(format!("Cannot read the CA file {}: {e}", path.display()))
                    })?;
                    Some((pem, path.display().to_string()))
                }
                None => None,
            };
            ctx.config.add(
                name,
                address,
                description.as_deref().unwrap_or(""),
                ca.as_ref().map(|(pem, file)| (pem.as_str(), file.as_str())),
            )?;
            Ok(ctx.config.save()?)
        }
        Some(EnvCommand::Set { name }) => {
            ctx.config.set_current(name)?;
            Ok(ctx.config.save()?)
        }
        Some(EnvCommand::Del { name }) => {
            ctx.config.delete(name)?;
            Ok(ctx.config.save()?)
        }
    }
}
