//! The dashboard: merges per-minute partial aggregates from any number of collectors
//! ([`store`]) and serves them: an overview and a page per distribution ([`pages`]) with
//! charts drawn by [`charts`], a JSON and CSV API ([`api`]), Prometheus metrics
//! ([`prometheus`]), CloudFront's reports ([`reports`]); alarms are evaluated by [`alarms`] and sent on by [`notify`].
//! [`metrics`] is the one list of what is measured; [`run`] runs it all as a service.

pub mod alarms;
pub mod alertmanager;
pub mod api;
pub mod auth;
pub mod charts;
pub mod config;
pub mod error;
pub mod kept;
pub mod metrics;
pub mod notify;
pub mod pages;
pub mod prometheus;
pub mod reports;
pub mod runtime;
pub mod store;
pub mod tail;

pub use api::{Dashboard, app};
pub use auth::loopback_hosts;
pub use config::DashboardConfig;
pub use error::ApiError;
pub use metrics::MinutePoint;
pub use prometheus::prometheus_label;
pub use runtime::{RunError, run, run_reloading};
pub use store::{MetricsStore, last_complete_minute};
pub use tail::{Follower, PAGE_BYTES, TailHub, TailRecord, TailSource};
