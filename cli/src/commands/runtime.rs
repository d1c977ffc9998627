//! `micro run`, `status`, `logs`, `kill`, `update`: the runtime, from the CLI.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use micro_proto::runtime::{
    CreateOptions, CreateRequest, DeleteRequest, LogsRequest, ReadRequest, Service, UpdateRequest,
};

use super::{columns, out, Context};
use crate::args::RunArgs;
use crate::errors::Failure;

/// The largest packed upload (the gRPC limit, less room for the rest).
const MAX_UPLOAD: usize = 7 * 1024 * 1024;

/// Where a service comes from.
enum Source {
    Folder(PathBuf),
    Git(String),
    /// An executable built elsewhere, run as it is.
    Binary(PathBuf),
}

/// `path` as an executable to upload: a regular file with an execute bit.
fn classify_binary(path: &str) -> Result<Source, Failure> {
    use std::os::unix::fs::PermissionsExt;
    let not = || Failure::msg(format!("Not an executable file: {path}"));
    let meta = std::fs::metadata(path).map_err(|_| not())?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(not());
    }
    let file = Path::new(path)
        .canonicalize()
        .map_err(|e| Failure::msg(format!("Cannot read {path}: {e}")))?;
    Ok(Source::Binary(file))
}

fn classify(source: &str) -> Result<Source, Failure> {
    let path = Path::new(source);
    if path.is_dir() {
        let dir = path
            .canonicalize()
            .map_err(|e| Failure::msg(format!("Cannot read {source}: {e}")))?;
        return Ok(Source::Folder(dir));
    }
    if source.contains("://") || source.starts_with("git@") {
        return Ok(Source::Git(source.to_string()));
    }
    let first = source.split('/').next().unwrap_or_default();
    if first.contains('.') && source.contains('/') && !source.starts_with('.') {
        return Ok(Source::Git(format!("https://{source}")));
    }
    Err(Failure::msg(format!("No such folder or git URL: {source}")))
}

/// The name a source gives a service: the folder's or repository's name.
fn default_name(source: &Source) -> String {
    match source {
        Source::Folder(dir) | Source::Binary(dir) => dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        Source::Git(url) => {
            let last = url
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default();
            let last = last.split('@').next().unwrap_or_default();
            last.trim_end_matches(".git").to_string()
        }
    }
}

/// Packs a folder as a gzipped tar, leaving out `target/` and `.git/`.
fn pack(dir: &Path) -> Result<Vec<u8>, Failure> {
    fn add(
        tar: &mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>,
        root: &Path,
        dir: &Path,
    ) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name();
            let kind = entry.file_type()?;
            let rel = path.strip_prefix(root).unwrap_or(&path);
            if kind.is_dir() {
                if name == ".git" || (name == "target" && dir == root) {
                    continue;
                }
                tar.append_dir(rel, &path)?;
                add(tar, root, &path)?;
            } else if kind.is_file() {
                tar.append_path_with_name(&path, rel)?;
            }
        }
        Ok(())
    }
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(enc);
    tar.follow_symlinks(false);
    add(&mut tar, dir, dir)
        .map_err(|e| Failure::msg(format!("Cannot pack {}: {e}", dir.display())))?;
    let bytes = tar
        .into_inner()
        .and_then(|mut gz| {
            gz.flush()?;
            gz.finish()
        })
        .map_err(|e| Failure::msg(format!("Cannot pack {}: {e}", dir.display())))?;
    within_upload_limit(bytes, dir, "leave build output and data out of it")
}

/// `bytes` packed from `what`, unless they exceed the upload limit (then
/// the error says how large, and `advice`).
fn within_upload_limit(bytes: Vec<u8>, what: &Path, advice: &str) -> Result<Vec<u8>, Failure> {
    if bytes.len() > MAX_UPLOAD {
        return Err(Failure::msg(format!(
            "{} packs to {} bytes; the limit is {MAX_UPLOAD} (7 MiB): {advice}",
            what.display(),
            bytes.len()
        )));
    }
    Ok(bytes)
}

async fn pack_async(dir: PathBuf) -> Result<Vec<u8>, Failure> {
    tokio::task::spawn_blocking(move || pack(&dir))
        .await
        .map_err(|e| Failure::msg(e.to_string()))?
}

/// An executable as an upload the node runs without building: the file
/// (its mode kept) and a `micro.toml` that runs it.
fn pack_binary(file: &Path) -> Result<Vec<u8>, Failure> {
    let failed = |e: std::io::Error| Failure::msg(format!("Cannot pack {}: {e}", file.display()));
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let manifest = format!(
        "# uploaded with micro run --binary: run as it is, no build\nrun = {:?}\n",
        format!("exec ./{name}")
    );
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(enc);
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "micro.toml", manifest.as_bytes())
        .map_err(failed)?;
    tar.append_path_with_name(file, &name).map_err(failed)?;
    let bytes = tar
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(failed)?;
    within_upload_limit(
        bytes,
        file,
        "strip it (`strip`, or `strip = true` in its profile)",
    )
}

/// What is uploaded for `source`, and how the source is shown.
async fn upload_of(source: &Source) -> Result<(String, Vec<u8>), Failure> {
    match source {
        Source::Folder(dir) => Ok((dir.display().to_string(), pack_async(dir.clone()).await?)),
        Source::Git(url) => Ok((url.clone(), Vec::new())),
        Source::Binary(file) => {
            let file = file.clone();
            let bytes = tokio::task::spawn_blocking({
                let file = file.clone();
                move || pack_binary(&file)
            })
            .await
            .map_err(|e| Failure::msg(e.to_string()))??;
            Ok((file.display().to_string(), bytes))
        }
    }
}

fn not_found_is_service(s: tonic::Status) -> Failure {
    if s.code() == tonic::Code::NotFound {
        Failure::msg("Service not found")
    } else {
        s.into()
    }
}

pub async fn run(ctx: Context, a: &RunArgs) -> Result<(), Failure> {
    let source = if a.binary {
        classify_binary(&a.source)?
    } else {
        classify(&a.source)?
    };
    let name = name_of(a, &source);
    let (shown, upload) = upload_of(&source).await?;
    let client = ctx.connect().await?;
    client
        .runtime()
        .create(CreateRequest {
            service: Some(Service {
                name: name.clone(),
                version: "latest".into(),
                source: shown,
                // The node records the logged-in account as the owner.
                metadata: HashMap::new(),
            }),
            options: Some(CreateOptions {
                env: a.env_vars.clone(),
                command: a.command.clone().unwrap_or_default(),
            }),
            upload,
        })
        .await?;
    follow_build(&client, &name).await
}

/// The name `micro run` gives the service.
fn name_of(a: &RunArgs, source: &Source) -> String {
    a.name.clone().unwrap_or_else(|| default_name(source))
}

/// Prints the lines of the service's build log as they are written, on
/// stderr (`past` of the lines already there first; negative: none),
/// until the returned handle is aborted; every line written once this
/// returns is shown. The receiver turns true once a build's last line
/// (`[micro] build finished`, `failed …`) was printed.
async fn show_build(
    client: &micro::Client,
    name: &str,
    past: i64,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Receiver<bool>,
) {
    let (ended_tx, ended) = tokio::sync::watch::channel(false);
    let req = LogsRequest {
        name: name.to_string(),
        count: past,
        stream: true,
        build: true,
    };
    // The node fixes where following starts when it answers: only then
    // may the build begin.
    let Ok(resp) = client.runtime().logs(req).await else {
        return (tokio::spawn(async {}), ended);
    };
    let task = tokio::spawn(async move {
        let mut lines = resp.into_inner();
        while let Ok(Some(rec)) = lines.message().await {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{}", rec.message);
            if rec.message.starts_with("[micro] build ") {
                ended_tx.send_replace(true);
            }
        }
    });
    (task, ended)
}

/// After `micro run`: shows the build as it happens until the service
/// runs (or fails), then its state; a failed build fails the command.
async fn follow_build(client: &micro::Client, name: &str) -> Result<(), Failure> {
    let (shown, mut ended) = show_build(client, name, 1000).await;
    let outcome = loop {
        let found = client
            .runtime()
            .read(ReadRequest {
                name: name.to_string(),
            })
            .await?
            .into_inner()
            .services
            .into_iter()
            .next();
        let Some(svc) = found else {
            break Err(Failure::msg(format!("Service {name} was killed meanwhile")));
        };
        let get = |k: &str| svc.metadata.get(k).cloned().unwrap_or_default();
        let (status, error) = (get("status"), get("error"));
        match status.as_str() {
            "pending" | "building" | "built" | "starting" | "moving" => {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                continue;
            }
            _ => {}
        }
        // The build log's last lines are on their way.
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(3), ended.wait_for(|e| *e)).await;
        break if status == "error" && error.starts_with("build failed") {
            Err(Failure::msg(format!(
                "Build failed: see `micro logs {name} --build`"
            )))
        } else if error.is_empty() {
            eprintln!("{name} is {status}");
            Ok(())
        } else {
            eprintln!("{name} is {status}: {error}");
            Ok(())
        };
    };
    shown.abort();
    outcome
}

/// `12s ago`, `3m ago`, `2h ago`, `4d ago`.
fn ago(unix_secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let d = (now - unix_secs).max(0);
    match d {
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        3600..=86399 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

pub async fn status(ctx: Context) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let mut services = client
        .runtime()
        .read(ReadRequest::default())
        .await?
        .into_inner()
        .services;
    if services.is_empty() {
        return Ok(());
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows = vec![[
        "NAME", "VERSION", "SOURCE", "STATUS", "NODE", "BUILD", "UPDATED", "METADATA",
    ]
    .map(String::from)
    .to_vec()];
    for s in services {
        let m = &s.metadata;
        let get = |k: &str| m.get(k).cloned().unwrap_or_default();
        let mut meta = format!("owner={}, group={}", get("owner"), get("group"));
        if get("restarts").parse::<u32>().unwrap_or(0) > 0 {
            meta.push_str(&format!(", restarts={}", get("restarts")));
        }
        if let Some(e) = m.get("error") {
            meta.push_str(&format!(", error={e}"));
        }
        if let Some(r) = m.get("reported") {
            meta.push_str(&format!(", last reported={r}"));
        }
        let updated = get("updated").parse::<i64>().map(ago).unwrap_or_default();
        rows.push(vec![
            s.name,
            s.version,
            s.source,
            get("status"),
            get("node"),
            get("build"),
            updated,
            meta,
        ]);
    }
    out(columns(&rows).as_bytes())
}

pub async fn logs(
    ctx: Context,
    name: &str,
    lines: i64,
    follow: bool,
    build: bool,
) -> Result<(), Failure> {
    if lines < 0 {
        return Err(Failure::msg("The number of lines must not be negative"));
    }
    let client = ctx.connect().await?;
    let mut stream = client
        .runtime()
        .logs(LogsRequest {
            name: name.to_string(),
            count: lines,
            stream: follow,
            build,
        })
        .await
        .map_err(not_found_is_service)?
        .into_inner();
    while let Some(rec) = stream.message().await.map_err(not_found_is_service)? {
        out(format!("{}\n", rec.message).as_bytes())?;
    }
    Ok(())
}

pub async fn kill(ctx: Context, name: &str) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    client
        .runtime()
        .delete(DeleteRequest {
            name: name.to_string(),
        })
        .await
        .map_err(not_found_is_service)?;
    Ok(())
}

pub async fn update(
    ctx: Context,
    source: &str,
    name: Option<&str>,
    binary: bool,
) -> Result<(), Failure> {
    let classified = if binary {
        classify_binary(source)
    } else {
        classify(source)
    };
    let (name, shown_source, upload) = match classified {
        Ok(source) => {
            let name = name
                .map(str::to_string)
                .unwrap_or_else(|| default_name(&source));
            let (shown, upload) = upload_of(&source).await?;
            (name, shown, upload)
        }
        // A plain word names a service that was run from git.
        Err(_) if !binary => (
            name.unwrap_or(source).to_string(),
            String::new(),
            Vec::new(),
        ),
        Err(e) => return Err(e),
    };
    let client = ctx.connect().await?;
    // The new version's build, as it happens (only lines from now on).
    let (shown, mut ended) = show_build(&client, &name, -1).await;
    let updated = client
        .runtime()
        .update(UpdateRequest {
            service: Some(Service {
                name,
                source: shown_source,
                ..Default::default()
            }),
            upload,
        })
        .await
        .map_err(not_found_is_service);
    // The build's last lines may still be on their way.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), ended.wait_for(|e| *e)).await;
    shown.abort();
    updated?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_sources() {
        assert_eq!(
            default_name(&Source::Git(
                "https://github.com/micro/services/helloworld".into()
            )),
            "helloworld"
        );
        assert_eq!(
            default_name(&Source::Git("https://h/org/repo.git@main".into())),
            "repo"
        );
        assert_eq!(
            default_name(&Source::Folder(PathBuf::from("/tmp/greeter"))),
            "greeter"
        );
        assert!(
            matches!(classify("github.com/micro/services"), Ok(Source::Git(u)) if u == "https://github.com/micro/services")
        );
        assert!(classify("./does-not-exist").is_err());
    }

    #[test]
    fn packing_leaves_out_build_output_and_git() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::create_dir_all(dir.path().join("target/debug")).unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join("src/main.rs"), "fn main() {}").unwrap();
        std::fs::write(dir.path().join("target/debug/big"), "x").unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), "x").unwrap();
        let bytes = pack(dir.path()).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().to_string())
            .collect();
        assert!(names.iter().any(|n| n == "src/main.rs"), "{names:?}");
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("target") || n.starts_with(".git")),
            "{names:?}"
        );
    }
}
