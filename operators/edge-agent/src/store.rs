//! What the agent holds: every object the hub delivered, keyed by resource (type, namespace,
//! name), with its uid and resourceVersion.
//!
//! One trait, two stores: [`SqliteStore`] (the real agent: durable before the ACK) and
//! [`MemoryStore`] (hollow agents in `simulate`). The session logic is the same code over either.
//!
//! Deletes leave a tombstone (the newest RV seen), so a late resend of an older insert cannot bring
//! a deleted object back. Tombstones are pruned after [`TOMBSTONE_TTL`]: by then the hub has long
//! given up resending (5 sends, 5 s apart).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgefleet_channel::ResourceType;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// How long a delete's tombstone is kept.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store lock poisoned")]
    Poisoned,
    #[error("store file: {0}")]
    Io(String),
}

/// Where an object lives: its route resource without the wire's string form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub type_: ResourceType,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(type_: ResourceType, namespace: &str, name: &str) -> Self {
        Key {
            type_,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

/// One live object.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub uid: String,
    pub resource_version: String,
    /// The object as JSON text (kept as text: parsed only when served).
    pub body: String,
}

/// What a store holds about a key, tombstones included.
#[derive(Clone, Debug, PartialEq)]
enum Entry {
    Live(Object),
    Deleted {
        uid: String,
        resource_version: String,
    },
}

impl Entry {
    fn resource_version(&self) -> &str {
        match self {
            Entry::Live(o) => &o.resource_version,
            Entry::Deleted {
                resource_version, ..
            } => resource_version,
        }
    }
}

/// The outcome of an insert/update/delete. Either way the ACK carries `resource_version`: the
/// version the store now holds for the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub changed: bool,
    pub resource_version: String,
}

/// One row of an export (`GET /agents/{node}/objects`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    /// `<namespace>/<type>/<name>`, the wire's resource string.
    pub resource: String,
    pub uid: String,
    pub resource_version: String,
}

/// `a` compared with `b`: numerically when both are integers; otherwise equal strings are equal
/// and different strings count as `a` newer (never refuse what we cannot order). Never panics.
pub fn compare_resource_versions(a: &str, b: &str) -> Ordering {
    fn number(rv: &str) -> Option<u128> {
        (!rv.is_empty() && rv.bytes().all(|b| b.is_ascii_digit()))
            .then(|| rv.parse().ok())
            .flatten()
    }
    match (number(a), number(b)) {
        (Some(a), Some(b)) => a.cmp(&b),
        _ if a == b => Ordering::Equal,
        _ => Ordering::Greater,
    }
}

/// Whether an incoming version should replace what is held.
fn supersedes(incoming: &str, held: Option<&Entry>) -> bool {
    held.is_none_or(
        |e| match (e, compare_resource_versions(incoming, e.resource_version())) {
            (_, Ordering::Greater) => true,
            // A delete means "this node no longer needs it", not always "it is gone": the same
            // version sent again (the node needs it again, unchanged) comes back. Only an older
            // version, a late resend from before the delete, stays out.
            (Entry::Deleted { .. }, Ordering::Equal) => true,
            _ => false,
        },
    )
}

/// The version a tombstone keeps: the newer of what was held and what the delete names, so an
/// insert older than anything this node saw stays out.
fn tombstone_version(held: Option<&Entry>, rv: &str) -> String {
    match held {
        Some(e) if compare_resource_versions(e.resource_version(), rv) == Ordering::Greater => {
            e.resource_version().to_string()
        }
        _ => rv.to_string(),
    }
}

/// The store behind a session and the local API. Calls are synchronous and short (one row);
/// `put` and `delete` return only once the change is durable for a durable store.
pub trait Store: Send + Sync {
    /// Insert or update `key` unless the held version is the same or newer.
    fn put(&self, key: &Key, object: Object) -> Result<Applied, StoreError>;
    /// Delete `key` unless the held object is another one (uid); a tombstone keeps the newest
    /// version seen, so an older insert resent late stays out.
    fn delete(&self, key: &Key, uid: &str, resource_version: &str) -> Result<Applied, StoreError>;
    fn get(&self, key: &Key) -> Result<Option<Object>, StoreError>;
    /// Live objects of one type in one namespace, by name.
    fn list(
        &self,
        type_: ResourceType,
        namespace: &str,
    ) -> Result<Vec<(String, Object)>, StoreError>;
    /// Every live object, for exports and the chaos test.
    fn export(&self) -> Result<Vec<Listed>, StoreError>;
}

fn listed(key: &Key, uid: &str, rv: &str) -> Listed {
    Listed {
        resource: format!("{}/{}/{}", key.namespace, key.type_, key.name),
        uid: uid.to_string(),
        resource_version: rv.to_string(),
    }
}

fn decide_put(held: Option<&Entry>, object: &Object) -> Option<Applied> {
    // `None`: write it. `Some`: keep what is held and ACK its version.
    if supersedes(&object.resource_version, held) {
        return None;
    }
    held.map(|e| Applied {
        changed: false,
        resource_version: e.resource_version().to_string(),
    })
}

fn decide_delete(held: Option<&Entry>, uid: &str, rv: &str) -> Option<Applied> {
    // `None`: tombstone it. `Some`: nothing to do, ACK this version.
    match held {
        // The same object: a delete is final whatever version it names. (Ignoring one that
        // names an older version than held would still ACK it, and the hub would release the
        // ObjectSync while the object stayed on the edge for good.)
        Some(Entry::Live(o)) if uid.is_empty() || o.uid == uid => None,
        // Another object under the same name (recreated since): the delete is not about it.
        Some(Entry::Live(o)) => Some(Applied {
            changed: false,
            resource_version: o.resource_version.clone(),
        }),
        Some(Entry::Deleted {
            resource_version, ..
        }) => Some(Applied {
            changed: false,
            resource_version: if compare_resource_versions(rv, resource_version)
                == Ordering::Greater
            {
                rv.to_string()
            } else {
                resource_version.clone()
            },
        }),
        // Never held: remember the delete, so an older insert resent late stays out.
        None => None,
    }
}

/// Hollow agents' store: a map behind a mutex, a few hundred bytes per object.
#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<BTreeMap<Key, Entry>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn put(&self, key: &Key, object: Object) -> Result<Applied, StoreError> {
        let mut entries = self.entries.lock().map_err(|_| StoreError::Poisoned)?;
        if let Some(kept) = decide_put(entries.get(key), &object) {
            return Ok(kept);
        }
        let resource_version = object.resource_version.clone();
        entries.insert(key.clone(), Entry::Live(object));
        Ok(Applied {
            changed: true,
            resource_version,
        })
    }

    fn delete(&self, key: &Key, uid: &str, resource_version: &str) -> Result<Applied, StoreError> {
        let mut entries = self.entries.lock().map_err(|_| StoreError::Poisoned)?;
        if let Some(kept) = decide_delete(entries.get(key), uid, resource_version) {
            return Ok(kept);
        }
        let resource_version = tombstone_version(entries.get(key), resource_version);
        entries.insert(
            key.clone(),
            Entry::Deleted {
                uid: uid.to_string(),
                resource_version: resource_version.clone(),
            },
        );
        Ok(Applied {
            changed: true,
            resource_version,
        })
    }

    fn get(&self, key: &Key) -> Result<Option<Object>, StoreError> {
        let entries = self.entries.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(match entries.get(key) {
            Some(Entry::Live(o)) => Some(o.clone()),
            _ => None,
        })
    }

    fn list(
        &self,
        type_: ResourceType,
        namespace: &str,
    ) -> Result<Vec<(String, Object)>, StoreError> {
        let entries = self.entries.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(entries
            .iter()
            .filter(|(k, _)| k.type_ == type_ && k.namespace == namespace)
            .filter_map(|(k, e)| match e {
                Entry::Live(o) => Some((k.name.clone(), o.clone())),
                Entry::Deleted { .. } => None,
            })
            .collect())
    }

    fn export(&self) -> Result<Vec<Listed>, StoreError> {
        let entries = self.entries.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(entries
            .iter()
            .filter_map(|(k, e)| match e {
                Entry::Live(o) => Some(listed(k, &o.uid, &o.resource_version)),
                Entry::Deleted { .. } => None,
            })
            .collect())
    }
}

/// The real agent's store: one SQLite file, WAL with `synchronous=FULL` (every commit is
/// fsynced before `put`/`delete` return), a small page cache (RSS matters on 1 GiB devices).
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // It holds Secrets: owner-only, and SQLite gives its -wal/-shm files the same mode.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        drop(
            options
                .open(path)
                .map_err(|e| StoreError::Io(e.to_string()))?,
        );
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // 256 KiB of page cache; the default 2 MiB is most of the agent's RSS budget.
        conn.pragma_update(None, "cache_size", -256)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS objects (
                type TEXT NOT NULL,
                namespace TEXT NOT NULL,
                name TEXT NOT NULL,
                uid TEXT NOT NULL,
                resource_version TEXT NOT NULL,
                body TEXT,
                deleted_at INTEGER,
                PRIMARY KEY (type, namespace, name)
            ) WITHOUT ROWID;",
        )?;
        conn.execute(
            "DELETE FROM objects WHERE deleted_at IS NOT NULL AND deleted_at < ?1",
            params![now_secs() - i64::try_from(TOMBSTONE_TTL.as_secs()).unwrap_or(0)],
        )?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn held(conn: &Connection, key: &Key) -> Result<Option<Entry>, StoreError> {
        let row = conn
            .query_row(
                "SELECT uid, resource_version, body, deleted_at FROM objects
                 WHERE type = ?1 AND namespace = ?2 AND name = ?3",
                params![key.type_.as_str(), key.namespace, key.name],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                    ))
                },
            )
            .optional()?;
        Ok(row.map(
            |(uid, resource_version, body, deleted_at)| match (body, deleted_at) {
                (Some(body), None) => Entry::Live(Object {
                    uid,
                    resource_version,
                    body,
                }),
                _ => Entry::Deleted {
                    uid,
                    resource_version,
                },
            },
        ))
    }
}

impl Store for SqliteStore {
    fn put(&self, key: &Key, object: Object) -> Result<Applied, StoreError> {
        let conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        if let Some(kept) = decide_put(Self::held(&conn, key)?.as_ref(), &object) {
            return Ok(kept);
        }
        // One statement = one transaction = one fsynced WAL commit (synchronous=FULL).
        conn.execute(
            "INSERT OR REPLACE INTO objects (type, namespace, name, uid, resource_version, body, deleted_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
            params![
                key.type_.as_str(),
                key.namespace,
                key.name,
                object.uid,
                object.resource_version,
                object.body
            ],
        )?;
        Ok(Applied {
            changed: true,
            resource_version: object.resource_version,
        })
    }

    fn delete(&self, key: &Key, uid: &str, resource_version: &str) -> Result<Applied, StoreError> {
        let conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let held = Self::held(&conn, key)?;
        if let Some(kept) = decide_delete(held.as_ref(), uid, resource_version) {
            return Ok(kept);
        }
        let resource_version = tombstone_version(held.as_ref(), resource_version);
        conn.execute(
            "INSERT OR REPLACE INTO objects (type, namespace, name, uid, resource_version, body, deleted_at)
             VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)",
            params![
                key.type_.as_str(),
                key.namespace,
                key.name,
                uid,
                &resource_version,
                now_secs()
            ],
        )?;
        Ok(Applied {
            changed: true,
            resource_version,
        })
    }

    fn get(&self, key: &Key) -> Result<Option<Object>, StoreError> {
        let conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(match Self::held(&conn, key)? {
            Some(Entry::Live(o)) => Some(o),
            _ => None,
        })
    }

    fn list(
        &self,
        type_: ResourceType,
        namespace: &str,
    ) -> Result<Vec<(String, Object)>, StoreError> {
        let conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let mut stmt = conn.prepare_cached(
            "SELECT name, uid, resource_version, body FROM objects
             WHERE type = ?1 AND namespace = ?2 AND deleted_at IS NULL AND body IS NOT NULL
             ORDER BY name",
        )?;
        let rows = stmt.query_map(params![type_.as_str(), namespace], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Object {
                    uid: r.get(1)?,
                    resource_version: r.get(2)?,
                    body: r.get(3)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn export(&self) -> Result<Vec<Listed>, StoreError> {
        let conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let mut stmt = conn.prepare_cached(
            "SELECT type, namespace, name, uid, resource_version FROM objects
             WHERE deleted_at IS NULL AND body IS NOT NULL ORDER BY type, namespace, name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (type_, namespace, name, uid, rv) = row?;
            out.push(Listed {
                resource: format!("{namespace}/{type_}/{name}"),
                uid,
                resource_version: rv,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(name: &str) -> Key {
        Key::new(ResourceType::ConfigMap, "default", name)
    }

    fn obj(uid: &str, rv: &str) -> Object {
        Object {
            uid: uid.into(),
            resource_version: rv.into(),
            body: format!(r#"{{"metadata":{{"uid":"{uid}","resourceVersion":"{rv}"}}}}"#),
        }
    }

    #[test]
    fn resource_versions_compare_without_panicking() {
        assert_eq!(compare_resource_versions("10", "9"), Ordering::Greater);
        assert_eq!(compare_resource_versions("9", "10"), Ordering::Less);
        assert_eq!(compare_resource_versions("7", "7"), Ordering::Equal);
        // Larger than u64 still compares numerically.
        assert_eq!(
            compare_resource_versions("99999999999999999999", "18446744073709551615"),
            Ordering::Greater
        );
        // Odd input: equal strings are equal, anything else counts as newer.
        assert_eq!(compare_resource_versions("abc", "abc"), Ordering::Equal);
        assert_eq!(compare_resource_versions("abc", "5"), Ordering::Greater);
        assert_eq!(compare_resource_versions("5", "abc"), Ordering::Greater);
        assert_eq!(compare_resource_versions("", "5"), Ordering::Greater);
        assert_eq!(compare_resource_versions("-1", "5"), Ordering::Greater);
        assert_eq!(compare_resource_versions("1e3", "5"), Ordering::Greater);
    }

    fn contract(store: &dyn Store) {
        // insert
        let a = store.put(&cm("a"), obj("u1", "5")).unwrap();
        assert_eq!(
            a,
            Applied {
                changed: true,
                resource_version: "5".into()
            }
        );
        // update
        assert!(store.put(&cm("a"), obj("u1", "7")).unwrap().changed);
        // same and older are kept out, and ACK the held version
        let same = store.put(&cm("a"), obj("u1", "7")).unwrap();
        assert_eq!(
            same,
            Applied {
                changed: false,
                resource_version: "7".into()
            }
        );
        let older = store.put(&cm("a"), obj("u1", "6")).unwrap();
        assert_eq!(
            older,
            Applied {
                changed: false,
                resource_version: "7".into()
            }
        );
        assert_eq!(store.get(&cm("a")).unwrap().unwrap().resource_version, "7");
        // odd RVs: different = newer, never a panic
        assert!(store.put(&cm("odd"), obj("u2", "x1")).unwrap().changed);
        assert!(!store.put(&cm("odd"), obj("u2", "x1")).unwrap().changed);
        assert!(store.put(&cm("odd"), obj("u2", "3")).unwrap().changed);
        // list and export
        store
            .put(
                &Key::new(ResourceType::Secret, "default", "s"),
                obj("u3", "1"),
            )
            .unwrap();
        let names: Vec<_> = store
            .list(ResourceType::ConfigMap, "default")
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["a", "odd"]);
        assert_eq!(store.export().unwrap().len(), 3);
        // a delete of another uid (the name was reused) is ignored
        assert!(!store.delete(&cm("a"), "other", "99").unwrap().changed);
        assert!(store.get(&cm("a")).unwrap().is_some());
        // a delete of the same object applies even when it names an older version than held
        // (the ObjectSync is released on its ACK: ignoring it would strand the object); the
        // tombstone keeps the newer version
        let d = store.delete(&cm("a"), "u1", "6").unwrap();
        assert_eq!(
            d,
            Applied {
                changed: true,
                resource_version: "7".into()
            }
        );
        assert!(store.get(&cm("a")).unwrap().is_none());
        // a late resend of an older insert stays out
        let late = store.put(&cm("a"), obj("u1", "6")).unwrap();
        assert_eq!(
            late,
            Applied {
                changed: false,
                resource_version: "7".into()
            }
        );
        assert!(store.get(&cm("a")).unwrap().is_none());
        // a repeated delete ACKs again
        assert!(!store.delete(&cm("a"), "u1", "7").unwrap().changed);
        // needed again, unchanged: the same version comes back
        assert!(store.put(&cm("a"), obj("u1", "7")).unwrap().changed);
        assert!(store.get(&cm("a")).unwrap().is_some());
        assert!(store.delete(&cm("a"), "u1", "8").unwrap().changed);
        assert!(store.get(&cm("a")).unwrap().is_none());
        // a recreated object (newer RV, new uid) comes back
        assert!(store.put(&cm("a"), obj("u9", "20")).unwrap().changed);
        assert_eq!(store.get(&cm("a")).unwrap().unwrap().uid, "u9");
        // a delete of something never held is remembered
        assert!(store.delete(&cm("ghost"), "g", "10").unwrap().changed);
        assert!(!store.put(&cm("ghost"), obj("g", "9")).unwrap().changed);
        assert!(store.get(&cm("ghost")).unwrap().is_none());
    }

    #[test]
    fn memory_store_keeps_the_contract() {
        contract(&MemoryStore::new());
    }

    #[test]
    fn sqlite_store_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        contract(&SqliteStore::open(&dir.path().join("store.db")).unwrap());
    }

    #[test]
    fn sqlite_store_is_durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            store.put(&cm("kept"), obj("u1", "11")).unwrap();
            store.put(&cm("gone"), obj("u2", "12")).unwrap();
            store.delete(&cm("gone"), "u2", "13").unwrap();
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let store = SqliteStore::open(&path).unwrap();
        let kept = store.get(&cm("kept")).unwrap().unwrap();
        assert_eq!(kept, obj("u1", "11"));
        assert!(store.get(&cm("gone")).unwrap().is_none());
        // The tombstone survived the restart too.
        assert!(!store.put(&cm("gone"), obj("u2", "12")).unwrap().changed);
        let mode: String = store
            .conn
            .lock()
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
