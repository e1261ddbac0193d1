//! `forge compact`: redb's offline compaction, which gives the space of deleted records back
//! to the file system (a redb file never shrinks while it is served).

use std::path::Path;

use redb::Database;

use super::{Error, Result};

/// The file's size before and after compaction, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Before.
    pub before: u64,
    /// After.
    pub after: u64,
}

/// Compacts the database file at `path` (the server must be stopped).
///
/// # Errors
/// [`Error::Locked`] when a server holds the file; [`Error::Db`] when it does not exist or
/// compaction fails (redb leaves the file valid either way).
pub fn compact_file(path: &Path) -> Result<Sizes> {
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|e| Error::Db(redb::Error::Io(e)))
    };
    let before = size(path)?;
    let mut db = Database::open(path)?;
    // Each pass moves pages towards the start; stop when one finds nothing more to do.
    while db.compact().map_err(|e| Error::Db(redb::Error::from(e)))? {}
    drop(db);
    Ok(Sizes {
        before,
        after: size(path)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableDefinition;

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    #[test]
    fn deleted_space_is_given_back_and_data_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forge.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(T).unwrap();
                for i in 0..2000u64 {
                    t.insert(i, [7u8; 1024].as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(T).unwrap().retain(|k, _| k < 10).unwrap();
            tx.commit().unwrap();
        }
        let sizes = compact_file(&path).unwrap();
        assert!(sizes.after < sizes.before / 2, "{sizes:?}");
        let db = Database::open(&path).unwrap();
        let tx = redb::ReadableDatabase::begin_read(&db).unwrap();
        let t = tx.open_table(T).unwrap();
        assert_eq!(redb::ReadableTableMetadata::len(&t).unwrap(), 10);
    }

    #[test]
    fn a_file_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forge.redb");
        let _held = Database::create(&path).unwrap();
        assert!(matches!(compact_file(&path), Err(Error::Locked)));
    }
}
