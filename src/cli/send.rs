//! `freshet send`: post a sample webhook to a running daemon, signed like dbt Cloud signs
//! it (or on the Mode token route), so a deployment can be tried without dbt Cloud.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{bail, Context};

use super::SendTarget;
use crate::config;
use crate::ingest::signature;

pub async fn run(config_path: Option<&Path>, target: SendTarget) -> anyhow::Result<bool> {
    let config = config::load(config_path)?;
    let base = format!("http://{}", reachable(config.server.listen));
    let client = reqwest::Client::new();
    let (request, shown_url) = match target {
        SendTarget::Dbt { file, url } => {
            let body =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let secret = config
                .dbt
                .as_ref()
                .and_then(|dbt| dbt.webhook_secrets.first())
                .context("no dbt secret is configured ([dbt] webhook_secrets)")?;
            let url = url.unwrap_or_else(|| format!("{base}/webhooks/dbt"));
            let signature = signature::sign(secret.expose().as_bytes(), &body);
            (
                client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("authorization", signature)
                    .body(body),
                url,
            )
        }
        SendTarget::Mode { file, url } => {
            let body =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let (url, shown) = match url {
                Some(url) => (url, "the given --url".to_string()),
                None => {
                    let Some(token) = config.mode.as_ref().and_then(|m| m.webhook_token.as_ref())
                    else {
                        bail!("no Mode webhook token is configured ([mode] webhook_token)");
                    };
                    // The token is a secret: show the route, not the token.
                    (
                        format!("{base}/webhooks/mode/{}", token.expose()),
                        format!("{base}/webhooks/mode/<token>"),
                    )
                }
            };
            (
                client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body),
                shown,
            )
        }
    };
    let request = request
        .build()
        .map_err(|error| anyhow::anyhow!("cannot post to {shown_url}: {}", error.without_url()))?;
    // Host and port are not secret (a Mode route's token is): name them when no one answers.
    let addr = format!(
        "{}:{}",
        request.url().host_str().unwrap_or("?"),
        request.url().port_or_known_default().unwrap_or(0)
    );
    let response = client.execute(request).await.map_err(|error| {
        if error.is_connect() {
            anyhow::anyhow!("connection refused: is freshet serve running on {addr}?")
        } else {
            anyhow::anyhow!("cannot reach {shown_url}: {}", error.without_url())
        }
    })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("POST {shown_url} -> {}", status.as_u16());
    println!("{text}");
    Ok(status.is_success())
}

/// The address to contact for a listen address (a wildcard listen is reached on loopback).
fn reachable(listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
    } else {
        listen
    }
}
