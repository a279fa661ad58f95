//! The TOML file as written by users, and its validation into [`Config`].
//!
//! Unknown keys are errors (a typo such as `webhook_secret` must not silently leave a
//! service unconfigured), and every error names the key and the line it is on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

use super::{
    ActionsConfig, AdminConfig, ClockConfig, Config, ConfigErrors, ConfigProblem, DbtConfig,
    HexConfig, JournalConfig, ModeConfig, OpenLineageConfig, PagerDutyConfig, PowerBiConfig,
    RulesConfig, SecretRef, Secrets, ServerConfig, SlackConfig, TableauConfig,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    rules: RawRules,
    journal: RawJournal,
    dbt: Option<RawDbt>,
    mode: Option<RawMode>,
    tableau: Option<RawTableau>,
    slack: Option<RawSlack>,
    pagerduty: Option<RawPagerDuty>,
    openlineage: Option<RawOpenLineage>,
    hex: Option<RawHex>,
    powerbi: Option<RawPowerBi>,
    admin: Option<RawAdmin>,
    deadlines: std::collections::BTreeMap<String, RawClock>,
    schedules: std::collections::BTreeMap<String, RawClock>,
    actions: RawActions,
    vars: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    max_body_bytes: usize,
    max_connections: usize,
    max_pending_body_bytes: usize,
    public_name: Option<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8787".into(),
            max_body_bytes: 262_144,
            max_connections: 4096,
            max_pending_body_bytes: 64 << 20,
            public_name: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRules {
    dir: PathBuf,
    max_operations: u64,
}

impl Default for RawRules {
    fn default() -> Self {
        RawRules {
            dir: PathBuf::from("rules"),
            max_operations: 1_000_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawJournal {
    path: Option<PathBuf>,
    retention_days: u32,
    /// PostgreSQL instead of SQLite (docs/behaviour.md section 10).
    url: Option<SecretRef>,
    lease_seconds: u64,
    /// The PostgreSQL schema freshet's tables live in (docs/behaviour.md section 12).
    schema: String,
    /// "transaction" behind PgBouncer in transaction mode (docs/behaviour.md section 12).
    pooler: Option<String>,
}

impl Default for RawJournal {
    fn default() -> Self {
        RawJournal {
            path: None,
            retention_days: 30,
            url: None,
            lease_seconds: 30,
            schema: crate::journal::postgres::DEFAULT_SCHEMA.into(),
            pooler: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDbt {
    #[serde(default)]
    webhook_secrets: Vec<SecretRef>,
    #[serde(default = "default_dbt_api_base")]
    api_base: String,
    account_id: Option<i64>,
    api_token: Option<SecretRef>,
    /// Unset: fetched whenever `api_token` is set.
    fetch_failures: Option<bool>,
    #[serde(default)]
    fetch_owners: bool,
    #[serde(default = "default_max_artifact_bytes")]
    max_artifact_bytes: usize,
    #[serde(default = "default_artifact_wait_seconds")]
    artifact_wait_seconds: u64,
}

fn default_dbt_api_base() -> String {
    "https://cloud.getdbt.com".into()
}
fn default_max_artifact_bytes() -> usize {
    50 << 20
}
fn default_artifact_wait_seconds() -> u64 {
    120
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMode {
    #[serde(default = "default_mode_api_base")]
    api_base: String,
    workspace: String,
    api_token: Option<SecretRef>,
    api_secret: Option<SecretRef>,
    webhook_token: Option<SecretRef>,
    #[serde(default = "yes")]
    fetch_results: bool,
    #[serde(default = "default_max_result_rows")]
    max_result_rows: usize,
    #[serde(default = "default_max_result_bytes")]
    max_result_bytes: usize,
}

fn default_mode_api_base() -> String {
    "https://app.mode.com".into()
}
fn yes() -> bool {
    true
}
fn default_max_result_rows() -> usize {
    10_000
}
fn default_max_result_bytes() -> usize {
    10 << 20
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTableau {
    server: String,
    #[serde(default)]
    site: String,
    /// Unset: the server's own version, from serverinfo (docs/behaviour.md section 7).
    api_version: Option<String>,
    #[serde(default = "default_job_poll_seconds")]
    job_poll_seconds: u64,
    #[serde(default = "default_job_timeout_minutes")]
    job_timeout_minutes: u64,
    pat_name: String,
    pat_secret: SecretRef,
}

fn default_job_poll_seconds() -> u64 {
    15
}
fn default_job_timeout_minutes() -> u64 {
    240
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlack {
    webhook_url: Option<SecretRef>,
    bot_token: Option<SecretRef>,
    #[serde(default = "default_slack_api_base")]
    api_base: String,
    /// E-mail address -> Slack user id, for mentions.
    #[serde(default)]
    users: std::collections::BTreeMap<String, String>,
    /// The workspace's address (`https://acme.slack.com`), for links to alert threads.
    workspace_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPagerDuty {
    #[serde(default = "default_pagerduty_events_url")]
    events_url: String,
    #[serde(default)]
    routing_keys: std::collections::BTreeMap<String, SecretRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    listen: String,
    #[serde(default)]
    hosts: Vec<String>,
    token: Option<SecretRef>,
    #[serde(default)]
    read_only: bool,
}

fn default_admin_listen() -> String {
    "127.0.0.1:8788".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpenLineage {
    #[serde(default)]
    api_keys: Vec<SecretRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHex {
    #[serde(default = "default_hex_api_base")]
    api_base: String,
    token: SecretRef,
    #[serde(default = "default_poll_seconds")]
    poll_seconds: u64,
    #[serde(default = "default_timeout_minutes")]
    timeout_minutes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPowerBi {
    tenant_id: String,
    client_id: String,
    client_secret: SecretRef,
    #[serde(default = "default_powerbi_api_base")]
    api_base: String,
    #[serde(default = "default_powerbi_login_base")]
    login_base: String,
    #[serde(default = "default_poll_seconds")]
    poll_seconds: u64,
    #[serde(default = "default_timeout_minutes")]
    timeout_minutes: u64,
}

fn default_hex_api_base() -> String {
    "https://app.hex.tech/api/v1".into()
}

fn default_powerbi_api_base() -> String {
    "https://api.powerbi.com/v1.0/myorg".into()
}

fn default_powerbi_login_base() -> String {
    "https://login.microsoftonline.com".into()
}

fn default_poll_seconds() -> u64 {
    15
}

fn default_timeout_minutes() -> u64 {
    240
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClock {
    cron: String,
    #[serde(default = "default_timezone")]
    timezone: String,
}

fn default_timezone() -> String {
    "UTC".into()
}

fn default_pagerduty_events_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".into()
}

fn default_slack_api_base() -> String {
    "https://slack.com/api".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawActions {
    max_attempts: u32,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    timeout_ms: u64,
}

impl Default for RawActions {
    fn default() -> Self {
        RawActions {
            max_attempts: 8,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 300_000,
            timeout_ms: 30_000,
        }
    }
}

/// Collects problems so that `freshet check` can show all of them at once.
struct Problems<'a> {
    path: &'a Path,
    /// Whether secret references are read; commands that never contact a service leave
    /// them unresolved (docs/behaviour.md section 9), so they run without the secrets in place.
    secrets: Secrets,
    base_dir: PathBuf,
    errors: Vec<ConfigProblem>,
    warnings: Vec<ConfigProblem>,
}

impl Problems<'_> {
    fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigProblem {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn warn(&mut self, key: &str, message: impl Into<String>) {
        self.warnings.push(ConfigProblem {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn secret(&mut self, key: &str, reference: &SecretRef) -> Option<super::Secret> {
        let wanted = match self.secrets {
            Secrets::Resolve => true,
            Secrets::Skip => false,
            Secrets::Only(keys) => keys.iter().any(|wanted| key.starts_with(wanted)),
        };
        if !wanted {
            return Some(super::Secret::unresolved());
        }
        if reference.is_literal() {
            self.warn(
                key,
                "secret written into the config file; prefer { env = .. }, { file = .. } or { credential = .. }",
            );
        }
        match reference.resolve(&self.base_dir) {
            Ok(secret) => Some(secret),
            Err(message) => {
                self.error(key, message);
                None
            }
        }
    }

    fn optional_secret(
        &mut self,
        key: &str,
        reference: &Option<SecretRef>,
    ) -> Option<super::Secret> {
        reference.as_ref().and_then(|r| self.secret(key, r))
    }

    fn url(&mut self, key: &str, text: &str) -> Option<Url> {
        match Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
            Ok(_) => {
                self.error(key, "must be an http:// or https:// URL");
                None
            }
            Err(error) => {
                self.error(key, format!("not a URL: {error}"));
                None
            }
        }
    }
}

/// Parses and validates config text. `path` is used in messages and to anchor relative paths.
pub(super) fn parse(path: &Path, text: &str, secrets: Secrets) -> Result<Config, ConfigErrors> {
    let raw: RawConfig = {
        let deserializer = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let key = error.path().to_string();
            let inner = error.into_inner();
            let mut message = inner.message().to_string();
            if is_secret_key(&key) {
                // serde quotes the value it could not use; here that value is a secret.
                message = hide_quoted_values(&message);
            }
            if let Some(span) = inner.span() {
                let (line, column) = line_column(text, span.start);
                message = format!("{message} (line {line}, column {column})");
            }
            ConfigErrors(vec![ConfigProblem {
                path: path.to_path_buf(),
                key: if key == "." { String::new() } else { key },
                message,
            }])
        })?
    };

    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut problems = Problems {
        path,
        secrets,
        base_dir: base_dir.clone(),
        errors: Vec::new(),
        warnings: Vec::new(),
    };

    let listen = match raw.server.listen.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            problems.error(
                "server.listen",
                "must be an address and port such as 127.0.0.1:8787",
            );
            SocketAddr::from(([127, 0, 0, 1], 8787))
        }
    };
    if raw.server.max_body_bytes == 0 {
        problems.error("server.max_body_bytes", "must be greater than 0");
    }
    if raw.server.max_connections == 0 {
        problems.error("server.max_connections", "must be greater than 0");
    }
    if raw.server.max_pending_body_bytes < raw.server.max_body_bytes {
        problems.error(
            "server.max_pending_body_bytes",
            "must be at least server.max_body_bytes, or a body of the largest size could never be read",
        );
    }
    if raw.server.max_pending_body_bytes > u32::MAX as usize {
        problems.error("server.max_pending_body_bytes", "must be below 4 GiB");
    }
    if raw.rules.max_operations == 0 {
        problems.error("rules.max_operations", "must be greater than 0");
    }

    let dbt = raw.dbt.as_ref().and_then(|dbt| {
        if dbt.webhook_secrets.is_empty() && dbt.api_token.is_none() {
            problems.error(
                "dbt.webhook_secrets",
                "needs at least one secret (or set dbt.api_token to use only the dbt Cloud API)",
            );
        }
        let webhook_secrets = dbt
            .webhook_secrets
            .iter()
            .enumerate()
            .filter_map(|(i, r)| problems.secret(&format!("dbt.webhook_secrets[{i}]"), r))
            .collect();
        let api_base = problems.url("dbt.api_base", &dbt.api_base);
        let api_token = problems.optional_secret("dbt.api_token", &dbt.api_token);
        if dbt.fetch_failures == Some(true) && dbt.api_token.is_none() {
            problems.error(
                "dbt.fetch_failures",
                "needs dbt.api_token: failed runs are read from the dbt Cloud API",
            );
        }
        if dbt.fetch_owners && dbt.api_token.is_none() {
            problems.error("dbt.fetch_owners", "needs dbt.api_token");
        }
        if dbt.account_id.is_some_and(|id| id <= 0) {
            problems.error("dbt.account_id", "must be the account's number (above 0)");
        }
        if dbt.max_artifact_bytes == 0 {
            problems.error("dbt.max_artifact_bytes", "must be greater than 0");
        }
        if dbt.artifact_wait_seconds > 300 {
            // The wait holds an enrichment's lease (ten minutes).
            problems.error("dbt.artifact_wait_seconds", "must be at most 300");
        }
        Some(DbtConfig {
            webhook_secrets,
            api_base: api_base?,
            account_id: dbt.account_id,
            fetch_failures: dbt.fetch_failures.unwrap_or(true),
            fetch_owners: dbt.fetch_owners,
            api_token,
            max_artifact_bytes: dbt.max_artifact_bytes,
            artifact_wait_seconds: dbt.artifact_wait_seconds,
        })
    });

    let mode = raw.mode.as_ref().and_then(|mode| {
        let valid_workspace = !mode.workspace.is_empty()
            && mode
                .workspace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        if !valid_workspace {
            problems.error(
                "mode.workspace",
                "must be the workspace's URL name (letters, digits, _ - .)",
            );
        }
        let api_base = problems.url("mode.api_base", &mode.api_base);
        let api_token = problems.optional_secret("mode.api_token", &mode.api_token);
        let api_secret = problems.optional_secret("mode.api_secret", &mode.api_secret);
        let webhook_token = problems.optional_secret("mode.webhook_token", &mode.webhook_token);
        if mode.api_token.is_some() != mode.api_secret.is_some() {
            problems.error(
                "mode.api_secret",
                "mode.api_token and mode.api_secret go together",
            );
        }
        Some(ModeConfig {
            api_base: api_base?,
            workspace: mode.workspace.clone(),
            api_token,
            api_secret,
            webhook_token,
            fetch_results: mode.fetch_results,
            max_result_rows: mode.max_result_rows,
            max_result_bytes: mode.max_result_bytes,
        })
    });

    let tableau = raw.tableau.as_ref().and_then(|tableau| {
        let server = problems.url("tableau.server", &tableau.server);
        if server
            .as_ref()
            .is_some_and(|url| url.host_str() == Some("online.tableau.com"))
        {
            // Tableau Cloud answers a sign-in there with a redirect to the site's pod, and
            // every call after it must go to the pod (docs/behaviour.md section 12).
            problems.warn(
                "tableau.server",
                "online.tableau.com has no pod: use your site's pod URL (e.g. https://10ay.online.tableau.com), as the Tableau Cloud address bar shows it",
            );
        }
        let pat_secret = problems.secret("tableau.pat_secret", &tableau.pat_secret);
        if tableau.pat_name.is_empty() {
            problems.error("tableau.pat_name", "must not be empty");
        }
        let version_ok = tableau.api_version.as_deref().map_or(true, |version| {
            version
                .split('.')
                .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()))
        });
        if !version_ok {
            problems.error(
                "tableau.api_version",
                "must look like 3.21 (or be left out: the server's own version is used)",
            );
        }
        if tableau.job_poll_seconds == 0 {
            problems.error("tableau.job_poll_seconds", "must be at least 1");
        }
        Some(TableauConfig {
            server: server?,
            site: tableau.site.clone(),
            api_version: tableau.api_version.clone(),
            job_poll_seconds: tableau.job_poll_seconds,
            job_timeout_minutes: tableau.job_timeout_minutes,
            pat_name: tableau.pat_name.clone(),
            pat_secret: pat_secret?,
        })
    });

    let slack = raw.slack.as_ref().and_then(|slack| {
        let api_base = problems.url("slack.api_base", &slack.api_base);
        let webhook_url = problems.optional_secret("slack.webhook_url", &slack.webhook_url);
        if let Some(url) = webhook_url.as_ref().filter(|url| url.is_resolved()) {
            // Checked here, but never echoed: the whole URL is the secret.
            if Url::parse(url.expose())
                .map(|u| !matches!(u.scheme(), "http" | "https"))
                .unwrap_or(true)
            {
                problems.error(
                    "slack.webhook_url",
                    "the resolved value is not an http(s) URL",
                );
            }
        }
        let bot_token = problems.optional_secret("slack.bot_token", &slack.bot_token);
        let mut users = std::collections::BTreeMap::new();
        for (address, id) in &slack.users {
            let key = format!("slack.users.{address}");
            if !address.contains('@') {
                problems.error(&key, "must be an e-mail address");
            }
            if !(id.starts_with('U') || id.starts_with('W'))
                || id.len() < 3
                || !id.chars().all(|c| c.is_ascii_alphanumeric())
            {
                problems.error(&key, "must be a Slack user id (U… or W…)");
            }
            users.insert(address.to_lowercase(), id.clone());
        }
        let workspace_url = slack
            .workspace_url
            .as_ref()
            .and_then(|url| problems.url("slack.workspace_url", url));
        Some(SlackConfig {
            webhook_url,
            bot_token,
            api_base: api_base?,
            users,
            workspace_url,
        })
    });

    let pagerduty = raw.pagerduty.as_ref().and_then(|pagerduty| {
        let events_url = problems.url("pagerduty.events_url", &pagerduty.events_url);
        if pagerduty.routing_keys.is_empty() {
            problems.error(
                "pagerduty.routing_keys",
                "needs at least one named routing key (an integration key)",
            );
        }
        let routing_keys = pagerduty
            .routing_keys
            .iter()
            .filter_map(|(name, reference)| {
                let key = format!("pagerduty.routing_keys.{name}");
                let secret = problems.secret(&key, reference)?;
                if secret.is_resolved() && secret.expose().trim().len() != 32 {
                    problems.error(&key, "an integration key is 32 characters");
                }
                Some((name.clone(), secret))
            })
            .collect();
        Some(PagerDutyConfig {
            events_url: events_url?,
            routing_keys,
        })
    });

    let openlineage = raw.openlineage.as_ref().map(|openlineage| {
        if openlineage.api_keys.is_empty() {
            problems.error(
                "openlineage.api_keys",
                "needs at least one key (the one OPENLINEAGE_API_KEY gives the clients)",
            );
        }
        OpenLineageConfig {
            api_keys: openlineage
                .api_keys
                .iter()
                .enumerate()
                .filter_map(|(i, r)| problems.secret(&format!("openlineage.api_keys[{i}]"), r))
                .collect(),
        }
    });

    let mut following = |section: &str, poll_seconds: u64, timeout_minutes: u64| {
        if poll_seconds == 0 {
            problems.error(&format!("{section}.poll_seconds"), "must be at least 1");
        }
        if timeout_minutes == 0 {
            problems.error(&format!("{section}.timeout_minutes"), "must be at least 1");
        }
    };
    if let Some(hex) = &raw.hex {
        following("hex", hex.poll_seconds, hex.timeout_minutes);
    }
    if let Some(powerbi) = &raw.powerbi {
        following("powerbi", powerbi.poll_seconds, powerbi.timeout_minutes);
    }
    let hex = raw.hex.as_ref().and_then(|hex| {
        let api_base = problems.url("hex.api_base", &hex.api_base);
        let token = problems.secret("hex.token", &hex.token);
        Some(HexConfig {
            api_base: api_base?,
            token: token?,
            poll_seconds: hex.poll_seconds,
            timeout_minutes: hex.timeout_minutes,
        })
    });
    let powerbi = raw.powerbi.as_ref().and_then(|powerbi| {
        for (key, value) in [
            ("powerbi.tenant_id", &powerbi.tenant_id),
            ("powerbi.client_id", &powerbi.client_id),
        ] {
            // Both go into URLs and forms as they are: an id, not a path.
            if value.is_empty()
                || !value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
            {
                problems.error(
                    key,
                    "must be the id Entra ID shows (letters, digits, '-' and '.')",
                );
            }
        }
        let api_base = problems.url("powerbi.api_base", &powerbi.api_base);
        let login_base = problems.url("powerbi.login_base", &powerbi.login_base);
        let client_secret = problems.secret("powerbi.client_secret", &powerbi.client_secret);
        Some(PowerBiConfig {
            tenant_id: powerbi.tenant_id.clone(),
            client_id: powerbi.client_id.clone(),
            client_secret: client_secret?,
            api_base: api_base?,
            login_base: login_base?,
            poll_seconds: powerbi.poll_seconds,
            timeout_minutes: powerbi.timeout_minutes,
        })
    });

    let admin = raw.admin.as_ref().and_then(|admin| {
        let Ok(listen) = admin.listen.parse::<SocketAddr>() else {
            problems.error(
                "admin.listen",
                format!(
                    "{:?} is not an address and port such as 127.0.0.1:8788",
                    admin.listen
                ),
            );
            return None;
        };
        let token = problems.optional_secret("admin.token", &admin.token);
        if !listen.ip().is_loopback() && admin.token.is_none() {
            problems.error(
                "admin.token",
                format!("required when admin.listen ({listen}) is not a loopback address: anyone who reaches it could read the journal and retry actions"),
            );
        }
        for host in &admin.hosts {
            if host.is_empty() || host.contains(['/', ' ', '@']) {
                problems.error("admin.hosts", format!("{host:?} is not a host name"));
            }
        }
        Some(AdminConfig {
            listen,
            hosts: admin.hosts.iter().map(|h| h.to_lowercase()).collect(),
            token,
            read_only: admin.read_only,
        })
    });

    let mut clocks = |section: &str, raw: &std::collections::BTreeMap<String, RawClock>| {
        let mut clocks = std::collections::BTreeMap::new();
        for (name, clock) in raw {
            let key = format!("{section}.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                problems.error(&key, "a name is letters, digits, _ - .");
                continue;
            }
            let cron = croner::Cron::new(&clock.cron)
                .with_seconds_optional()
                .parse();
            let timezone = clock.timezone.parse::<chrono_tz::Tz>();
            match (cron, timezone) {
                (Ok(cron), Ok(timezone)) => {
                    clocks.insert(
                        name.clone(),
                        ClockConfig {
                            pattern: clock.cron.clone(),
                            cron,
                            timezone,
                        },
                    );
                }
                (Err(error), _) => problems.error(
                    &format!("{key}.cron"),
                    format!("not a cron pattern (5 fields, or 6 with seconds first): {error}"),
                ),
                (_, Err(_)) => problems.error(
                    &format!("{key}.timezone"),
                    format!(
                        "{:?} is not an IANA time zone (e.g. Europe/Paris, UTC)",
                        clock.timezone
                    ),
                ),
            }
        }
        clocks
    };
    let deadlines = clocks("deadlines", &raw.deadlines);
    let schedules = clocks("schedules", &raw.schedules);

    // The journal's URL is needed by every command (they all read the journal), so it is
    // read even when the other secrets are not.
    let journal_url = raw.journal.url.as_ref().and_then(|reference| {
        if matches!(problems.secrets, super::Secrets::Only(_)) {
            // `send` talks to the daemon, not the journal.
            return Some(super::Secret::unresolved());
        }
        let secrets = std::mem::replace(&mut problems.secrets, super::Secrets::Resolve);
        let url = problems.secret("journal.url", reference);
        problems.secrets = secrets;
        let url = url?;
        let postgres =
            url.expose().starts_with("postgres://") || url.expose().starts_with("postgresql://");
        if !postgres {
            problems.error(
                "journal.url",
                "must be a postgres:// URL (the value is not shown: it may hold a password)",
            );
            return None;
        }
        // sslmode, sslrootcert and the rest, read as the journal will: a mistake is
        // found by `check` and at start, with its reason (never the password).
        if let Err(reason) = crate::journal::postgres::tls::connection(url.expose()) {
            problems.error("journal.url", &reason);
            return None;
        }
        Some(url)
    });
    if raw.journal.lease_seconds < 3 {
        problems.error("journal.lease_seconds", "must be at least 3");
    }
    let pooler = match raw.journal.pooler.as_deref() {
        None | Some("none") | Some("session") => crate::journal::postgres::Pooler::None,
        Some("transaction") => crate::journal::postgres::Pooler::Transaction,
        Some(other) => {
            problems.error(
                "journal.pooler",
                format!("{other:?} is not one of \"transaction\" (PgBouncer in transaction mode), \"session\", \"none\""),
            );
            crate::journal::postgres::Pooler::None
        }
    };
    if !crate::journal::postgres::is_schema_name(&raw.journal.schema) {
        problems.error(
            "journal.schema",
            "must be a plain PostgreSQL name: lowercase letters, digits and _, not starting with a digit, at most 63 characters",
        );
    }

    let actions = &raw.actions;
    if actions.max_attempts == 0 {
        problems.error("actions.max_attempts", "must be at least 1");
    }
    if actions.backoff_initial_ms > actions.backoff_max_ms {
        problems.error(
            "actions.backoff_initial_ms",
            "must not exceed actions.backoff_max_ms",
        );
    }
    if actions.timeout_ms == 0 {
        problems.error("actions.timeout_ms", "must be greater than 0");
    }

    let vars = match serde_json::to_value(&raw.vars) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => {
            problems.error("vars", "must be a table of plain values");
            serde_json::Map::new()
        }
    };

    if !problems.errors.is_empty() {
        return Err(ConfigErrors(problems.errors));
    }

    let journal_path = match &raw.journal.path {
        Some(p) => base_dir.join(p),
        None => super::default_data_dir().join("journal.db"),
    };
    Ok(Config {
        path: Some(path.to_path_buf()),
        server: ServerConfig {
            listen,
            max_body_bytes: raw.server.max_body_bytes,
            max_connections: raw.server.max_connections,
            max_pending_body_bytes: raw.server.max_pending_body_bytes,
            public_name: raw.server.public_name.clone(),
        },
        rules: RulesConfig {
            dir: base_dir.join(&raw.rules.dir),
            max_operations: raw.rules.max_operations,
        },
        journal: JournalConfig {
            url: journal_url,
            lease_seconds: raw.journal.lease_seconds,
            schema: raw.journal.schema.clone(),
            pooler,
            path: journal_path,
            retention_days: raw.journal.retention_days,
        },
        dbt,
        mode,
        tableau,
        slack,
        pagerduty,
        openlineage,
        hex,
        powerbi,
        admin,
        deadlines,
        schedules,
        actions: ActionsConfig {
            max_attempts: actions.max_attempts,
            backoff_initial_ms: actions.backoff_initial_ms,
            backoff_max_ms: actions.backoff_max_ms,
            timeout_ms: actions.timeout_ms,
        },
        vars,
        warnings: problems.warnings,
    })
}

/// The keys that hold secrets (or secret references): errors about them never quote a
/// value (docs/behaviour.md section 11).
const SECRET_KEYS: [&str; 14] = [
    "dbt.webhook_secrets",
    "dbt.api_token",
    "mode.api_token",
    "mode.api_secret",
    "mode.webhook_token",
    "tableau.pat_secret",
    "slack.webhook_url",
    "slack.bot_token",
    "pagerduty.routing_keys",
    "journal.url",
    "openlineage.api_keys",
    "hex.token",
    "powerbi.client_secret",
    "admin.token",
];

fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS.iter().any(|secret| {
        key.strip_prefix(secret)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    })
}

/// `message` with every "quoted" or `quoted` part replaced by `(value hidden)`.
fn hide_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quote: Option<char> = None;
    for c in message.chars() {
        match quote {
            Some(open) if c == open => quote = None,
            Some(_) => {}
            None if c == '"' || c == '`' => {
                quote = Some(c);
                out.push_str("(value hidden)");
            }
            None => out.push(c),
        }
    }
    out
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, ConfigErrors> {
        parse(
            Path::new("/etc/freshet/freshet.toml"),
            text,
            Secrets::Resolve,
        )
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let config = parse_str("").unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8787");
        assert_eq!(config.server.max_body_bytes, 262_144);
        assert_eq!(config.rules.dir, PathBuf::from("/etc/freshet/rules"));
        assert_eq!(config.actions.max_attempts, 8);
        assert!(config.dbt.is_none() && config.mode.is_none());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let error = parse_str("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("/etc/freshet/freshet.toml: server"),
            "{text}"
        );
        assert!(text.contains("lisen"), "{text}");
        assert!(text.contains("line 3"), "{text}");
    }

    #[test]
    fn dbt_api_keys_are_checked_and_the_token_is_a_secret() {
        let error =
            parse_str("[dbt]\nfetch_owners = true\nwebhook_secrets = [\"s\"]\n").unwrap_err();
        assert_eq!(error.0[0].key, "dbt.fetch_owners");
        let error = parse_str("[dbt]\n").unwrap_err();
        assert_eq!(error.0[0].key, "dbt.webhook_secrets");
        let error = parse_str("[dbt]\napi_token = [\"dbtc_s3cr3t\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            !error.contains("dbtc_s3cr3t") && error.contains("dbt.api_token"),
            "{error}"
        );
        std::env::set_var("FRESHET_TEST_DBT_TOKEN", "dbtc_x");
        let config = parse_str(
            "[dbt]\naccount_id = 43\napi_token = { env = \"FRESHET_TEST_DBT_TOKEN\" }\nartifact_wait_seconds = 5\n",
        )
        .unwrap();
        let dbt = config.dbt.unwrap();
        assert!(dbt.fetches_failures() && dbt.webhook_secrets.is_empty());
        assert_eq!(dbt.api_base.as_str(), "https://cloud.getdbt.com/");
        assert_eq!((dbt.account_id, dbt.artifact_wait_seconds), (Some(43), 5));
        let error = parse_str("[dbt]\nwebhook_secrets = [\"s\"]\nartifact_wait_seconds = 301\n")
            .unwrap_err();
        assert_eq!(error.0[0].key, "dbt.artifact_wait_seconds");
    }

    #[test]
    fn secret_problems_name_the_key_not_the_value() {
        let error = parse_str("[dbt]\nwebhook_secrets = [{ env = \"FRESHET_TEST_UNSET_X\" }]\n")
            .unwrap_err();
        assert_eq!(error.0[0].key, "dbt.webhook_secrets[0]");
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_never_quoted() {
        for text in [
            "[dbt]\nwebhook_secrets = \"s3cr3t-value\"\n",
            "[slack]\nwebhook_url = [\"s3cr3t-value\"]\n",
            "[tableau]\nserver = \"https://t\"\npat_name = \"n\"\npat_secret = 31415926\n",
        ] {
            let error = parse_str(text).unwrap_err().to_string();
            assert!(
                !error.contains("s3cr3t-value") && !error.contains("31415926"),
                "{error}"
            );
            assert!(error.contains("line"), "{error}");
        }
        let error = parse_str("[dbt]\nwebhook_secrets = \"s3cr3t-value\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("dbt.webhook_secrets: invalid type: string (value hidden)"),
            "{error}"
        );
        // Other keys keep their values in messages: they help and hide nothing.
        let error = parse_str("[server]\nlisten = 5\n").unwrap_err().to_string();
        assert!(error.contains("5"), "{error}");
    }

    #[test]
    fn read_only_commands_leave_secret_references_unresolved() {
        let text = "[dbt]\nwebhook_secrets = [{ env = \"FRESHET_TEST_UNSET_Y\" }]\n[tableau]\nserver = \"https://t\"\npat_name = \"n\"\npat_secret = { credential = \"pat\" }\n";
        assert!(parse_str(text).is_err());
        let config = parse(Path::new("/etc/freshet/freshet.toml"), text, Secrets::Skip).unwrap();
        assert!(!config.tableau.unwrap().pat_secret.is_resolved());
    }

    #[test]
    fn tableau_cloud_without_a_pod_is_a_warning() {
        let text = |server: &str| {
            format!("[tableau]\nserver = \"{server}\"\npat_name = \"n\"\npat_secret = {{ env = \"PATH\" }}\n")
        };
        let config = parse_str(&text("https://online.tableau.com")).unwrap();
        assert_eq!(config.warnings.len(), 1);
        assert!(config.warnings[0].to_string().contains("pod"));
        let config = parse_str(&text("https://10ay.online.tableau.com")).unwrap();
        assert!(config.warnings.is_empty());
    }

    #[test]
    fn literal_secret_is_a_warning() {
        let config = parse_str("[dbt]\nwebhook_secrets = [\"s3cr3t-value\"]\n").unwrap();
        assert_eq!(config.warnings.len(), 1);
        assert!(!config.warnings[0].to_string().contains("s3cr3t-value"));
    }

    #[test]
    fn bad_listen_address_is_reported() {
        let error = parse_str("[server]\nlisten = \"nowhere\"\n").unwrap_err();
        assert_eq!(error.0[0].key, "server.listen");
    }
}
