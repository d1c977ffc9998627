//! Packs the service framework (`service/`, the `micro` crate, and the
//! `proto/` it depends on) with the workspace's `Cargo.lock` into one
//! gzipped tar embedded in the node (`micro_node::framework`): the runtime
//! builds user services against exactly this source, on any node,
//! wherever the source tree was when the binary was built.
//!
//! The manifests are made standalone: what they inherit from the workspace
//! (`x.workspace = true`) is written out, paths between the two crates
//! made relative to the packed layout, and dev-dependencies dropped. The
//! archive is deterministic (sorted, no timestamps or owners), so its hash
//! names the framework version.

use std::fs;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// The crates packed, by folder under the workspace root.
const CRATES: &[&str] = &["service", "proto"];

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .parent()
        .expect("node/ is inside the workspace")
        .to_path_buf();
    for p in ["Cargo.toml", "Cargo.lock", "service", "proto"] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let workspace: Table = fs::read_to_string(root.join("Cargo.toml"))
        .expect("the workspace manifest")
        .parse()
        .expect("the workspace manifest is TOML");
    let ws = workspace["workspace"].as_table().expect("[workspace]");
    let deps = ws["dependencies"]
        .as_table()
        .expect("[workspace.dependencies]");
    let package = ws["package"].as_table().expect("[workspace.package]");

    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for krate in CRATES {
        let dir = root.join(krate);
        let manifest: Table = fs::read_to_string(dir.join("Cargo.toml"))
            .expect("a member manifest")
            .parse()
            .expect("a member manifest is TOML");
        let standalone = standalone(manifest, deps, package);
        files.push((
            format!("{krate}/Cargo.toml"),
            toml::to_string(&standalone)
                .expect("a manifest serializes")
                .into_bytes(),
        ));
        collect(&dir, krate, &mut files);
    }
    files.push((
        "Cargo.lock".into(),
        fs::read(root.join("Cargo.lock")).expect("the workspace lock"),
    ));
    files.sort();

    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for (path, body) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, path, body.as_slice())
            .expect("a tar entry");
    }
    let gz = tar.into_inner().expect("the tar ends");
    fs::write(
        out.join("framework.tar.gz"),
        gz.finish().expect("gzip ends"),
    )
    .expect("OUT_DIR is writable");
}

/// Every file of a crate's source, as `<krate>/<relative path>`, except
/// its manifest (written separately) and build output.
fn collect(dir: &Path, prefix: &str, files: &mut Vec<(String, Vec<u8>)>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("a source folder")
        .map(|e| e.expect("a folder entry"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().to_string();
        let rel = format!("{prefix}/{name}");
        let kind = entry.file_type().expect("a file type");
        if kind.is_dir() {
            if name != "target" && !name.starts_with('.') {
                collect(&entry.path(), &rel, files);
            }
        } else if kind.is_file() && name != "Cargo.toml" {
            files.push((rel, fs::read(entry.path()).expect("a source file")));
        }
    }
}

/// A member manifest with everything it inherits written out.
fn standalone(mut manifest: Table, deps: &Table, package: &Table) -> Table {
    if let Some(Value::Table(pkg)) = manifest.get_mut("package") {
        for (key, value) in pkg.iter_mut() {
            if inherits(value) {
                *value = package
                    .get(key)
                    .unwrap_or_else(|| panic!("[workspace.package] has no {key}"))
                    .clone();
            }
        }
    }
    manifest.remove("dev-dependencies");
    for section in ["dependencies", "build-dependencies"] {
        if let Some(Value::Table(table)) = manifest.get_mut(section) {
            for (name, spec) in table.iter_mut() {
                if inherits(spec) {
                    *spec = merged(name, spec, deps);
                }
            }
        }
    }
    manifest
}

fn inherits(value: &Value) -> bool {
    value
        .as_table()
        .and_then(|t| t.get("workspace"))
        .and_then(Value::as_bool)
        == Some(true)
}

/// The workspace's entry for dependency `name`, with the member's own
/// keys added (`features` joined, `optional` kept) and a workspace path
/// made relative to the member's folder.
fn merged(name: &str, member: &Value, deps: &Table) -> Value {
    let mut base = match deps
        .get(name)
        .unwrap_or_else(|| panic!("[workspace.dependencies] has no {name}"))
    {
        Value::String(version) => {
            let mut t = Table::new();
            t.insert("version".into(), Value::String(version.clone()));
            t
        }
        Value::Table(t) => t.clone(),
        other => panic!("unexpected workspace dependency {name}: {other}"),
    };
    if let Some(Value::String(path)) = base.get("path").cloned() {
        base.insert("path".into(), Value::String(format!("../{path}")));
    }
    for (key, value) in member.as_table().into_iter().flatten() {
        match key.as_str() {
            "workspace" => {}
            "features" => {
                let mut all: Vec<Value> = base
                    .get("features")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for f in value.as_array().into_iter().flatten() {
                    if !all.contains(f) {
                        all.push(f.clone());
                    }
                }
                base.insert("features".into(), Value::Array(all));
            }
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Table(base)
}
