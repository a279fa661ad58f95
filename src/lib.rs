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
//! - [`journal`]: events, jobs and alert state behind the `JournalStore` trait: SQLite
//!   (one process) or PostgreSQL (several instances sharing one queue).
//! - [`stages`]: every task that claims journal work: enrich, evaluate, act, follow.
//! - [`rules`]: Rhai rules: sandboxed engine, rule API, hot reload.
//! - [`actions`]: what rules ask for, and how each call reaches Mode, Tableau or Slack.
//! - [`alerts`]: the pure state machine of threshold alerts.
//! - [`pipeline`]: `freshet serve`: starts every task and wires them. Read this first.
//! - [`metrics`], [`telemetry`], [`shutdown`], [`service`]: Prometheus metrics, logs,
//!   signals, systemd readiness and watchdog.
//! - [`cli`]: the commands of the `freshet` binary.

pub mod actions;
pub mod alerts;
pub mod cli;
pub mod config;
pub mod event;
pub mod ingest;
pub mod journal;
pub mod metrics;
pub mod pipeline;
pub mod rules;
pub mod service;
pub mod shutdown;
pub mod stages;
pub mod telemetry;

/// Counts each thread's live allocations, so rule evaluations have a memory budget
/// (`rules::memory`).
#[global_allocator]
static ALLOCATOR: rules::memory::CountingAllocator = rules::memory::CountingAllocator;
