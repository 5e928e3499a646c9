//! The sinks a configuration can name, `[sinks.NAME]` with a `type`. Each type's settings
//! build its sink ([`SinkConfig`]); the collector samples for it by its name and keeps its
//! log position, dead letters and metrics under that name.
//!
//! Adding a destination: a module with a settings type that implements [`SinkConfig`],
//! and one line in [`sink_kinds!`] below.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgelog_collector::{Bus, Collector, Place, SinkConfig};
use edgelog_sink_s3::StandardLogsConfig;
use edgelog_sink_stream::{FileSinkConfig, RealtimeConfig};
use figment::Figment;
use figment::providers::Serialized;
use figment::value::{Dict, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

macro_rules! sink_kinds {
    ($($(#[$doc:meta])* $tag:literal => $variant:ident($settings:ty),)*) => {
        /// One sink's settings, by `type`.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(tag = "type")]
        pub enum SinkKind {
            $($(#[$doc])* #[serde(rename = $tag)] $variant($settings),)*
        }

        impl SinkKind {
            pub fn settings(&self) -> &dyn SinkConfig {
                match self {
                    $(SinkKind::$variant(c) => c,)*
                }
            }

            /// A `[sinks.NAME]` table: its `type`, then the rest as that type's settings.
            fn from_table(mut table: Dict) -> Result<SinkKind, String> {
                let kind = match table.remove("type") {
                    Some(Value::String(_, t)) => t,
                    Some(_) => return Err("type: must be a string".into()),
                    None => String::new(),
                };
                match kind.as_str() {
                    $($tag => settings(table).map(SinkKind::$variant),)*
                    _ => Err(format!(
                        "type: {kind:?} is not a sink type (types: {})",
                        [$($tag),*].join(", ")
                    )),
                }
            }
        }
    };
}

sink_kinds! {
    /// Parquet files on S3-compatible storage or local disk (`standard` by default).
    "parquet" => Parquet(StandardLogsConfig),
    /// Sampled records to a Kafka topic or the in-process stream (`realtime` by default).
    "realtime" => Realtime(RealtimeConfig),
    /// Sampled records as lines (NDJSON or TSV) appended to a local file.
    "file" => File(FileSinkConfig),
}

/// One type's settings from a table; errors name the key within it (secrets not shown).
fn settings<T: DeserializeOwned>(table: Dict) -> Result<T, String> {
    Figment::from(Serialized::defaults(table))
        .extract()
        .map_err(|mut e| {
            // The source is the outer file or environment, named by the caller.
            e.metadata = None;
            crate::config::describe(e)
        })
}

impl<'de> Deserialize<'de> for SinkKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SinkKind, D::Error> {
        SinkKind::from_table(Dict::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The sinks, by name. On embedded defaults: `standard` (Parquet under the data dir) and
/// `realtime` (the in-process stream).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SinksConfig(pub BTreeMap<String, SinkKind>);

impl Default for SinksConfig {
    fn default() -> Self {
        SinksConfig(BTreeMap::from([
            (
                "standard".to_owned(),
                SinkKind::Parquet(StandardLogsConfig::default()),
            ),
            (
                "realtime".to_owned(),
                SinkKind::Realtime(RealtimeConfig::default()),
            ),
        ]))
    }
}

/// Names the collector uses itself.
const RESERVED: &[&str] = &["metrics"];

/// Directories of the data dir that are edgelog's own.
const OWN_DIRS: &[&str] = &["wal", "state", "spool", "dead-letter"];

/// `path` as it stands under `data_dir` (`None` when it is elsewhere), refused when it
/// climbs out with `..` or lands in one of edgelog's own directories.
fn within_data_dir(path: &Path, data_dir: &Path, key: &str) -> Result<Option<PathBuf>, String> {
    use std::path::Component;
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{key}: {} must not contain '..'", path.display()));
    }
    let rel = if path.is_absolute() {
        match path.strip_prefix(data_dir) {
            Ok(r) => r.to_owned(),
            Err(_) => return Ok(None),
        }
    } else {
        path.components()
            .filter(|c| *c != Component::CurDir)
            .collect()
    };
    if let Some(Component::Normal(first)) = rel.components().next()
        && OWN_DIRS.iter().any(|d| first == *d)
    {
        return Err(format!(
            "{key}: {} is inside edgelog's own directory {:?} of the data dir",
            path.display(),
            first
        ));
    }
    Ok(Some(rel))
}

impl SinksConfig {
    /// Every sink's name (sampling keys must be one of them).
    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    /// Checks names and settings; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        for (name, kind) in &self.0 {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
            if !ok {
                return Err(format!(
                    "sinks.{name}: a sink name is 1 to 64 of a-z, 0-9, '_', '-' (it names a directory and a log position)"
                ));
            }
            if RESERVED.contains(&name.as_str()) {
                return Err(format!(
                    "sinks.{name}: the name is the collector's own (its metrics aggregator)"
                ));
            }
            kind.settings().validate(&format!("sinks.{name}"))?;
        }
        Ok(())
    }

    /// Where each sink writes must be its own: two sinks on one file or one bucket prefix
    /// would overwrite each other, and edgelog's own directories under `data_dir` (the
    /// log, state, spool, dead letters) are not for output. Errors name the key.
    pub fn validate_places(&self, data_dir: &Path) -> Result<(), String> {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (name, kind) in &self.0 {
            let (key, place) = match kind.settings().place() {
                None => continue,
                Some(Place::Remote { key, name: there }) => {
                    (format!("sinks.{name}.{key}"), format!("remote:{there}"))
                }
                Some(Place::Local { key, path }) => {
                    let key = format!("sinks.{name}.{key}");
                    let rel = within_data_dir(&path, data_dir, &key)?;
                    let at = rel.unwrap_or(path);
                    (key, format!("local:{}", at.display()))
                }
            };
            if let Some(other) = seen.insert(place, key.clone()) {
                return Err(format!(
                    "{key}: {other} writes there too; each sink needs a place of its own"
                ));
            }
        }
        Ok(())
    }

    /// Messages the in-process stream keeps for slow readers: the largest any real-time
    /// sink asks for.
    pub fn bus_capacity(&self) -> usize {
        self.0
            .values()
            .filter_map(|k| match k {
                SinkKind::Realtime(r) => Some(r.bus_capacity),
                _ => None,
            })
            .max()
            .unwrap_or_else(|| RealtimeConfig::default().bus_capacity)
    }

    /// Hands each real-time sink its settings as reloaded (it applies its field
    /// selections); returns the settings that differ from `last`.
    pub fn reload_into(
        &self,
        reloader: &edgelog_collector::Reloader,
        last: &SinksConfig,
    ) -> Vec<String> {
        let mut changed = Vec::new();
        for (name, kind) in &self.0 {
            if let SinkKind::Realtime(r) = kind {
                reloader.reload_sink(name, Arc::new(r.clone()));
                let before = match last.0.get(name) {
                    Some(SinkKind::Realtime(b)) => Some((&b.fields, &b.distributions)),
                    _ => None,
                };
                if before != Some((&r.fields, &r.distributions)) {
                    changed.push(format!("sinks.{name}.fields"));
                }
            }
        }
        changed
    }

    /// The settings a reload changes, for the real-time sinks.
    pub fn reloadable(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(_, k)| matches!(k, SinkKind::Realtime(_)))
            .flat_map(|(n, _)| {
                crate::admin::SINK_SETTABLE
                    .iter()
                    .map(move |key| format!("sinks.{n}.{key}"))
            })
            .collect()
    }

    /// The first enabled real-time sink's Kafka topic, if any (the live tail reads it).
    pub fn realtime_kafka(&self) -> Option<edgelog_sink_stream::KafkaConfig> {
        self.0.values().find_map(|k| match k {
            SinkKind::Realtime(r) if r.enabled => r.kafka.clone(),
            _ => None,
        })
    }

    /// The enabled Parquet sinks, by name.
    pub fn parquet(&self) -> Vec<(String, StandardLogsConfig)> {
        self.0
            .iter()
            .filter_map(|(n, k)| match k {
                SinkKind::Parquet(c) if c.enabled => Some((n.clone(), c.clone())),
                _ => None,
            })
            .collect()
    }

    /// The `standard` sink's settings when it is a Parquet one (the demo shortens its
    /// file age).
    pub fn standard_mut(&mut self) -> Option<&mut StandardLogsConfig> {
        match self.0.get_mut("standard") {
            Some(SinkKind::Parquet(c)) => Some(c),
            _ => None,
        }
    }

    /// Builds every enabled sink into `collector`, logging where each delivers.
    pub fn build_into(&self, collector: &mut Collector, bus: &Bus) -> anyhow::Result<()> {
        for (name, kind) in &self.0 {
            if let Some(to) = collector.build_sink(name, kind.settings(), bus)? {
                tracing::info!(sink = %name, %to, "sink ready");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(toml: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!("{toml}\n[collector]\nallow_unauthenticated = true\n"),
        )?;
        Config::load(Some(&path), &[])
    }

    #[test]
    fn a_sink_is_a_table_with_a_type_and_the_defaults_stay() {
        let cfg = load(
            "[sinks.audit]\ntype = \"file\"\npath = \"audit.ndjson\"\n[sampling.default]\naudit = 5\n[sinks.standard]\nmax_rows = 10\n",
        )
        .expect("valid");
        assert_eq!(cfg.sinks.names(), ["audit", "realtime", "standard"]);
        assert_eq!(cfg.sampling.rate("E1", "audit"), 5.0);
        assert_eq!(cfg.sampling.rate("E1", "standard"), 100.0);
    }

    #[test]
    fn unknown_types_names_and_sampling_keys_are_refused_by_key() {
        for (toml, key) in [
            ("[sinks.audit]\ntype = \"ftp\"\n", "ftp"),
            ("[sinks.audit]\npath = \"a\"\n", "type"),
            ("[sinks.audit]\ntype = \"file\"\n", "sinks.audit.path"),
            (
                "[sinks.audit]\ntype = \"file\"\npath = \"a\"\nbucket = \"b\"\n",
                "bucket",
            ),
            (
                "[sinks.Audit]\ntype = \"file\"\npath = \"a\"\n",
                "sinks.Audit",
            ),
            (
                "[sinks.metrics]\ntype = \"file\"\npath = \"a\"\n",
                "sinks.metrics",
            ),
            (
                "[sampling.default]\nrealtme = 5\n",
                "sampling.default.realtme",
            ),
            (
                "[sampling.distributions.E1]\naudit = 5\n",
                "sampling.distributions.E1.audit",
            ),
            (
                "[sinks.standard]\ntype = \"file\"\npath = \"a\"\n",
                "unknown field",
            ),
        ] {
            let e = format!("{:#}", load(toml).expect_err(toml));
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn a_default_sink_can_be_switched_off_from_the_environment_spelling() {
        let cfg = Config::load(
            None,
            &[
                ("sinks.realtime.enabled", figment::value::Value::from(false)),
                (
                    "collector.allow_unauthenticated",
                    figment::value::Value::from(true),
                ),
            ],
        )
        .expect("valid");
        let Some(super::SinkKind::Realtime(r)) = cfg.sinks.0.get("realtime") else {
            panic!("realtime is still a real-time sink");
        };
        assert!(!r.enabled);
    }

    #[test]
    fn the_configuration_in_the_readme_loads_as_documented() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("## Configuration").expect("section")..];
        let start = section.find("```toml\n").expect("a toml block") + 8;
        let block = &section[start..];
        let toml = &block[..block.find("```").expect("block end")];
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("readme.toml");
        std::fs::write(&path, toml).expect("write");
        let cfg = Config::load(Some(&path), &[]).expect("the README's configuration");
        assert_eq!(cfg.sinks.names(), ["audit", "realtime", "standard"]);
    }
}
