//! Names from the network, and the paths they become: the one checker and
//! the one joiner.
//!
//! [`check_name`] is the grammar of every name that becomes a key segment
//! or a folder name (namespaces, databases, tables, services, versions,
//! node, account and rule ids): 1 to 128 bytes of ASCII letters, digits,
//! `-`, `_` and `.`, and not `.` or `..`. [`under`] joins segments under a
//! root directory, refusing any segment that is not such a name, so the
//! result always lies inside the root.
//!
//! Must never: let a name through that holds a `/`, a `\`, a control
//! character or anything outside the grammar, or return a path outside the
//! root it was given.

use std::path::{Path, PathBuf};

use tonic::Status;

/// The longest name.
pub const MAX_NAME: usize = 128;
/// The longest path segment [`under`] joins (a name plus a suffix such as
/// `.log`); file systems allow 255 bytes.
const MAX_SEGMENT: usize = 255;

fn in_grammar(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks a name that becomes a key segment or a folder name; `what` names
/// it in the error ("service name", "namespace", …).
pub fn check_name(what: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{what} must not be empty"
        )));
    }
    if in_grammar(name, MAX_NAME) {
        return Ok(());
    }
    // Show a bounded, printable rendering of what was refused.
    let mut shown: String = name.escape_default().take(40).collect();
    if shown.len() < name.escape_default().count() {
        shown.push('…');
    }
    Err(Status::invalid_argument(format!(
        "{what} '{shown}' is not allowed: use letters, digits, '-', '_' and '.' (at most {MAX_NAME})"
    )))
}

/// `root/seg1/seg2/…`, where every segment must be a name of the grammar
/// (up to 255 bytes, so `<name>.log` fits): nothing joined here can leave
/// `root`.
pub fn under(root: &Path, segments: &[&str]) -> Result<PathBuf, Status> {
    let mut path = root.to_path_buf();
    for seg in segments {
        if !in_grammar(seg, MAX_SEGMENT) {
            return Err(Status::invalid_argument(format!(
                "'{}' is not a valid path segment",
                seg.escape_default()
            )));
        }
        path.push(seg);
    }
    // The grammar already guarantees it; kept as the last line of defence.
    if !path.starts_with(root) {
        return Err(Status::invalid_argument("the path leaves its folder"));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar() {
        for ok in [
            "a",
            "greeter",
            "0.1.0",
            "latest",
            "team-a_1",
            "helloworld-00ff",
            "...",
            ".hidden",
            "micro.store",
            &"x".repeat(128),
        ] {
            assert!(check_name("name", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/..",
            "../x",
            "a/b",
            "a\\b",
            "a b",
            "a\0b",
            "a\nb",
            "é",
            "a:b",
            "a@b",
            "~",
            &"x".repeat(129),
        ] {
            assert!(check_name("name", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_name("service name", "..").unwrap_err().message(),
            "service name '..' is not allowed: use letters, digits, '-', '_' and '.' (at most 128)"
        );
        assert_eq!(
            check_name("namespace", "").unwrap_err().message(),
            "namespace must not be empty"
        );
        let long = check_name("table", &"/".repeat(1000)).unwrap_err();
        assert!(long.message().len() < 200, "{}", long.message());
    }

    #[test]
    fn under_stays_under_its_root() {
        let root = Path::new("/data/runtime");
        assert_eq!(
            under(root, &["src", "micro", "greeter"]).unwrap(),
            Path::new("/data/runtime/src/micro/greeter")
        );
        let long_log = format!("{}.log", "x".repeat(128));
        assert!(under(root, &["logs", "micro", &long_log]).is_ok());
        for bad in [
            &["src", "..", "x"][..],
            &["src", "a/..", "x"],
            &["src", "/etc"],
            &["src", "."],
            &["src", ""],
            &["src", "a\0"],
        ] {
            assert!(under(root, bad).is_err(), "{bad:?}");
        }
    }
}
