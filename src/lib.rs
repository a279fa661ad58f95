//! freshet: a self-hosted automation daemon for data teams. dbt Cloud and Mode webhooks
//! come in, Rhai rules decide, and Mode, Tableau and Slack actions go out, with a durable
//! journal in between so that nothing acknowledged is lost or done twice.
//!
//! # Layout
//!
//! The modules follow the data:
//!
//! - [`config`]: the TOML config, validated into types; secret references.
//! - [`ingest`]: HTTP routes; signature and token checks; webhook bodies -> [`event::Event`].
//! - [`event`]: the common event every stage speaks.
//! - [`journal`]: events, jobs and alert state in SQLite, behind the `JournalStore` trait.
//! - [`alerts`]: the pure state machine of threshold alerts.
//! - [`pipeline`]: `freshet serve`: starts every task and wires them. Read this first.
//! - [`metrics`], [`telemetry`], [`shutdown`]: Prometheus metrics, logs, signals.
//! - [`cli`]: the commands of the `freshet` binary.

pub mod alerts;
pub mod cli;
pub mod config;
pub mod event;
pub mod ingest;
pub mod journal;
pub mod metrics;
pub mod pipeline;
pub mod shutdown;
pub mod telemetry;
