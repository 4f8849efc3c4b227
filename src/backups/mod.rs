//! Where backups are kept: Secrets in the namespace (the default) or objects
//! in an S3-compatible store. Naming and retention are pure; the store's I/O
//! is in [`object_store`].

pub mod object_store;

use jiff::Timestamp;

/// The name of a backup taken at `at`: `BASE-backup-<unix time, 12 digits>`,
/// so that names sort by time.
pub fn backup_name(base: &str, at: Timestamp) -> String {
    format!("{base}-backup-{:012}", at.as_second())
}

/// The key prefix when the spec gives none: `NAMESPACE/NAME/`.
pub fn default_prefix(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}/")
}

/// The object key of a backup.
pub fn object_key(prefix: &str, name: &str) -> String {
    format!("{prefix}{name}")
}

/// Whether `key`, listed under `prefix`, is a backup this WhatsAppNumber
/// wrote (`PREFIX BASE-backup-<12 digits>`): only those are ever deleted.
pub fn is_own_backup(prefix: &str, base: &str, key: &str) -> bool {
    key.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(base))
        .and_then(|rest| rest.strip_prefix("-backup-"))
        .is_some_and(|digits| digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// `s3://BUCKET/KEY`, as status shows an object.
pub fn object_url(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_sort_by_time() {
        let early = backup_name("ha", Timestamp::from_second(999).unwrap());
        let late = backup_name("ha", Timestamp::from_second(1_000_000).unwrap());
        assert_eq!(early, "ha-backup-000000000999");
        assert!(early < late);
    }

    #[test]
    fn only_own_backups_are_recognised() {
        let prefix = default_prefix("prod", "ha");
        assert_eq!(prefix, "prod/ha/");
        let key = object_key(&prefix, &backup_name("ha", Timestamp::from_second(1_764_000_000).unwrap()));
        assert_eq!(key, "prod/ha/ha-backup-001764000000");
        assert!(is_own_backup(&prefix, "ha", &key));
        // Another object's backups, anything else under the prefix, and keys
        // elsewhere are never taken for ours.
        assert!(!is_own_backup(&prefix, "ha", "prod/ha/ha2-backup-001764000000"));
        assert!(!is_own_backup(&prefix, "ha", "prod/ha/ha-backup-001764000000.old"));
        assert!(!is_own_backup(&prefix, "ha", "prod/ha/notes.txt"));
        assert!(!is_own_backup(&prefix, "ha", "other/ha-backup-001764000000"));
        assert!(!is_own_backup(&prefix, "ha", "prod/ha/ha-backup-00176400000x"));
    }

    #[test]
    fn objects_are_named_as_urls() {
        assert_eq!(object_url("backups", "prod/ha/x"), "s3://backups/prod/ha/x");
    }
}
