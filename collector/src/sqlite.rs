//! The snapshots on disk: SQLite in WAL mode, one transaction per flush, so a `kill -9` loses at
//! most what arrived since the last flush and never leaves a torn store. Old snapshots are
//! thinned by age (one per resolution step) and finally deleted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use thiserror::Error;

use crate::config::Retention;
use crate::store::StoredMeta;
use crate::window::Snapshot;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("data dir {path} cannot be created: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {path} is not writable by this process: {source}")]
    NotWritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sqlite {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// A bounded label for `scalewise_collector_sqlite_write_errors_total{reason}`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Dir { .. } | StoreError::NotWritable { .. } => "data_dir",
            StoreError::Sqlite { source, .. } => match source.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DiskFull) => "disk_full",
                Some(rusqlite::ErrorCode::ReadOnly) => "read_only",
                Some(rusqlite::ErrorCode::SystemIoFailure) => "io",
                Some(rusqlite::ErrorCode::CannotOpen) => "cannot_open",
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                    "corrupt"
                }
                _ => "other",
            },
        }
    }
}

pub struct Db {
    conn: Connection,
    path: PathBuf,
    /// The store file's inode when opened: a different one (or none) means it was removed.
    ino: Option<u64>,
}

fn blob(vals: &[f64]) -> Vec<u8> {
    vals.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn unblob(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            f64::from_le_bytes(a)
        })
        .collect()
}

/// One instance read back: (service, instance, metadata, snapshots sorted by time).
pub type StoredInstance = (String, String, StoredMeta, Vec<Snapshot>);

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Fails with the directory's name unless a file can be created in it: SQLite alone would say
/// "unable to open database file", or open a read-only store and fail at the first flush.
fn check_writable(dir: &Path) -> Result<(), StoreError> {
    let probe = dir.join(format!(".scalewise-write-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .map_err(|e| StoreError::NotWritable {
            path: dir.to_path_buf(),
            source: e,
        })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

impl Db {
    pub fn open(dir: &Path) -> Result<Db, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Dir {
            path: dir.to_path_buf(),
            source: e,
        })?;
        check_writable(dir)?;
        let path = dir.join("scalewise.sqlite");
        if path.exists() {
            // A store left by another user: SQLite would open it read-only and fail at the
            // first flush.
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| StoreError::NotWritable {
                    path: path.clone(),
                    source: e,
                })?;
        }
        let conn = Connection::open(&path).map_err(|e| StoreError::Sqlite {
            path: path.clone(),
            source: e,
        })?;
        let mut db = Db {
            conn,
            path,
            ino: None,
        };
        db.wrap(db.conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS instance (
                 service TEXT NOT NULL,
                 instance TEXT NOT NULL,
                 meta TEXT NOT NULL,
                 last_seen_ms INTEGER NOT NULL,
                 PRIMARY KEY (service, instance)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS snapshot (
                 service TEXT NOT NULL,
                 instance TEXT NOT NULL,
                 t_ms INTEGER NOT NULL,
                 start_ns INTEGER NOT NULL,
                 vals BLOB NOT NULL,
                 PRIMARY KEY (service, instance, t_ms)
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS snapshot_by_time ON snapshot (t_ms);",
        ))?;
        db.ino = inode(&db.path);
        Ok(db)
    }

    /// Opens the store; one that SQLite finds corrupt (or not a database at all) is set aside as
    /// `scalewise.sqlite.corrupt-<unix seconds>` (with its WAL) and a new one is opened: the
    /// collector keeps receiving and serving, and the old file stays for inspection. Returns the
    /// name it was moved to.
    pub fn open_or_set_aside(dir: &Path) -> Result<(Db, Option<PathBuf>), StoreError> {
        let err = match Db::open(dir).and_then(|db| db.check().map(|()| db)) {
            Ok(db) => return Ok((db, None)),
            Err(e) if e.kind() == "corrupt" => e,
            Err(e) => return Err(e),
        };
        let path = dir.join("scalewise.sqlite");
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = dir.join(format!("scalewise.sqlite.corrupt-{secs}"));
        std::fs::rename(&path, &aside).map_err(|_| err)?;
        for ext in ["-wal", "-shm"] {
            let from = dir.join(format!("scalewise.sqlite{ext}"));
            let _ = std::fs::rename(
                &from,
                dir.join(format!("scalewise.sqlite.corrupt-{secs}{ext}")),
            );
        }
        Ok((Db::open(dir)?, Some(aside)))
    }

    /// Reads the whole schema and the first pages: a file whose header is intact but whose
    /// pages are not fails here rather than at the first flush.
    fn check(&self) -> Result<(), StoreError> {
        let ok: String = self.wrap(
            self.conn
                .query_row("PRAGMA quick_check(1)", [], |r| r.get(0)),
        )?;
        if ok == "ok" {
            Ok(())
        } else {
            Err(StoreError::Sqlite {
                path: self.path.clone(),
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                    Some(ok),
                ),
            })
        }
    }

    /// Opens a new store when the file was removed (or replaced) under the running collector:
    /// SQLite would go on writing to the unlinked file, losing everything at the next start.
    /// `true` when it did; the caller writes what memory holds into the new store.
    pub fn reopen_if_removed(&mut self) -> Result<bool, StoreError> {
        if inode(&self.path) == self.ino && self.ino.is_some() {
            return Ok(false);
        }
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        *self = Db::open(&dir)?;
        Ok(true)
    }

    fn wrap<T>(&self, r: rusqlite::Result<T>) -> Result<T, StoreError> {
        r.map_err(|e| StoreError::Sqlite {
            path: self.path.clone(),
            source: e,
        })
    }

    /// Writes one flush: the new snapshots and the changed metadata, in one transaction.
    pub fn write(
        &mut self,
        snaps: &[(String, String, Snapshot)],
        metas: &[(String, String, StoredMeta)],
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |e| StoreError::Sqlite {
            path: path.clone(),
            source: e,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO snapshot (service, instance, t_ms, start_ns, vals)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(err)?;
            for (service, instance, s) in snaps {
                put.execute(params![
                    service,
                    instance,
                    s.t_ms,
                    s.start_ns as i64,
                    blob(&s.vals)
                ])
                .map_err(err)?;
            }
            let mut meta = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO instance (service, instance, meta, last_seen_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(err)?;
            for (service, instance, m) in metas {
                let text = serde_json::to_string(m).unwrap_or_else(|_| "{}".to_string());
                meta.execute(params![service, instance, text, m.last_seen_ms])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    fn read_snaps(
        &self,
        sql: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<BTreeMap<(String, String), Vec<Snapshot>>, StoreError> {
        let mut out: BTreeMap<(String, String), Vec<Snapshot>> = BTreeMap::new();
        let mut stmt = self.wrap(self.conn.prepare_cached(sql))?;
        let rows = self.wrap(stmt.query_map(args, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                Snapshot {
                    t_ms: r.get(2)?,
                    start_ns: r.get::<_, i64>(3)? as u64,
                    vals: unblob(&r.get::<_, Vec<u8>>(4)?),
                },
            ))
        }))?;
        for row in rows {
            let (service, instance, snap) = self.wrap(row)?;
            out.entry((service, instance)).or_default().push(snap);
        }
        Ok(out)
    }

    fn meta(&self, service: &str, instance: &str) -> Result<Option<StoredMeta>, StoreError> {
        let text: Option<String> = self.wrap(
            self.conn
                .query_row(
                    "SELECT meta FROM instance WHERE service = ?1 AND instance = ?2",
                    params![service, instance],
                    |r| r.get(0),
                )
                .optional(),
        )?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    fn attach_meta(
        &self,
        snaps: BTreeMap<(String, String), Vec<Snapshot>>,
    ) -> Result<Vec<StoredInstance>, StoreError> {
        let mut out = Vec::new();
        for ((service, instance), s) in snaps {
            if let Some(meta) = self.meta(&service, &instance)? {
                out.push((service, instance, meta, s));
            }
        }
        Ok(out)
    }

    /// Every instance seen since `since_ms`, with its snapshots from `from_ms` on (startup).
    pub fn load_recent(
        &self,
        since_ms: i64,
        from_ms: i64,
    ) -> Result<Vec<StoredInstance>, StoreError> {
        let mut snaps = self.read_snaps(
            "SELECT service, instance, t_ms, start_ns, vals FROM snapshot
             WHERE t_ms >= ?1 ORDER BY service, instance, t_ms",
            &[&from_ms],
        )?;
        // Instances seen recently whose last snapshot is older still keep their metadata.
        let mut stmt = self.wrap(
            self.conn
                .prepare("SELECT service, instance FROM instance WHERE last_seen_ms >= ?1"),
        )?;
        let keys = self.wrap(stmt.query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?))))?;
        for k in keys {
            snaps.entry(self.wrap(k)?).or_default();
        }
        drop(stmt);
        self.attach_meta(snaps)
    }

    /// One service's instances with their snapshots in `[from_ms, to_ms]`.
    pub fn service_series(
        &self,
        service: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<StoredInstance>, StoreError> {
        let snaps = self.read_snaps(
            "SELECT service, instance, t_ms, start_ns, vals FROM snapshot
             WHERE service = ?1 AND t_ms >= ?2 AND t_ms <= ?3 ORDER BY instance, t_ms",
            &[&service, &from_ms, &to_ms],
        )?;
        self.attach_meta(snaps)
    }

    /// Names of every service with any snapshot since `since_ms`.
    pub fn services_since(&self, since_ms: i64) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.wrap(
            self.conn
                .prepare("SELECT DISTINCT service FROM instance WHERE last_seen_ms >= ?1"),
        )?;
        let rows = self.wrap(stmt.query_map([since_ms], |r| r.get(0)))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(self.wrap(r)?);
        }
        Ok(out)
    }

    /// Thins snapshots by age (one per resolution step per instance) and deletes the oldest.
    /// Returns how many rows were deleted.
    pub fn downsample(&mut self, now_ms: i64, retention: &Retention) -> Result<usize, StoreError> {
        let mut deleted = 0;
        for tier in &retention.tiers {
            let res = tier.resolution.ms().max(1);
            deleted += self.wrap(self.conn.execute(
                "DELETE FROM snapshot AS s WHERE s.t_ms < ?1 AND EXISTS (
                     SELECT 1 FROM snapshot AS e
                     WHERE e.service = s.service AND e.instance = s.instance
                       AND e.t_ms >= (s.t_ms / ?2) * ?2 AND e.t_ms < s.t_ms)",
                params![now_ms - tier.older_than.ms(), res],
            ))?;
        }
        let cutoff = now_ms - retention.max_age.ms();
        deleted += self.wrap(
            self.conn
                .execute("DELETE FROM snapshot WHERE t_ms < ?1", params![cutoff]),
        )?;
        self.wrap(self.conn.execute(
            "DELETE FROM instance WHERE last_seen_ms < ?1",
            params![cutoff],
        ))?;
        Ok(deleted)
    }

    /// SQLite's own consistency check (`PRAGMA integrity_check` says `ok`).
    pub fn integrity_ok(&self) -> Result<bool, StoreError> {
        let r: String = self.wrap(
            self.conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0)),
        )?;
        Ok(r == "ok")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, Tier};

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("scalewise-sqlite-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn snap(t_ms: i64) -> Snapshot {
        let mut s = Snapshot::new(t_ms, 7);
        s.set(1, t_ms as f64);
        s
    }

    #[test]
    fn snapshots_survive_a_reopen_and_thin_with_age() {
        let d = dir("thin");
        {
            let mut db = Db::open(&d).expect("open");
            let snaps: Vec<_> = (0..120)
                .map(|i| ("svc".to_string(), "i1".to_string(), snap(i * 10_000)))
                .collect();
            let meta = StoredMeta {
                last_seen_ms: 1_190_000,
                ..StoredMeta::default()
            };
            db.write(&snaps, &[("svc".into(), "i1".into(), meta)])
                .expect("write");
        }
        let mut db = Db::open(&d).expect("reopen");
        assert!(db.integrity_ok().expect("check"));
        let got = db.service_series("svc", 0, 2_000_000).expect("read");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].3.len(), 120);
        assert_eq!(got[0].3[5], snap(50_000));
        // Older than 10 minutes: one per minute.
        let r = Retention {
            tiers: vec![Tier {
                older_than: Dur::secs(600),
                resolution: Dur::secs(60),
            }],
            max_age: Dur::secs(86_400),
        };
        db.downsample(1_200_000, &r).expect("thin");
        let got = db.service_series("svc", 0, 2_000_000).expect("read");
        let old: Vec<i64> = got[0]
            .3
            .iter()
            .map(|s| s.t_ms)
            .filter(|t| *t < 600_000)
            .collect();
        assert_eq!(old, (0..10).map(|m| m * 60_000).collect::<Vec<_>>());
        assert_eq!(got[0].3.iter().filter(|s| s.t_ms >= 600_000).count(), 60);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_removed_store_is_created_anew() {
        let d = dir("removed");
        let mut db = Db::open(&d).expect("open");
        let one = vec![("svc".to_string(), "i1".to_string(), snap(1_000))];
        db.write(&one, &[]).expect("write");
        assert!(!db.reopen_if_removed().expect("check"));
        for f in [
            "scalewise.sqlite",
            "scalewise.sqlite-wal",
            "scalewise.sqlite-shm",
        ] {
            let _ = std::fs::remove_file(d.join(f));
        }
        assert!(db.reopen_if_removed().expect("reopen"));
        assert!(!db.reopen_if_removed().expect("check"));
        let two = vec![("svc".to_string(), "i1".to_string(), snap(2_000))];
        let meta = StoredMeta {
            last_seen_ms: 2_000,
            ..StoredMeta::default()
        };
        db.write(&two, &[("svc".into(), "i1".into(), meta)])
            .expect("write to the new store");
        drop(db);
        let db = Db::open(&d).expect("open again");
        let got = db.service_series("svc", 0, 10_000).expect("read");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].3, vec![snap(2_000)]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_unwritable_data_dir_is_named() {
        let e = StoreError::NotWritable {
            path: PathBuf::from("/var/lib/scalewise"),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert!(e
            .to_string()
            .starts_with("data dir /var/lib/scalewise is not writable"));
        assert_eq!(e.kind(), "data_dir");
    }
}
