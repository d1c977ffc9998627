//! `micro new NAME`: a ready Rust service project, made from the
//! `examples/helloworld` files this binary was built with. It depends on
//! `micro` by version, with no path of this machine in it, and ships the
//! `Cargo.lock` the framework is tested with; the node's runtime builds it
//! against the framework embedded in the node (`micro_node::framework`).

use std::path::{Path, PathBuf};

use micro_node::framework as embedded;

use super::out;
use crate::errors::Failure;

pub fn run(name: &str, framework: Option<&Path>) -> Result<(), Failure> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(Failure::msg(format!(
            "Invalid service name '{name}': use lowercase letters, digits and '_', starting with a letter"
        )));
    }
    let dir = PathBuf::from(name);
    if dir.exists() {
        return Err(Failure::msg(format!("{name} already exists")));
    }
    let framework = match framework {
        Some(dir) => Some(
            dir.canonicalize()
                .ok()
                .filter(|d| d.join("Cargo.toml").is_file())
                .ok_or_else(|| {
                    Failure::msg(format!(
                        "The micro framework source is not at {}",
                        dir.display()
                    ))
                })?
                .to_string_lossy()
                .to_string(),
        ),
        None => None,
    };
    let fw = framework.as_deref();
    let write = |rel: &str, text: &[u8]| -> Result<(), Failure> {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Failure::msg(format!("Cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(&path, text)
            .map_err(|e| Failure::msg(format!("Cannot write {}: {e}", path.display())))
    };
    for (rel, text) in embedded::project(name, fw) {
        write(&rel, text.as_bytes())?;
    }
    if fw.is_none() {
        let lock = embedded::lock()
            .map_err(|e| Failure::msg(format!("Cannot read the embedded Cargo.lock: {e}")))?;
        write("Cargo.lock", &lock)?;
    }
    out(format!(
        "Created service {name} in ./{name}\n\nRun it with:\n  micro run ./{name}\n  micro {name} call --name=Alice\n"
    )
    .as_bytes())
}
