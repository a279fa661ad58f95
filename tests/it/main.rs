//! The integration tests, one binary (building and linking one is much cheaper than one
//! per file): each module is a capability, tried against the real `freshet` binary on
//! 127.0.0.1 with the local fakes of `tests/support/`. The PostgreSQL outage test stops
//! the shared test server, so it is a binary of its own (`tests/postgres_outage.rs`).

#[path = "../support/mod.rs"]
mod support;

mod actions;
mod alerts;
mod browser;
mod console;
mod dbt;
mod deadlines;
mod docs;
mod faults;
mod hostile;
mod intake;
mod more_of_the_stack;
mod operating;
mod postgres_in_production;
mod reaching_people;
mod real_servers;
mod rules;
mod service;
mod several_instances;
mod toolkit;
