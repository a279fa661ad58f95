//! Actions: what rules ask for ([`ActionRequest`]) and the stage that runs the journaled
//! calls against Mode, Tableau and Slack with retries ([`runner::ActionWorker`]).
//!
//! One file per service, behind the request enum: [`mode`], [`tableau`], [`slack`];
//! [`client`] holds what they share (HTTP client, error classification, backoff);
//! [`follow`] polls an accepted Tableau refresh to its end.

pub mod client;
pub mod follow;
pub mod mode;
mod request;
pub mod runner;
pub mod slack;
pub mod tableau;

pub use request::ActionRequest;
