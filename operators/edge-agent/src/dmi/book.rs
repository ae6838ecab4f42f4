//! What the DMI side remembers, in memory and (real agent) written through to SQLite
//! (`<data-dir>/dmi.db`), so a restart loses none of it:
//!
//! - the mappers registered, one per protocol (KubeEdge v1.22 forgets them on restart);
//! - what each mapper was last sent (a fingerprint per model and device), so a restart resends
//!   nothing and a change sends one UpdateDevice;
//! - the reports: the latest value per (device, property) and the latest state per device, each
//!   flagged pending until the hub took it. Bounded by [`BookLimits`] whatever the outage length:
//!   one row per property, and a cap on rows.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, params};

/// A registered mapper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapperRecord {
    pub protocol: String,
    pub name: String,
    pub version: String,
    pub api_version: String,
    /// Its gRPC unix socket.
    pub address: String,
}

/// One property's report as a mapper sent it (checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwinReport {
    pub property: String,
    pub reported: String,
    pub observed_desired: String,
    /// The model's type of the property (`int`, `float`, ...), lower case as KubeEdge sends it.
    pub type_: String,
    pub timestamp_ms: i64,
}

/// One property's latest report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwinRecord {
    pub reported: String,
    pub observed_desired: String,
    pub type_: String,
    /// The mapper's timestamp (ms since the epoch), else when the agent got it.
    pub timestamp_ms: i64,
    /// The agent's order of arrival: a resent older report never overtakes a newer one.
    pub seq: u64,
    pub pending: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateRecord {
    pub state: String,
    pub timestamp_ms: i64,
    pub seq: u64,
    pub pending: bool,
}

/// `(namespace, device)`.
pub type DeviceKey = (String, String);

/// What is waiting for the hub, per device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub twins: BTreeMap<String, TwinRecord>,
    pub state: Option<StateRecord>,
}

#[derive(Clone, Copy, Debug)]
pub struct BookLimits {
    /// Properties with a latest value kept (all devices together).
    pub max_twins: usize,
}

impl Default for BookLimits {
    fn default() -> Self {
        BookLimits { max_twins: 20_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("dmi book lock poisoned")]
    Poisoned,
    #[error("report book full: {0} properties kept; refusing new ones until the hub takes them")]
    Full(usize),
}

/// What was sent to a protocol's mapper: kind ("model" | "device") → key → fingerprint.
pub type Sent = BTreeMap<(String, String, String), u64>;

#[derive(Default)]
struct Inner {
    mappers: BTreeMap<String, MapperRecord>,
    sent: BTreeMap<String, Sent>,
    twins: BTreeMap<(String, String, String), TwinRecord>,
    states: BTreeMap<DeviceKey, StateRecord>,
    seq: u64,
}

pub struct Book {
    inner: Mutex<Inner>,
    db: Option<Mutex<Connection>>,
    limits: BookLimits,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mappers (protocol TEXT PRIMARY KEY, name TEXT NOT NULL,
    version TEXT NOT NULL, api_version TEXT NOT NULL, address TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sent (protocol TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL,
    name TEXT NOT NULL, fingerprint INTEGER NOT NULL,
    PRIMARY KEY (protocol, kind, namespace, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS twins (namespace TEXT NOT NULL, device TEXT NOT NULL, property TEXT NOT NULL,
    reported TEXT NOT NULL, observed_desired TEXT NOT NULL, type TEXT NOT NULL, ts_ms INTEGER NOT NULL, seq INTEGER NOT NULL,
    pending INTEGER NOT NULL, PRIMARY KEY (namespace, device, property)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS states (namespace TEXT NOT NULL, device TEXT NOT NULL, state TEXT NOT NULL,
    ts_ms INTEGER NOT NULL, seq INTEGER NOT NULL, pending INTEGER NOT NULL,
    PRIMARY KEY (namespace, device)) WITHOUT ROWID;";

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

impl Book {
    /// Memory only (hollow agents, tests).
    pub fn memory(limits: BookLimits) -> Self {
        Book {
            inner: Mutex::new(Inner::default()),
            db: None,
            limits,
        }
    }

    /// Opens (or creates) `path` and loads what it holds. Reports are committed with
    /// `synchronous=NORMAL`: a power cut may lose the last reports, never corrupt the file.
    pub fn open(path: &Path, limits: BookLimits) -> Result<Self, BookError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -128)?;
        conn.execute_batch(SCHEMA)?;
        let mut inner = Inner::default();
        {
            let mut stmt =
                conn.prepare("SELECT protocol, name, version, api_version, address FROM mappers")?;
            for row in stmt.query_map([], |r| {
                Ok(MapperRecord {
                    protocol: r.get(0)?,
                    name: r.get(1)?,
                    version: r.get(2)?,
                    api_version: r.get(3)?,
                    address: r.get(4)?,
                })
            })? {
                let m = row?;
                inner.mappers.insert(m.protocol.clone(), m);
            }
            let mut stmt =
                conn.prepare("SELECT protocol, kind, namespace, name, fingerprint FROM sent")?;
            for row in stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    (r.get(1)?, r.get(2)?, r.get(3)?),
                    r.get::<_, i64>(4)?,
                ))
            })? {
                let (protocol, key, fp) = row?;
                inner
                    .sent
                    .entry(protocol)
                    .or_default()
                    .insert(key, fp.cast_unsigned());
            }
            let mut stmt = conn.prepare(
                "SELECT namespace, device, property, reported, observed_desired, type, ts_ms, seq, pending FROM twins",
            )?;
            for row in stmt.query_map([], |r| {
                Ok((
                    (r.get(0)?, r.get(1)?, r.get(2)?),
                    TwinRecord {
                        reported: r.get(3)?,
                        observed_desired: r.get(4)?,
                        type_: r.get(5)?,
                        timestamp_ms: r.get(6)?,
                        seq: r.get::<_, i64>(7)?.cast_unsigned(),
                        pending: r.get(8)?,
                    },
                ))
            })? {
                let (key, twin) = row?;
                inner.seq = inner.seq.max(twin.seq);
                inner.twins.insert(key, twin);
            }
            let mut stmt =
                conn.prepare("SELECT namespace, device, state, ts_ms, seq, pending FROM states")?;
            for row in stmt.query_map([], |r| {
                Ok((
                    (r.get(0)?, r.get(1)?),
                    StateRecord {
                        state: r.get(2)?,
                        timestamp_ms: r.get(3)?,
                        seq: r.get::<_, i64>(4)?.cast_unsigned(),
                        pending: r.get(5)?,
                    },
                ))
            })? {
                let (key, state) = row?;
                inner.seq = inner.seq.max(state.seq);
                inner.states.insert(key, state);
            }
        }
        Ok(Book {
            inner: Mutex::new(inner),
            db: Some(Mutex::new(conn)),
            limits,
        })
    }

    fn inner(&self) -> Result<std::sync::MutexGuard<'_, Inner>, BookError> {
        self.inner.lock().map_err(|_| BookError::Poisoned)
    }

    fn with_db(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<()>,
    ) -> Result<(), BookError> {
        if let Some(db) = &self.db {
            let conn = db.lock().map_err(|_| BookError::Poisoned)?;
            f(&conn)?;
        }
        Ok(())
    }

    pub fn mappers(&self) -> Result<Vec<MapperRecord>, BookError> {
        Ok(self.inner()?.mappers.values().cloned().collect())
    }

    pub fn mapper(&self, protocol: &str) -> Result<Option<MapperRecord>, BookError> {
        Ok(self.inner()?.mappers.get(protocol).cloned())
    }

    /// Registers (or re-registers) the protocol's mapper; what it holds is now `sent`.
    pub fn register_mapper(&self, mapper: MapperRecord, sent: Sent) -> Result<(), BookError> {
        let mut inner = self.inner()?;
        self.with_db(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "INSERT OR REPLACE INTO mappers (protocol, name, version, api_version, address) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![mapper.protocol, mapper.name, mapper.version, mapper.api_version, mapper.address],
            )?;
            tx.execute("DELETE FROM sent WHERE protocol = ?1", params![mapper.protocol])?;
            for ((kind, ns, name), fp) in &sent {
                tx.execute(
                    "INSERT INTO sent (protocol, kind, namespace, name, fingerprint) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![mapper.protocol, kind, ns, name, fp.cast_signed()],
                )?;
            }
            tx.commit()
        })?;
        inner.sent.insert(mapper.protocol.clone(), sent);
        inner.mappers.insert(mapper.protocol.clone(), mapper);
        Ok(())
    }

    pub fn sent(&self, protocol: &str) -> Result<Sent, BookError> {
        Ok(self
            .inner()?
            .sent
            .get(protocol)
            .cloned()
            .unwrap_or_default())
    }

    /// Records that the protocol's mapper now holds `key` at `fingerprint` (`None`: removed).
    pub fn mark_sent(
        &self,
        protocol: &str,
        key: (String, String, String),
        fingerprint: Option<u64>,
    ) -> Result<(), BookError> {
        let mut inner = self.inner()?;
        self.with_db(|c| {
            match fingerprint {
                Some(fp) => c.execute(
                    "INSERT OR REPLACE INTO sent (protocol, kind, namespace, name, fingerprint) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![protocol, key.0, key.1, key.2, fp.cast_signed()],
                ),
                None => c.execute(
                    "DELETE FROM sent WHERE protocol = ?1 AND kind = ?2 AND namespace = ?3 AND name = ?4",
                    params![protocol, key.0, key.1, key.2],
                ),
            }
            .map(drop)
        })?;
        let sent = inner.sent.entry(protocol.to_string()).or_default();
        match fingerprint {
            Some(fp) => sent.insert(key, fp),
            None => sent.remove(&key),
        };
        Ok(())
    }

    /// Keeps the reported twins of one device, all or none. A twin older than the one held
    /// (by the mapper's timestamp) is left out. New properties past the bound are refused.
    pub fn record_twins(
        &self,
        device: &DeviceKey,
        twins: Vec<TwinReport>,
    ) -> Result<usize, BookError> {
        let mut inner = self.inner()?;
        let new_keys = twins
            .iter()
            .filter(|t| {
                !inner
                    .twins
                    .contains_key(&(device.0.clone(), device.1.clone(), t.property.clone()))
            })
            .count();
        if inner.twins.len() + new_keys > self.limits.max_twins {
            return Err(BookError::Full(inner.twins.len()));
        }
        let mut kept = Vec::new();
        for report in twins {
            let key = (device.0.clone(), device.1.clone(), report.property);
            if inner
                .twins
                .get(&key)
                .is_some_and(|held| held.timestamp_ms > report.timestamp_ms)
            {
                continue;
            }
            inner.seq += 1;
            let twin = TwinRecord {
                reported: report.reported,
                observed_desired: report.observed_desired,
                type_: report.type_,
                timestamp_ms: report.timestamp_ms,
                seq: inner.seq,
                pending: true,
            };
            kept.push((key, twin));
        }
        self.with_db(|c| {
            let tx = c.unchecked_transaction()?;
            for ((ns, dev, prop), t) in &kept {
                tx.execute(
                    "INSERT OR REPLACE INTO twins (namespace, device, property, reported, observed_desired, type, ts_ms, seq, pending)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1)",
                    params![ns, dev, prop, t.reported, t.observed_desired, t.type_, t.timestamp_ms, seq_i64(t.seq)],
                )?;
            }
            tx.commit()
        })?;
        let count = kept.len();
        inner.twins.extend(kept);
        Ok(count)
    }

    pub fn record_state(
        &self,
        device: &DeviceKey,
        state: String,
        timestamp_ms: i64,
    ) -> Result<(), BookError> {
        let mut inner = self.inner()?;
        inner.seq += 1;
        let record = StateRecord {
            state,
            timestamp_ms,
            seq: inner.seq,
            pending: true,
        };
        self.with_db(|c| {
            c.execute(
                "INSERT OR REPLACE INTO states (namespace, device, state, ts_ms, seq, pending) VALUES (?1, ?2, ?3, ?4, ?5, 1)",
                params![device.0, device.1, record.state, record.timestamp_ms, seq_i64(record.seq)],
            )
            .map(drop)
        })?;
        inner.states.insert(device.clone(), record);
        Ok(())
    }

    /// The latest twins of a device (pending or not).
    pub fn twins(&self, device: &DeviceKey) -> Result<BTreeMap<String, TwinRecord>, BookError> {
        let inner = self.inner()?;
        Ok(inner
            .twins
            .range((device.0.clone(), device.1.clone(), String::new())..)
            .take_while(|((ns, d, _), _)| ns == &device.0 && d == &device.1)
            .map(|((_, _, p), t)| (p.clone(), t.clone()))
            .collect())
    }

    pub fn state(&self, device: &DeviceKey) -> Result<Option<StateRecord>, BookError> {
        Ok(self.inner()?.states.get(device).cloned())
    }

    /// Everything the hub has not taken yet, per device (at most `max_devices`).
    pub fn pending(&self, max_devices: usize) -> Result<BTreeMap<DeviceKey, Pending>, BookError> {
        let inner = self.inner()?;
        let mut out: BTreeMap<DeviceKey, Pending> = BTreeMap::new();
        for ((ns, dev, prop), t) in inner.twins.iter().filter(|(_, t)| t.pending) {
            let key = (ns.clone(), dev.clone());
            if out.len() >= max_devices && !out.contains_key(&key) {
                continue;
            }
            out.entry(key)
                .or_default()
                .twins
                .insert(prop.clone(), t.clone());
        }
        for (key, s) in inner.states.iter().filter(|(_, s)| s.pending) {
            if out.len() >= max_devices && !out.contains_key(key) {
                continue;
            }
            out.entry(key.clone()).or_default().state = Some(s.clone());
        }
        Ok(out)
    }

    /// The hub took `sent`: clear the pending flags of exactly those versions (a newer value
    /// that arrived meanwhile stays pending).
    pub fn taken(&self, device: &DeviceKey, sent: &Pending) -> Result<(), BookError> {
        let mut inner = self.inner()?;
        let mut cleared_twins = Vec::new();
        for (prop, t) in &sent.twins {
            let key = (device.0.clone(), device.1.clone(), prop.clone());
            if let Some(held) = inner.twins.get_mut(&key)
                && held.seq == t.seq
            {
                held.pending = false;
                cleared_twins.push((prop.clone(), t.seq));
            }
        }
        let mut cleared_state = None;
        if let Some(s) = &sent.state
            && let Some(held) = inner.states.get_mut(device)
            && held.seq == s.seq
        {
            held.pending = false;
            cleared_state = Some(s.seq);
        }
        self.with_db(|c| {
            let tx = c.unchecked_transaction()?;
            for (prop, seq) in &cleared_twins {
                tx.execute(
                    "UPDATE twins SET pending = 0 WHERE namespace = ?1 AND device = ?2 AND property = ?3 AND seq = ?4",
                    params![device.0, device.1, prop, seq_i64(*seq)],
                )?;
            }
            if let Some(seq) = cleared_state {
                tx.execute(
                    "UPDATE states SET pending = 0 WHERE namespace = ?1 AND device = ?2 AND seq = ?3",
                    params![device.0, device.1, seq_i64(seq)],
                )?;
            }
            tx.commit()
        })
    }

    /// Forgets the reports of devices no longer on the node.
    pub fn retain_devices(&self, keep: impl Fn(&DeviceKey) -> bool) -> Result<(), BookError> {
        let mut inner = self.inner()?;
        let gone: Vec<DeviceKey> = inner
            .twins
            .keys()
            .map(|(ns, d, _)| (ns.clone(), d.clone()))
            .chain(inner.states.keys().cloned())
            .filter(|k| !keep(k))
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        self.with_db(|c| {
            let tx = c.unchecked_transaction()?;
            for (ns, d) in &gone {
                tx.execute(
                    "DELETE FROM twins WHERE namespace = ?1 AND device = ?2",
                    params![ns, d],
                )?;
                tx.execute(
                    "DELETE FROM states WHERE namespace = ?1 AND device = ?2",
                    params![ns, d],
                )?;
            }
            tx.commit()
        })?;
        inner
            .twins
            .retain(|(ns, d, _), _| keep(&(ns.clone(), d.clone())));
        inner.states.retain(|k, _| keep(k));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> DeviceKey {
        ("plant".into(), "t0".into())
    }

    fn twin(p: &str, v: &str, ts: i64) -> TwinReport {
        TwinReport {
            property: p.into(),
            reported: v.into(),
            observed_desired: String::new(),
            type_: "int".into(),
            timestamp_ms: ts,
        }
    }

    fn contract(book: &Book) {
        assert_eq!(
            book.record_twins(&dev(), vec![twin("a", "1", 10)]).unwrap(),
            1
        );
        assert_eq!(
            book.record_twins(&dev(), vec![twin("a", "2", 20)]).unwrap(),
            1
        );
        // An older report resent late does not overwrite the newer value.
        assert_eq!(
            book.record_twins(&dev(), vec![twin("a", "1", 10)]).unwrap(),
            0
        );
        assert_eq!(book.twins(&dev()).unwrap()["a"].reported, "2");
        // One row per property, whatever the number of reports: bounded.
        for i in 0..100 {
            book.record_twins(&dev(), vec![twin("b", &i.to_string(), 100 + i)])
                .unwrap();
        }
        let pending = book.pending(10).unwrap();
        assert_eq!(pending[&dev()].twins.len(), 2);
        assert_eq!(pending[&dev()].twins["b"].reported, "99");
        // A new value arriving while the batch is in flight stays pending after the ACK.
        book.record_twins(&dev(), vec![twin("b", "100", 500)])
            .unwrap();
        book.taken(&dev(), &pending[&dev()]).unwrap();
        let left = book.pending(10).unwrap();
        assert_eq!(left[&dev()].twins.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(left[&dev()].twins["b"].reported, "100");
        // The cap on properties refuses new ones, never grows past it.
        let full = book.record_twins(
            &("plant".into(), "t1".into()),
            (0..10).map(|i| twin(&format!("p{i}"), "1", 1)).collect(),
        );
        assert!(matches!(full, Err(BookError::Full(2))), "{full:?}");
        assert!(
            book.twins(&("plant".into(), "t1".into()))
                .unwrap()
                .is_empty()
        );
        book.record_state(&dev(), "online".into(), 5).unwrap();
        assert_eq!(
            book.pending(10).unwrap()[&dev()]
                .state
                .as_ref()
                .unwrap()
                .state,
            "online"
        );
    }

    #[test]
    fn memory_book_keeps_the_contract() {
        contract(&Book::memory(BookLimits { max_twins: 5 }));
    }

    #[test]
    fn sqlite_book_keeps_the_contract_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dmi.db");
        {
            let book = Book::open(&path, BookLimits { max_twins: 5 }).unwrap();
            contract(&book);
            book.register_mapper(
                MapperRecord {
                    protocol: "modbus".into(),
                    name: "m".into(),
                    version: "v1".into(),
                    api_version: "v1beta1".into(),
                    address: "/tmp/m.sock".into(),
                },
                [(("device".into(), "plant".into(), "t0".into()), 7)].into(),
            )
            .unwrap();
            book.mark_sent(
                "modbus",
                ("model".into(), "plant".into(), "thermo".into()),
                Some(9),
            )
            .unwrap();
        }
        let book = Book::open(&path, BookLimits { max_twins: 5 }).unwrap();
        assert_eq!(
            book.mapper("modbus").unwrap().unwrap().address,
            "/tmp/m.sock"
        );
        assert_eq!(book.sent("modbus").unwrap().len(), 2);
        let twins = book.twins(&dev()).unwrap();
        assert_eq!(twins["b"].reported, "100");
        assert!(twins["b"].pending && !twins["a"].pending);
        // Arrival order continues past the restart.
        book.record_twins(&dev(), vec![twin("b", "101", 600)])
            .unwrap();
        assert!(book.twins(&dev()).unwrap()["b"].seq > twins["b"].seq);
        book.retain_devices(|_| false).unwrap();
        drop(book);
        let book = Book::open(&path, BookLimits::default()).unwrap();
        assert!(book.twins(&dev()).unwrap().is_empty());
    }
}
