//! `freshet init [DIR]`: writes the documented config and the example rules, so a new
//! user starts from a working layout. Never overwrites a file.

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
];

/// The example rules' tests, written to `rules/tests/`.
pub const EXAMPLE_TESTS: &str = include_str!("../../rules/tests/examples.toml");

pub fn run(dir: Option<PathBuf>) -> anyhow::Result<bool> {
    let dir = match dir {
        Some(dir) => dir,
        None => directories::ProjectDirs::from("", "", "freshet")
            .map(|d| d.config_dir().to_path_buf())
            .context("no user config dir on this system; name a folder: freshet init DIR")?,
    };
    let mut files: Vec<(PathBuf, &str)> =
        vec![(dir.join(crate::config::CONFIG_FILE_NAME), EXAMPLE_CONFIG)];
    files.extend(
        EXAMPLE_RULES
            .iter()
            .map(|(name, text)| (dir.join("rules").join(name), *text)),
    );
    files.push((dir.join("rules/tests/examples.toml"), EXAMPLE_TESTS));
    let existing: Vec<String> = files
        .iter()
        .filter(|(p, _)| p.exists())
        .map(|(p, _)| p.display().to_string())
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
    println!(
        "next: `freshet test --config {0}` runs the rule tests; set the secrets the config names, then `freshet check --config {0}`",
        files[0].0.display()
    );
    Ok(true)
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
