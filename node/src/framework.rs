//! The service framework this binary was built with, embedded: the `micro`
//! crate's source and the `micro-proto` it depends on, with standalone
//! manifests, and the workspace's `Cargo.lock` (packed by `node/build.rs`).
//!
//! A project made by `micro new` depends on `micro` by version; the runtime
//! builds it with that dependency patched to this source
//! ([`patch_args`]), unpacked once per framework version into the node's
//! data dir, so it builds on any node whatever path the author's copy of
//! the framework had. `micro new` ships [`lock`] as the project's
//! `Cargo.lock`: the versions the framework is tested with.
//!
//! Must never: unpack anything but the embedded archive, or leave a
//! half-unpacked framework where a build would use it.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The template of a new project: `examples/helloworld`.
const TEMPLATE: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../examples/helloworld/Cargo.toml"),
    ),
    (
        "build.rs",
        include_str!("../../examples/helloworld/build.rs"),
    ),
    (
        "README.md",
        include_str!("../../examples/helloworld/README.md"),
    ),
    (
        "src/main.rs",
        include_str!("../../examples/helloworld/src/main.rs"),
    ),
    (
        "proto/helloworld.proto",
        include_str!("../../examples/helloworld/proto/helloworld.proto"),
    ),
];

/// The gzipped tar: `service/…`, `proto/…`, `Cargo.lock`.
const ARCHIVE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/framework.tar.gz"));

/// The framework's version, as projects depend on it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A short hash of the embedded source: two binaries with the same
/// framework share an unpacked copy, different ones never do.
pub fn id() -> String {
    Sha256::digest(ARCHIVE)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The files of a new project named `name` (lowercase, digits, `_`):
/// the template with `helloworld` renamed, depending on `micro` by
/// version, or by path to the framework source `framework`.
pub fn project(name: &str, framework: Option<&str>) -> Vec<(String, String)> {
    let dependency = match framework {
        Some(dir) => format!("path = {}", toml::Value::String(dir.to_string())),
        None => format!("version = \"{VERSION}\""),
    };
    let render = |text: &str| {
        text.replace("path = \"../../service\"", &dependency)
            .replace("Helloworld", &camel(name))
            .replace("helloworld", name)
    };
    TEMPLATE
        .iter()
        .map(|(rel, text)| (rel.replace("helloworld", name), render(text)))
        .collect()
}

/// `my_greeter` as a type name: `MyGreeter`.
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

/// The workspace's `Cargo.lock`, for new projects.
pub fn lock() -> io::Result<Vec<u8>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(ARCHIVE));
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path()?.as_os_str() == "Cargo.lock" {
            let mut body = Vec::new();
            entry.read_to_end(&mut body)?;
            return Ok(body);
        }
    }
    Err(io::Error::other("the embedded framework has no Cargo.lock"))
}

/// Unpacks the framework under `root` (once: `<root>/<id>/`, made whole
/// in a temporary folder and renamed into place) and returns the folder
/// of the `micro` crate. Blocking.
pub fn unpack(root: &Path) -> io::Result<PathBuf> {
    let dir = root.join(id());
    let crate_dir = dir.join("service");
    if crate_dir.join("Cargo.toml").is_file() {
        return Ok(crate_dir);
    }
    std::fs::create_dir_all(root)?;
    let tmp = root.join(format!(".unpacking-{:016x}", rand::random::<u64>()));
    let unpacked = tar::Archive::new(flate2::read::GzDecoder::new(ARCHIVE))
        .unpack(&tmp)
        .and_then(|()| std::fs::rename(&tmp, &dir));
    match unpacked {
        Ok(()) => Ok(crate_dir),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            // Another build unpacked it meanwhile.
            if crate_dir.join("Cargo.toml").is_file() {
                Ok(crate_dir)
            } else {
                Err(e)
            }
        }
    }
}

/// Whether a Cargo manifest depends on `micro` (as a dependency or a
/// build dependency); a manifest that does not parse is taken to.
pub fn depends_on_micro(manifest: &str) -> bool {
    let Ok(doc) = manifest.parse::<toml::Table>() else {
        return true;
    };
    ["dependencies", "build-dependencies"]
        .iter()
        .any(|section| {
            doc.get(*section)
                .and_then(toml::Value::as_table)
                .is_some_and(|t| t.contains_key("micro"))
        })
}

/// The `cargo build` arguments that point a project's `micro` dependency
/// at the unpacked framework in `crate_dir`.
pub fn patch_args(crate_dir: &Path) -> [String; 2] {
    let path = toml::Value::String(crate_dir.display().to_string());
    [
        "--config".into(),
        format!("patch.crates-io.micro.path={path}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_projects_of_the_framework_get_it() {
        let files: std::collections::HashMap<String, String> =
            project("g", None).into_iter().collect();
        assert!(depends_on_micro(&files["Cargo.toml"]));
        assert!(!depends_on_micro(
            "[package]\nname = \"x\"\n[dependencies]\nserde = \"1\"\n"
        ));
    }

    #[test]
    fn a_project_is_the_template_renamed_by_version() {
        let files: std::collections::HashMap<String, String> =
            project("my_greeter", None).into_iter().collect();
        let main = &files["src/main.rs"];
        assert!(main.contains("include_proto!(\"my_greeter\")"));
        assert!(main.contains("MyGreeterServer"));
        assert!(!main.contains("helloworld"));
        assert!(files.contains_key("proto/my_greeter.proto"));
        let toml = &files["Cargo.toml"];
        assert!(toml.contains("name = \"my_greeter\""));
        assert!(!toml.contains("path"), "no path of this machine: {toml}");
        assert!(toml.contains("micro = { version = \"0.1.0\" }"), "{toml}");
        assert!(
            toml.contains("micro = { version = \"0.1.0\", features = [\"build\"] }"),
            "{toml}"
        );
        let by_path: std::collections::HashMap<String, String> =
            project("g", Some("/fw")).into_iter().collect();
        assert!(by_path["Cargo.toml"].contains("path = \"/fw\""));
    }

    #[test]
    fn the_framework_unpacks_standalone_and_once() {
        let root = tempfile::tempdir().unwrap();
        let dir = unpack(root.path()).unwrap();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"micro\""), "{manifest}");
        assert!(
            !manifest.contains("workspace"),
            "nothing is inherited: {manifest}"
        );
        assert!(manifest.contains("path = \"../proto\""), "{manifest}");
        assert!(dir.join("src/lib.rs").is_file());
        assert!(dir.join("../proto/proto/store.proto").is_file());
        assert!(!manifest.contains("tempfile"), "no dev-dependencies");
        // A second call finds it.
        assert_eq!(unpack(root.path()).unwrap(), dir);
        let entries = std::fs::read_dir(root.path()).unwrap().count();
        assert_eq!(entries, 1, "no temporary folder is left");
        let lock = String::from_utf8(lock().unwrap()).unwrap();
        assert!(lock.contains("name = \"tonic\""));
    }
}
