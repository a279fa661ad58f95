//! Actions: what rules ask for ([`ActionRequest`]) and how each is called against Mode,
//! Tableau and Slack. The stage that claims action jobs and retries them is
//! `stages::act`.
//!
//! One file per service, behind the request enum: [`mode`], [`tableau`], [`slack`];
//! [`client`] holds what they share (HTTP client, error classification, backoff).

pub mod client;
pub mod mode;
mod request;
pub mod slack;
pub mod tableau;

pub use request::ActionRequest;
