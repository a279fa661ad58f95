//! Actions: what rules ask for ([`ActionRequest`]) and the stage that runs the journaled
//! calls against Mode, Tableau and Slack.

mod request;

pub use request::ActionRequest;
