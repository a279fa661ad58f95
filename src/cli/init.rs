//! `freshet init [DIR]`: writes a config that `serve`, `check` and `send` accept at once
//! (a generated dbt webhook secret beside it, every service section commented out), the
//! example rules and their tests, so a new user starts from a working layout; `--systemd`
//! writes the form the packaged unit reads. Never overwrites a file.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The documented config, every key of docs/behaviour.md section 3.
pub const EXAMPLE_CONFIG: &str = include_str!("../../freshet.example.toml");

/// The example rules shipped in `rules/`.
pub const EXAMPLE_RULES: &[(&str, &str)] = &[
    (
        "refresh_after_dbt.rhai",
        include_str!("../../rules/refresh_after_dbt.rhai"),
    ),
    (
        "revenue_floor.rhai",
        include_str!("../../rules/revenue_floor.rhai"),
    ),
    (
        "mode_run_failed.rhai",
        include_str!("../../rules/mode_run_failed.rhai"),
    ),
    (
        "dbt_failures.rhai",
        include_str!("../../rules/dbt_failures.rhai"),
    ),
    (
        "action_failures.rhai",
        include_str!("../../rules/action_failures.rhai"),
    ),
    (
        "tableau_refresh_failed.rhai",
        include_str!("../../rules/tableau_refresh_failed.rhai"),
    ),
    (
        "nightly_deadline.rhai",
        include_str!("../../rules/nightly_deadline.rhai"),
    ),
    (
        "bi_after_dbt.rhai",
        include_str!("../../rules/bi_after_dbt.rhai"),
    ),
    (
        "bi_refresh_failed.rhai",
        include_str!("../../rules/bi_refresh_failed.rhai"),
    ),
    (
        "lineage_failures.rhai",
        include_str!("../../rules/lineage_failures.rhai"),
    ),
];

/// The example rules' tests, written to `rules/tests/`.
pub const EXAMPLE_TESTS: &str = include_str!("../../rules/tests/examples.toml");

/// Where the written config will be used, which decides how it names its secrets and
/// its journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Run by hand (`serve`, `check`, `send` at once): secrets in files beside the config,
    /// the journal beside it too.
    Here,
    /// Under the packaged unit: secrets as `{ credential = NAME }` from `DIR/credentials`
    /// (the unit's `LoadCredential=` paths for DIR = /etc/freshet), the journal in the
    /// unit's state folder.
    Systemd,
}

/// The unit's state folder (`StateDirectory=freshet`).
const SYSTEMD_JOURNAL: &str = "/var/lib/freshet/journal.db";
/// The folder the unit's `LoadCredential=` lines read.
const SYSTEMD_CONFIG_DIR: &str = "/etc/freshet";
/// Service sections written commented out: each needs the user's account details.
const SERVICE_SECTIONS: &[&str] = &[
    "mode",
    "tableau",
    "slack",
    "slack.users",
    "pagerduty",
    "openlineage",
    "hex",
    "powerbi",
];

pub fn run(dir: Option<PathBuf>, target: Target) -> anyhow::Result<bool> {
    let dir = match dir {
        Some(dir) => dir,
        None if target == Target::Systemd => PathBuf::from(SYSTEMD_CONFIG_DIR),
        None => directories::ProjectDirs::from("", "", "freshet")
            .map(|d| d.config_dir().to_path_buf())
            .context("no user config dir on this system; name a folder: freshet init DIR")?,
    };
    let secret_path = match target {
        Target::Here => dir.join(crate::config::GENERATED_SECRET_FILE),
        Target::Systemd => dir
            .join("credentials")
            .join(crate::config::GENERATED_SECRET_FILE),
    };
    let config_text = written_config(target);
    let mut files: Vec<(PathBuf, &str)> =
        vec![(dir.join(crate::config::CONFIG_FILE_NAME), &config_text)];
    files.extend(
        EXAMPLE_RULES
            .iter()
            .map(|(name, text)| (dir.join("rules").join(name), *text)),
    );
    files.push((dir.join("rules/tests/examples.toml"), EXAMPLE_TESTS));
    let existing: Vec<String> = files
        .iter()
        .map(|(p, _)| p)
        .chain(std::iter::once(&secret_path))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    anyhow::ensure!(
        existing.is_empty(),
        "refusing to overwrite existing files: {}",
        existing.join(", ")
    );
    std::fs::create_dir_all(dir.join("rules/tests"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    for (path, text) in &files {
        write_new(path, text)?;
        println!("wrote {}", path.display());
    }
    if let Some(folder) = secret_path.parent() {
        create_private_dir(folder)?;
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    crate::config::write_private_file(&secret_path, &secret)
        .with_context(|| format!("cannot write {}", secret_path.display()))?;
    println!("wrote {} (mode 0600)", secret_path.display());
    print_next_steps(&dir, &files[0].0, &secret_path, target);
    Ok(true)
}

/// The example config, shaped for `target`: the journal's path set, the dbt webhook
/// secret read from the file `init` writes, and the service sections commented out
/// (each needs an account), with their secrets in the form `target` reads.
pub fn written_config(target: Target) -> String {
    let (journal, secret_form) = match target {
        Target::Here => ("journal.db", "file"),
        Target::Systemd => (SYSTEMD_JOURNAL, "credential"),
    };
    let mut out = format!(
        "# Written by `freshet init{}`. Fill in a service's section and uncomment it to use\n\
         # it; each secret goes in a file of its own ({}).\n\n",
        if target == Target::Systemd {
            " --systemd"
        } else {
            ""
        },
        match target {
            Target::Here => "beside this file, mode 0600, named as its { file = .. }",
            Target::Systemd =>
                "in /etc/freshet/credentials, mode 0600, named as its { credential = .. }, \
                 with a LoadCredential= line for it: systemctl edit freshet",
        }
    );
    let mut section = String::new();
    for line in EXAMPLE_CONFIG.lines() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix('[') {
            section = name.trim_end_matches(']').to_string();
        }
        let active = !trimmed.is_empty() && !trimmed.starts_with('#');
        let line = match target {
            // `{ credential = "NAME" }` is systemd's; by hand, a file of that name.
            Target::Here => line.replace("{ credential = ", "{ file = "),
            Target::Systemd => line.to_string(),
        };
        let service = SERVICE_SECTIONS.contains(&section.as_str());
        if section == "journal" && trimmed.starts_with("# path = ") {
            out.push_str(&format!("path = {journal:?}\n"));
        } else if section == "dbt" && trimmed.starts_with("webhook_secrets = ") {
            out.push_str(&format!(
                "webhook_secrets = [{{ {secret_form} = {:?} }}]\n",
                crate::config::GENERATED_SECRET_FILE
            ));
        } else if active && (service || (section == "dbt" && !trimmed.starts_with('['))) {
            out.push_str(&format!("# {line}\n"));
        } else {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

fn print_next_steps(dir: &Path, config: &Path, secret: &Path, target: Target) {
    let config = config.display();
    println!();
    println!(
        "The dbt webhook secret in {} is a generated one: `freshet send dbt` signs with it.",
        secret.display()
    );
    println!(
        "When you create the webhook subscription in dbt Cloud, put the secret dbt shows there instead."
    );
    println!("To fill in: the sections of the services you use (Mode, Tableau, Slack, dbt Cloud's API, PagerDuty) in {config}, and their secrets.");
    match target {
        Target::Here => {
            println!("Then: freshet check --config {config}");
            println!("      freshet serve --config {config}");
        }
        Target::Systemd => {
            if dir != Path::new(SYSTEMD_CONFIG_DIR) {
                println!(
                    "Note: the unit's LoadCredential= lines read {SYSTEMD_CONFIG_DIR}/credentials, not {}.",
                    dir.join("credentials").display()
                );
            }
            println!("Then: sudo systemctl edit freshet   (the LoadCredential= lines of the services you use: /usr/share/doc/freshet/examples/credentials.conf)");
            println!(
                "      sudo CREDENTIALS_DIRECTORY={} freshet check --config {config}",
                dir.join("credentials").display()
            );
            println!("      sudo systemctl enable --now freshet");
        }
    }
}

#[cfg(unix)]
fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

#[cfg(not(unix))]
fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))
}

fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_configs_parse_with_services_commented_out() {
        for target in [Target::Here, Target::Systemd] {
            let text = written_config(target);
            let value: toml::Value = toml::from_str(&text).unwrap();
            let table = value.as_table().unwrap();
            for section in ["mode", "tableau", "slack", "pagerduty"] {
                assert!(
                    !table.contains_key(section),
                    "{target:?}: [{section}] is active"
                );
            }
            let dbt = table["dbt"].as_table().unwrap();
            assert_eq!(dbt.keys().collect::<Vec<_>>(), ["webhook_secrets"]);
            assert!(text.contains("# workspace = \"acme\""), "{text}");
        }
        let here = written_config(Target::Here);
        assert!(here.contains("path = \"journal.db\""));
        assert!(here.contains("webhook_secrets = [{ file = \"dbt_webhook_secret\" }]"));
        assert!(
            here.contains("# api_token = { file = \"mode_api_token\" }"),
            "{here}"
        );
        assert!(!here.contains("credential = \""), "{here}");
        let systemd = written_config(Target::Systemd);
        assert!(systemd.contains("path = \"/var/lib/freshet/journal.db\""));
        assert!(systemd.contains("webhook_secrets = [{ credential = \"dbt_webhook_secret\" }]"));
    }
}
