//! The collector's `/admin/settings`, kept in `{data_dir}/state/settings.json`: applied
//! over the file, environment and flags at start, at every SIGHUP and when changed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use edgelog_collector::{AdminSettings, SettingsError};

use crate::config::Config;

/// What the admin API may set: settings that reload without a restart (and, per sink,
/// [`SINK_SETTABLE`]). Admin tokens are not among them (a leaked admin token must not
/// mint another).
pub const SETTABLE: &[&str] = &[
    "sampling",
    "collector.tokens",
    "collector.scoped_tokens",
    "collector.allow_unauthenticated",
    "collector.privacy",
];

/// Per sink (`sinks.NAME.KEY`): the real-time sinks' field selections.
pub const SINK_SETTABLE: &[&str] = &["fields", "distributions"];

/// The settings file under `data_dir`.
pub fn settings_path(data_dir: &Path) -> PathBuf {
    data_dir.join("state").join("settings.json")
}

/// The settings kept, `None` when none were made.
pub fn read_settings(path: &Path) -> anyhow::Result<Option<serde_json::Value>> {
    match std::fs::read(path) {
        Ok(b) => {
            let v: serde_json::Value = serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{} (settings made through the admin API) is not JSON",
                    path.display()
                )
            })?;
            // Edited by hand, it may hold no more than the API may set.
            check_keys(&v).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok(Some(v))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Refuses a key the admin API may not set, naming those it may.
fn check_keys(settings: &serde_json::Value) -> Result<(), String> {
    let refuse = |key: &str| {
        Err(format!(
            "{key} cannot be set through the admin API (these can: {}, sinks.NAME.fields, sinks.NAME.distributions)",
            SETTABLE.join(", ")
        ))
    };
    let Some(top) = settings.as_object() else {
        return Err("settings must be a JSON object".into());
    };
    for (k, v) in top {
        match k.as_str() {
            "sampling" => {}
            "sinks" => {
                let Some(sinks) = v.as_object() else {
                    return Err("sinks: must be an object".into());
                };
                for (name, sink) in sinks {
                    let Some(sink) = sink.as_object() else {
                        return Err(format!("sinks.{name}: must be an object"));
                    };
                    for key in sink.keys() {
                        if !SINK_SETTABLE.contains(&key.as_str()) {
                            return refuse(&format!("sinks.{name}.{key}"));
                        }
                    }
                }
            }
            "collector" => {
                let Some(c) = v.as_object() else {
                    return Err("collector: must be an object".into());
                };
                for key in c.keys() {
                    let full = format!("collector.{key}");
                    if !SETTABLE.contains(&full.as_str()) {
                        return refuse(&full);
                    }
                }
            }
            other => return refuse(other),
        }
    }
    Ok(())
}

/// Loads the whole configuration with given settings over it.
pub type Load = dyn Fn(Option<&serde_json::Value>) -> anyhow::Result<Config> + Send + Sync;

/// Puts a loaded configuration's reloadable settings in effect; says what changed.
pub type Apply = dyn Fn(&Config) -> Result<Vec<String>, String> + Send + Sync;

pub struct Settings {
    path: PathBuf,
    load: Arc<Load>,
    apply: Arc<Apply>,
    /// Held by every reload (SIGHUP or API), so none applies settings older than the kept.
    lock: Arc<Mutex<()>>,
}

impl Settings {
    pub fn new(path: PathBuf, load: Arc<Load>, apply: Arc<Apply>, lock: Arc<Mutex<()>>) -> Self {
        Settings {
            path,
            load,
            apply,
            lock,
        }
    }
}

impl AdminSettings for Settings {
    fn current(&self) -> serde_json::Value {
        match read_settings(&self.path) {
            Ok(v) => v.unwrap_or_else(|| serde_json::json!({})),
            Err(e) => serde_json::json!({ "unreadable": format!("{e:#}") }),
        }
    }

    fn replace(&self, settings: serde_json::Value) -> Result<Vec<String>, SettingsError> {
        let _held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        check_keys(&settings).map_err(SettingsError::Refused)?;
        let cfg =
            (self.load)(Some(&settings)).map_err(|e| SettingsError::Refused(format!("{e:#}")))?;
        let before = std::fs::read(&self.path).ok();
        let bytes = serde_json::to_vec_pretty(&settings)
            .map_err(|e| SettingsError::Refused(e.to_string()))?;
        let write = |b: &[u8]| {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            edgelog_collector::state_file::write_atomic(&self.path, b)
        };
        write(&bytes).map_err(|e| {
            SettingsError::NotKept(format!(
                "cannot keep the settings in {}: {e}",
                self.path.display()
            ))
        })?;
        match (self.apply)(&cfg) {
            Ok(changed) => Ok(changed),
            Err(e) => {
                // Kept only if in effect.
                let undone = match &before {
                    Some(b) => write(b),
                    None => std::fs::remove_file(&self.path),
                };
                if let Err(u) = undone {
                    tracing::error!(error = %u, path = %self.path.display(), "cannot restore the settings file");
                }
                Err(SettingsError::Refused(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reloadable_settings_may_be_set() {
        let ok = serde_json::json!({"sampling": {"default": {"realtime": 5}}, "collector": {"tokens": ["x"], "privacy": {}}, "sinks": {"realtime": {"fields": [], "distributions": {}}}});
        assert_eq!(check_keys(&ok), Ok(()));
        for bad in [
            serde_json::json!({"collector": {"admin_tokens": ["x"]}}),
            serde_json::json!({"collector": {"listen": "0.0.0.0:1"}}),
            serde_json::json!({"data_dir": "/"}),
            serde_json::json!({"sinks": {"standard": {"max_age": "1s"}}}),
            serde_json::json!({"sinks": {"realtime": {"kafka": {}}}}),
            serde_json::json!({"sinks": {"realtime": []}}),
            serde_json::json!({"collector": 5}),
            serde_json::json!([1]),
        ] {
            assert!(check_keys(&bad).is_err(), "{bad}");
        }
    }
}
