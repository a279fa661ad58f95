//! freshet: a self-hosted automation daemon for data teams. dbt Cloud and Mode webhooks
//! (and dbt Core invocations) come in, Rhai rules decide, and dbt, Mode, Tableau and
//! Slack actions go out, with a durable
//! journal in between so that nothing acknowledged is lost or done twice.
//!
//! # Layout
//!
//! The modules follow the data: ingest -> journal -> stages -> actions (ARCHITECTURE.md
//! has the map, and one webhook's way through the files).
//!
//! - [`config`]: the TOML config, validated into types; secret references.
//! - [`ingest`]: the listener, the routes, signature and token checks; one file per event
//!   source, turning a webhook body into an [`event::Event`].
//! - [`event`]: the common event every stage speaks.
//! - [`dbt_artifacts`]: dbt's `run_results.json` and `manifest.json` -> why a run failed.
//! - [`journal`]: events, jobs and alert state, behind an interface split by audience
//!   (the stages, the CLI, operations); SQLite (one process) or PostgreSQL (several
//!   instances sharing one queue), with the same file names in both.
//! - [`stages`]: every task that claims journal work: enrich, evaluate, act, follow.
//! - [`rules`]: pure Rhai: the sandboxed engine, the recording rule API, hot reload.
//! - [`actions`]: one file per action (payload, rule functions, HTTP calls) behind the
//!   [`actions::ActionRequest`] enum.
//! - [`alerts`]: the pure state machine of threshold alerts.
//! - [`pipeline`]: `freshet serve`: starts every task and wires them. Read this first.
//! - [`metrics`], [`telemetry`], [`shutdown`], [`service`]: Prometheus metrics, logs,
//!   signals, systemd readiness and watchdog.
//! - [`cli`]: the commands of the `freshet` binary.

pub mod actions;
pub mod alerts;
pub mod cli;
pub mod config;
pub mod console;
pub mod dbt_artifacts;
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
