//! Messages from the framework itself. A service that set up `tracing` gets
//! them there; one that did not still sees them on stderr (its log), rather
//! than losing a failed registration in silence.

/// A warning.
pub fn warn(msg: &str) {
    if tracing::dispatcher::has_been_set() {
        tracing::warn!("{msg}");
    } else {
        eprintln!("micro: {msg}");
    }
}

/// A notice.
pub fn info(msg: &str) {
    if tracing::dispatcher::has_been_set() {
        tracing::info!("{msg}");
    } else {
        eprintln!("micro: {msg}");
    }
}
