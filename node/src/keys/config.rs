//! Config: one JSON document per namespace at `config/<ns>` (secret leaves
//! sealed in it).

/// The document of namespace `ns`.
pub fn document(ns: &str) -> Vec<u8> {
    format!("config/{ns}").into_bytes()
}
