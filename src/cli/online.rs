//! `freshet check --online`: tries each configured service once with a call that changes
//! nothing, so a wrong token, workspace or site shows before the first real event does
//! (as vector's `validate` does for its sinks). One line per service; nothing is posted,
//! run or refreshed.

use crate::actions::client::{build_client, ActionError};
use crate::actions::{dbt::DbtCloud, hex, mode::Mode, powerbi, slack, tableau};
use crate::config::Config;

/// What trying one service gave: `Ok(what was seen)`, `Err(why not)`, or not tried (and why).
#[derive(Debug)]
pub enum Outcome {
    Ok(String),
    Failed(String),
    NotTried(String),
}

/// Tries every configured service, in the config's order, one at a time.
pub async fn try_services(config: &Config) -> Result<Vec<(String, Outcome)>, String> {
    let http = build_client(&config.actions)?;
    let mut outcomes = Vec::new();
    let outcome = |result: Result<String, ActionError>| match result {
        Ok(seen) => Outcome::Ok(seen),
        Err(error) => Outcome::Failed(error.to_string()),
    };
    if let Some(dbt) = &config.dbt {
        if dbt.api_token.is_some() {
            let result = match dbt.account_id {
                Some(account) => outcome(
                    DbtCloud {
                        http: &http,
                        config: dbt,
                    }
                    .probe(account)
                    .await,
                ),
                None => Outcome::NotTried(
                    "no dbt.account_id to read (dbt_run needs one; failures use each run's own)"
                        .into(),
                ),
            };
            outcomes.push(("dbt cloud".to_string(), result));
        }
    }
    if let Some(mode) = &config.mode {
        if mode.api_token.is_some() || mode.api_secret.is_some() {
            let result = Mode {
                http: &http,
                config: mode,
            }
            .probe()
            .await;
            outcomes.push(("mode".to_string(), outcome(result)));
        }
    }
    if let Some(tableau) = &config.tableau {
        outcomes.push((
            "tableau".to_string(),
            outcome(tableau::probe(&http, tableau).await),
        ));
    }
    if let Some(hex_config) = &config.hex {
        outcomes.push((
            "hex".to_string(),
            outcome(hex::probe(&http, hex_config).await),
        ));
    }
    if let Some(powerbi_config) = &config.powerbi {
        outcomes.push((
            "powerbi".to_string(),
            outcome(powerbi::probe(&http, powerbi_config).await),
        ));
    }
    if let Some(slack) = &config.slack {
        if slack.bot_token.is_some() {
            outcomes.push((
                "slack".to_string(),
                outcome(slack::probe(&http, slack).await),
            ));
        }
        if slack.webhook_url.is_some() {
            outcomes.push((
                "slack webhook".to_string(),
                Outcome::NotTried("an incoming webhook has no call that does not post".into()),
            ));
        }
    }
    if let Some(pagerduty) = &config.pagerduty {
        // The Events API has no call that does not page: the keys' shape (32 letters and
        // digits) is what can be checked, and the config's loading checked it already.
        for name in pagerduty.routing_keys.keys() {
            outcomes.push((
                format!("pagerduty {name}"),
                Outcome::Ok(
                    "an integration key of the right shape (the Events API has no call that does not page)"
                        .into(),
                ),
            ));
        }
    }
    Ok(outcomes)
}

/// Prints one line per service; true when none failed.
pub fn print(outcomes: &[(String, Outcome)]) -> bool {
    if outcomes.is_empty() {
        println!("online: no service is configured, nothing to try");
    }
    let mut ok = true;
    for (service, outcome) in outcomes {
        match outcome {
            Outcome::Ok(seen) => println!("{service}: ok: {seen}"),
            Outcome::Failed(why) => {
                ok = false;
                println!("{service}: FAILED: {why}");
            }
            Outcome::NotTried(why) => println!("{service}: not tried: {why}"),
        }
    }
    ok
}
