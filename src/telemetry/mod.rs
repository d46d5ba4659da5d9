//! Telemetry: log setup ([`logs`]) and Prometheus metrics ([`metrics`]). The key
//! itself never reaches either: log fields carry only key ids and display prefixes,
//! and metric labels are route names and outcome codes (bounded sets).

pub mod direct;
pub mod logs;
pub mod metrics;

pub use logs::{LogFormat, init};
pub use metrics::Metrics;
