//! `micro new NAME`: a ready Rust service project, made from the
//! `examples/helloworld` files this binary was built with.

use std::path::{Path, PathBuf};

use super::out;
use crate::errors::Failure;

const CARGO_TOML: &str = include_str!("../../../examples/helloworld/Cargo.toml");
const BUILD_RS: &str = include_str!("../../../examples/helloworld/build.rs");
const PROTO: &str = include_str!("../../../examples/helloworld/proto/helloworld.proto");
const MAIN_RS: &str = include_str!("../../../examples/helloworld/src/main.rs");
const README: &str = include_str!("../../../examples/helloworld/README.md");

/// The framework source this binary was built from.
fn built_framework() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("service")
}

fn camel(name: &str) -> String {
    name.split('_')
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// The template with `helloworld` renamed and the framework path set.
fn render(template: &str, name: &str, framework: &str) -> String {
    template
        .replace("../../service", framework)
        .replace("Helloworld", &camel(name))
        .replace("helloworld", name)
}

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
    let framework = framework
        .map(Path::to_path_buf)
        .unwrap_or_else(built_framework);
    let framework = framework.canonicalize().map_err(|_| {
        Failure::msg(format!(
            "The micro framework source is not at {}; give its path with --framework",
            framework.display()
        ))
    })?;
    let fw = framework.to_string_lossy();
    let files = [
        ("Cargo.toml", CARGO_TOML),
        ("build.rs", BUILD_RS),
        ("README.md", README),
        ("src/main.rs", MAIN_RS),
    ];
    let write = |rel: &str, text: String| -> Result<(), Failure> {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Failure::msg(format!("Cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(&path, text)
            .map_err(|e| Failure::msg(format!("Cannot write {}: {e}", path.display())))
    };
    for (rel, template) in files {
        write(rel, render(template, name, &fw))?;
    }
    write(&format!("proto/{name}.proto"), render(PROTO, name, &fw))?;
    out(format!(
        "Created service {name} in ./{name}\n\nRun it with:\n  micro run ./{name}\n  micro {name} call --name=Alice\n"
    )
    .as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_is_renamed() {
        let text = render(MAIN_RS, "my_greeter", "/fw");
        assert!(text.contains("include_proto!(\"my_greeter\")"));
        assert!(text.contains("MyGreeterServer"));
        assert!(!text.contains("helloworld"));
        let toml = render(CARGO_TOML, "my_greeter", "/fw");
        assert!(toml.contains("name = \"my_greeter\""));
        assert!(toml.contains("path = \"/fw\""));
    }
}
