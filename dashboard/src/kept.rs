//! Alarms made through the API, kept in a file so they come back after a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use edgelog_collector::state_file::write_atomic;

use crate::alarms::AlarmConfig;

/// The alarms put through the API (not deleted since), by name.
#[derive(Debug)]
pub struct KeptAlarms {
    path: PathBuf,
    alarms: Mutex<BTreeMap<String, AlarmConfig>>,
    /// Held across a change of the board and of this file, so they never disagree.
    writes: Mutex<()>,
}

impl KeptAlarms {
    /// Reads `path` (none yet: no alarms).
    pub fn open(path: &Path) -> Result<KeptAlarms, String> {
        let alarms: Vec<AlarmConfig> = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                format!(
                    "{} (alarms made through the API) is not readable: {e}; move it away to start without them",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(KeptAlarms {
            path: path.to_owned(),
            alarms: Mutex::new(alarms.into_iter().map(|a| (a.name.clone(), a)).collect()),
            writes: Mutex::new(()),
        })
    }

    /// Hold while changing an alarm on the board and here.
    pub fn writing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    pub fn all(&self) -> Vec<AlarmConfig> {
        self.lock().values().cloned().collect()
    }

    /// Keeps `alarm` (in place of one of its name); on a write failure nothing changes.
    pub fn put(&self, alarm: AlarmConfig) -> Result<(), String> {
        let mut alarms = self.lock();
        let old = alarms.insert(alarm.name.clone(), alarm.clone());
        self.save(&alarms).inspect_err(|_| {
            match old {
                Some(o) => alarms.insert(o.name.clone(), o),
                None => alarms.remove(&alarm.name),
            };
        })
    }

    /// Forgets `name`; on a write failure nothing changes.
    pub fn delete(&self, name: &str) -> Result<(), String> {
        let mut alarms = self.lock();
        let Some(old) = alarms.remove(name) else {
            return Ok(());
        };
        self.save(&alarms).inspect_err(|_| {
            alarms.insert(old.name.clone(), old);
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, AlarmConfig>> {
        self.alarms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn save(&self, alarms: &BTreeMap<String, AlarmConfig>) -> Result<(), String> {
        let list: Vec<&AlarmConfig> = alarms.values().collect();
        let bytes = serde_json::to_vec_pretty(&list).map_err(|e| e.to_string())?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        write_atomic(&self.path, &bytes)
            .map_err(|e| format!("cannot keep alarms in {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm(name: &str) -> AlarmConfig {
        serde_json::from_value(serde_json::json!({
            "name": name, "distribution": "*", "metric": "5xxErrorRate",
            "comparison": "GreaterThanThreshold", "threshold": 5.0,
        }))
        .expect("alarm")
    }

    #[test]
    fn alarms_survive_a_reopen_and_a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/api-alarms.json");
        let kept = KeptAlarms::open(&path).expect("open");
        kept.put(alarm("a")).expect("put");
        kept.put(alarm("b")).expect("put");
        kept.delete("a").expect("delete");
        kept.delete("nope").expect("delete of nothing");
        let again = KeptAlarms::open(&path).expect("reopen");
        assert_eq!(
            again
                .all()
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        // A file where its directory goes: the write fails, the set stays.
        let blocked = KeptAlarms::open(&dir.path().join("sub/api-alarms.json")).expect("open");
        std::fs::write(dir.path().join("sub"), b"").expect("write");
        assert!(blocked.put(alarm("c")).is_err());
        assert!(blocked.all().is_empty());
        std::fs::write(&path, b"{not json").expect("write");
        assert!(
            KeptAlarms::open(&path)
                .expect_err("not json")
                .contains("move it away")
        );
    }
}
