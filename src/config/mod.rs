//! The daemon's configuration: one TOML file (docs/behaviour.md section 3), parsed once and
//! validated into typed values, with secrets resolved from the environment, files or systemd
//! credentials. Everything downstream takes a [`Config`] and never sees raw TOML.

mod file;
pub mod secret;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use secret::{Secret, SecretRef};
use url::Url;

/// The name used for the `directories` lookups (config dir, data dir).
const APP_NAME: &str = "freshet";
/// File name of the config in the user config dir.
pub const CONFIG_FILE_NAME: &str = "freshet.toml";
/// File name of the generated dbt secret used by the embedded defaults.
pub const GENERATED_SECRET_FILE: &str = "dbt_webhook_secret";

/// One problem found in a config file, printed as `PATH: key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: PathBuf,
    /// Dotted key (`mode.api_token`); empty when the problem is not about one key.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.path.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.path.display(), self.key, self.message)
        }
    }
}

/// All problems found while loading a config; `Display` prints one per line.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from; `None` for the embedded defaults.
    pub path: Option<PathBuf>,
    pub server: ServerConfig,
    pub rules: RulesConfig,
    pub journal: JournalConfig,
    pub dbt: Option<DbtConfig>,
    pub mode: Option<ModeConfig>,
    pub tableau: Option<TableauConfig>,
    pub slack: Option<SlackConfig>,
    pub pagerduty: Option<PagerDutyConfig>,
    pub openlineage: Option<OpenLineageConfig>,
    pub hex: Option<HexConfig>,
    pub powerbi: Option<PowerBiConfig>,
    /// `[admin]`: the console (docs/behaviour.md section 16); None: no console.
    pub admin: Option<AdminConfig>,
    /// `[deadlines.NAME]`: when something must have happened (`check_in(NAME)`).
    pub deadlines: std::collections::BTreeMap<String, ClockConfig>,
    /// `[schedules.NAME]`: a `freshet.schedule` event at each due time.
    pub schedules: std::collections::BTreeMap<String, ClockConfig>,
    pub actions: ActionsConfig,
    /// The `[vars]` table, handed to rules as `vars`.
    pub vars: serde_json::Map<String, serde_json::Value>,
    /// Non-fatal remarks (literal secrets in the file), shown by `freshet check`.
    pub warnings: Vec<ConfigProblem>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// Most client connections open at once (docs/behaviour.md section 11).
    pub max_connections: usize,
    /// Memory that request bodies being read may hold at once (docs/behaviour.md section 11).
    pub max_pending_body_bytes: usize,
    /// How this freshet names itself to others (PagerDuty's `payload.source`); None: the
    /// host name.
    pub public_name: Option<String>,
}

impl Config {
    /// The services whose config holds what their actions need, by the names
    /// `configured(NAME)` takes (docs/behaviour.md section 17).
    pub fn configured_services(&self) -> std::collections::BTreeSet<String> {
        let slack = self.slack.as_ref();
        [
            ("slack", slack.is_some_and(|s| s.bot_token.is_some())),
            (
                "slack_webhook",
                slack.is_some_and(|s| s.webhook_url.is_some()),
            ),
            ("tableau", self.tableau.is_some()),
            (
                "mode",
                self.mode
                    .as_ref()
                    .is_some_and(|m| m.api_token.is_some() && m.api_secret.is_some()),
            ),
            (
                "dbt_api",
                self.dbt.as_ref().is_some_and(|d| d.api_token.is_some()),
            ),
            (
                "pagerduty",
                self.pagerduty
                    .as_ref()
                    .is_some_and(|p| !p.routing_keys.is_empty()),
            ),
            ("hex", self.hex.is_some()),
            ("powerbi", self.powerbi.is_some()),
        ]
        .into_iter()
        .filter(|(_, configured)| *configured)
        .map(|(name, _)| name.to_string())
        .collect()
    }
}

impl ServerConfig {
    /// `public_name`, else the machine's host name.
    pub fn source_name(&self) -> String {
        self.public_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_string())
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "freshet".into())
        })
    }
}

#[derive(Debug, Clone)]
pub struct RulesConfig {
    pub dir: PathBuf,
    pub max_operations: u64,
}

#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The SQLite file (unused with `url`).
    pub path: PathBuf,
    /// A PostgreSQL URL: several instances share the journal (docs/behaviour.md section 10).
    pub url: Option<Secret>,
    /// How long a PostgreSQL job lease holds without renewal by its instance.
    pub lease_seconds: u64,
    /// The PostgreSQL schema of freshet's tables (a database shared with others).
    pub schema: String,
    /// Whether a transaction pooler (PgBouncer) stands between freshet and PostgreSQL.
    pub pooler: crate::journal::postgres::Pooler,
    pub retention_days: u32,
}

#[derive(Debug, Clone)]
pub struct DbtConfig {
    /// One per dbt Cloud webhook subscription; several allow rotation. `freshet send
    /// dbt-core` signs with the first.
    pub webhook_secrets: Vec<Secret>,
    /// The dbt Cloud Admin API (docs/behaviour.md section 13): runs, artifacts, triggers.
    pub api_base: Url,
    /// The account `dbt_run` triggers jobs in; failures use the event's own account.
    pub account_id: Option<i64>,
    pub api_token: Option<Secret>,
    /// Whether failed runs are fetched before the rules see them (needs `api_token`).
    pub fetch_failures: bool,
    /// Whether the failed step's manifest.json is read for owners and tags.
    pub fetch_owners: bool,
    /// Most bytes of one artifact read.
    pub max_artifact_bytes: usize,
    /// How long an artifact dbt has not ingested yet (404) is waited for.
    pub artifact_wait_seconds: u64,
}

impl DbtConfig {
    /// Only a webhook secret: the defaults of every other `[dbt]` key.
    pub fn with_webhook_secret(secret: Secret) -> DbtConfig {
        DbtConfig {
            webhook_secrets: vec![secret],
            api_base: Url::parse("https://cloud.getdbt.com").expect("a valid URL"),
            account_id: None,
            api_token: None,
            fetch_failures: true,
            fetch_owners: false,
            max_artifact_bytes: 50 << 20,
            artifact_wait_seconds: 120,
        }
    }

    /// Whether failed dbt Cloud runs are fetched (and so go through the enrich stage).
    pub fn fetches_failures(&self) -> bool {
        self.fetch_failures && self.api_token.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct ModeConfig {
    pub api_base: Url,
    pub workspace: String,
    pub api_token: Option<Secret>,
    pub api_secret: Option<Secret>,
    pub webhook_token: Option<Secret>,
    pub fetch_results: bool,
    pub max_result_rows: usize,
    /// Most bytes of one query's results read (docs/behaviour.md section 7).
    pub max_result_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct TableauConfig {
    pub server: Url,
    pub site: String,
    /// A pinned REST API version; None: the server's own, from serverinfo.
    pub api_version: Option<String>,
    /// How often an accepted refresh job is polled, and when following it gives up.
    pub job_poll_seconds: u64,
    pub job_timeout_minutes: u64,
    pub pat_name: String,
    pub pat_secret: Secret,
}

#[derive(Debug, Clone)]
pub struct SlackConfig {
    pub webhook_url: Option<Secret>,
    pub bot_token: Option<Secret>,
    pub api_base: Url,
    /// `[slack.users]`: e-mail address (lower case) -> Slack user id, for mentions.
    pub users: std::collections::BTreeMap<String, String>,
    /// `slack.workspace_url` (`https://acme.slack.com`): the console links an alert to its
    /// thread there, in the form of Slack's own permalinks (`chat.getPermalink`).
    pub workspace_url: Option<Url>,
}

/// A deadline's or schedule's due times: a cron pattern (5 fields, or 6 with seconds
/// first) in an IANA time zone.
#[derive(Debug, Clone)]
pub struct ClockConfig {
    pub pattern: String,
    pub cron: croner::Cron,
    pub timezone: chrono_tz::Tz,
}

impl ClockConfig {
    /// The first due time strictly after `after` (ms), in UTC ms.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let after =
            chrono::DateTime::from_timestamp_millis(after_ms)?.with_timezone(&self.timezone);
        self.cron
            .find_next_occurrence(&after, false)
            .ok()
            .map(|next| next.timestamp_millis())
    }
}

/// `[pagerduty]`: the Events API v2 and the routing keys rules name.
#[derive(Debug, Clone)]
pub struct PagerDutyConfig {
    pub events_url: Url,
    /// Name (as rules write it) -> integration key (a secret).
    pub routing_keys: std::collections::BTreeMap<String, Secret>,
}

/// `[admin]`: where the console listens and who may use it.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Host names (with or without port) the console answers besides the loopback ones.
    pub hosts: Vec<String>,
    /// Required when `listen` is not a loopback address.
    pub token: Option<Secret>,
    /// Hide every form and refuse every write.
    pub read_only: bool,
}

/// `[openlineage]`: the keys OpenLineage clients send as `Authorization: Bearer`
/// (docs/behaviour.md section 15); several allow rotation.
#[derive(Debug, Clone)]
pub struct OpenLineageConfig {
    pub api_keys: Vec<Secret>,
}

/// `[hex]`: Hex's API, for `hex_run`, and how its runs are followed.
#[derive(Debug, Clone)]
pub struct HexConfig {
    pub api_base: Url,
    pub token: Secret,
    pub poll_seconds: u64,
    pub timeout_minutes: u64,
}

/// `[powerbi]`: a service principal's client credentials, for `powerbi_refresh`, and
/// how its refreshes are followed.
#[derive(Debug, Clone)]
pub struct PowerBiConfig {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub api_base: Url,
    pub login_base: Url,
    pub poll_seconds: u64,
    pub timeout_minutes: u64,
}

#[derive(Debug, Clone)]
pub struct ActionsConfig {
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub timeout_ms: u64,
}

/// Where the config came from, after the lookup of docs/behaviour.md section 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigLocation {
    File(PathBuf),
    /// No file anywhere: run on the embedded defaults.
    Embedded,
}

/// Finds the config file: `--config`, else `$FRESHET_CONFIG`, else `freshet.toml` in the
/// user config dir. A file named explicitly must exist.
pub fn locate(explicit: Option<&Path>) -> Result<ConfigLocation, ConfigErrors> {
    let named = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("FRESHET_CONFIG").map(PathBuf::from));
    if let Some(path) = named {
        if !path.is_file() {
            return Err(ConfigErrors(vec![ConfigProblem {
                path,
                key: String::new(),
                message: "config file not found".into(),
            }]));
        }
        return Ok(ConfigLocation::File(path));
    }
    if let Some(dirs) = project_dirs() {
        let path = dirs.config_dir().join(CONFIG_FILE_NAME);
        if path.is_file() {
            return Ok(ConfigLocation::File(path));
        }
    }
    Ok(ConfigLocation::Embedded)
}

/// Whether loading a config reads the secrets it refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Read every secret: `serve`, `check` and `send`, which use them.
    Resolve,
    /// Leave them unread: the commands that only read or steer the journal, or evaluate
    /// rules offline, must work without the daemon's secrets in place (docs/behaviour.md section
    /// 9).
    Skip,
    /// Read only the secrets under these keys (`dbt.webhook_secrets`): `send`, which signs
    /// with one and needs none of the others, nor the journal (docs/behaviour.md section 17).
    Only(&'static [&'static str]),
}

/// Loads the config from wherever [`locate`] finds it, with every secret resolved.
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigErrors> {
    match locate(explicit)? {
        ConfigLocation::File(path) => Config::from_file(&path),
        ConfigLocation::Embedded => Config::embedded(),
    }
}

/// Loads the config reading only the secrets under `keys` (`freshet send`).
pub fn load_only(
    explicit: Option<&Path>,
    keys: &'static [&'static str],
) -> Result<Config, ConfigErrors> {
    match locate(explicit)? {
        ConfigLocation::File(path) => Config::read(&path, Secrets::Only(keys)),
        ConfigLocation::Embedded => Config::embedded(),
    }
}

/// Loads the config for a command that never contacts a service: secrets are not read,
/// and with no config file nothing is created (no generated secret).
pub fn load_without_secrets(explicit: Option<&Path>) -> Result<Config, ConfigErrors> {
    match locate(explicit)? {
        ConfigLocation::File(path) => Config::read(&path, Secrets::Skip),
        ConfigLocation::Embedded => Config::defaults(),
    }
}

fn project_dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", APP_NAME)
}

/// The user data dir (journal, generated secret), or `./freshet-data` when the platform
/// gives none (no home directory).
pub fn default_data_dir() -> PathBuf {
    project_dirs()
        .map(|dirs| dirs.data_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from("freshet-data"))
}

impl Config {
    /// Reads and validates a config file, resolving its secrets.
    pub fn from_file(path: &Path) -> Result<Config, ConfigErrors> {
        Config::read(path, Secrets::Resolve)
    }

    fn read(path: &Path, secrets: Secrets) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigErrors(vec![ConfigProblem {
                path: path.to_path_buf(),
                key: String::new(),
                message: format!("cannot read the config file: {error}"),
            }])
        })?;
        file::parse(path, &text, secrets)
    }

    /// The embedded defaults: no services, rules from `./rules`, the journal in the user
    /// data dir, and a dbt secret generated once and kept there.
    pub fn embedded() -> Result<Config, ConfigErrors> {
        let data_dir = default_data_dir();
        let secret = generated_dbt_secret(&data_dir).map_err(|message| {
            ConfigErrors(vec![ConfigProblem {
                path: data_dir.join(GENERATED_SECRET_FILE),
                key: String::new(),
                message,
            }])
        })?;
        let mut config = Config::defaults()?;
        config.dbt = Some(DbtConfig::with_webhook_secret(secret));
        Ok(config)
    }

    /// The defaults of docs/behaviour.md section 3 with no services and no secrets (for dry runs
    /// that must not create anything).
    pub fn defaults() -> Result<Config, ConfigErrors> {
        let mut config = file::parse(Path::new("<embedded defaults>"), "", Secrets::Resolve)?;
        config.path = None;
        config.journal.path = default_data_dir().join("journal.db");
        config.rules.dir = PathBuf::from("rules");
        // The console, on loopback (docs/behaviour.md section 16).
        config.admin = Some(AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8788)),
            hosts: Vec::new(),
            token: None,
            read_only: false,
        });
        Ok(config)
    }
}

/// Reads the generated dbt secret from the data dir, creating it (mode 0600) the first time.
pub fn generated_dbt_secret(data_dir: &Path) -> Result<Secret, String> {
    let path = data_dir.join(GENERATED_SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(Secret::new(text.trim().to_string())),
        Ok(_) => {
            return Err("the generated secret file is empty; delete it to make a new one".into())
        }
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot read the generated secret: {error}"));
        }
        Err(_) => {}
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|error| format!("cannot create the data dir {}: {error}", data_dir.display()))?;
    let value = hex::encode(rand::random::<[u8; 32]>());
    write_private_file(&path, &value)
        .map_err(|error| format!("cannot write the generated secret: {error}"))?;
    Ok(Secret::new(value))
}

/// Writes a new file readable by its owner only (0600); an existing file is an error.
#[cfg(unix)]
pub fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
pub fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}
