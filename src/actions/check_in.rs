//! `check_in(name)`: says that what deadline `name` waits for has happened (docs/behaviour.md
//! section 14). Like `alert`, it makes no call of its own: the evaluate stage records the
//! check-in in the evaluation's transaction, where a check-in after a miss emits
//! `freshet.deadline.met`.

use rhai::{Engine, NativeCallContext};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::client::ActionError;
use super::ActionRequest;
use crate::rules::api::{non_empty, record, Fallible};

/// A check-in of deadline `name` (`[deadlines.NAME]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckIn {
    pub name: String,
}

impl CheckIn {
    /// Never run as a job: a check-in is recorded at evaluation.
    pub fn call(&self) -> Result<serde_json::Value, ActionError> {
        Err(ActionError::final_error(
            "check-ins are recorded at evaluation, not run",
        ))
    }

    /// The key of the deadline's clock in the journal.
    pub fn clock_key(&self) -> String {
        format!("deadline:{}", self.name)
    }
}

/// The rule function that builds a [`CheckIn`].
pub(super) fn register(engine: &mut Engine) {
    engine.register_fn(
        "check_in",
        |ctx: NativeCallContext, name: &str| -> Fallible {
            let name = non_empty(&ctx, "check_in", "the deadline's name", name)?;
            let written = json!([name]);
            record(&ctx, ActionRequest::CheckIn(CheckIn { name }), written)
        },
    );
}
