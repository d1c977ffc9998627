//! The store's records: `store/<ns>/<db>/<table>/<key>`, the value the
//! protobuf `Record` without its key.

/// `store/<ns>/`: every database of a namespace.
pub fn namespace(ns: &str) -> Vec<u8> {
    format!("store/{ns}/").into_bytes()
}

/// `store/<ns>/<db>/`: every table of a database.
pub fn database(ns: &str, db: &str) -> Vec<u8> {
    format!("store/{ns}/{db}/").into_bytes()
}

/// `store/<ns>/<db>/<table>/`: the records of a table (a record's key is
/// this prefix and the user's key).
pub fn table(ns: &str, db: &str, table: &str) -> Vec<u8> {
    format!("store/{ns}/{db}/{table}/").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_never_reaches_a_longer_name() {
        let t = table("team", "db", "t");
        assert!(t.starts_with(&database("team", "db")));
        assert!(t.starts_with(&namespace("team")));
        assert!(!table("team2", "db", "t").starts_with(&namespace("team")));
        assert!(!table("team", "db2", "t").starts_with(&database("team", "db")));
    }
}
