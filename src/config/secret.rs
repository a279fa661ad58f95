//! Secret references in the config file and the resolved secret values.
//!
//! The config names *where* a secret lives (`{ env = ".." }`, `{ file = ".." }`,
//! `{ credential = ".." }`), never what it is, so the TOML file can be committed and read
//! by anyone. [`Secret`] holds the resolved value and refuses to show it: its `Debug` is
//! redacted and it has no `Display`, so it cannot end up in a log line by accident.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where a secret value comes from, as written in the config file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(
    untagged,
    expecting = "a string, or a table with one of `env`, `file` or `credential`"
)]
pub enum SecretRef {
    /// A value written into the config itself. Allowed, but `freshet check` warns.
    Literal(String),
    Env {
        env: String,
    },
    File {
        file: PathBuf,
    },
    Credential {
        credential: String,
    },
}

/// A resolved secret value. Deliberately not `Display`; `Debug` prints `Secret(***)`.
/// Commands that never use secrets load the config without reading them: theirs are
/// unresolved ([`Secret::unresolved`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Option<String>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Some(value.into()))
    }

    /// A secret that was referred to but not read.
    pub fn unresolved() -> Self {
        Secret(None)
    }

    pub fn is_resolved(&self) -> bool {
        self.0.is_some()
    }

    /// The secret value, for the few places that must send it somewhere.
    ///
    /// # Panics
    ///
    /// On an unresolved secret: only `serve`, `check` and `send` use secrets, and they
    /// load the config with every secret read, so this is a bug, never bad input.
    pub fn expose(&self) -> &str {
        self.0
            .as_deref()
            .expect("secrets are read by every command that uses them")
    }
}

impl SecretRef {
    /// Whether the value is written into the config file itself.
    pub fn is_literal(&self) -> bool {
        matches!(self, SecretRef::Literal(_))
    }

    /// Reads the secret. `base_dir` anchors relative `file` paths. The error text names
    /// where the secret was looked for, never its value.
    pub fn resolve(&self, base_dir: &Path) -> Result<Secret, String> {
        let value = match self {
            SecretRef::Literal(value) => value.clone(),
            SecretRef::Env { env } => std::env::var(env)
                .map_err(|_| format!("environment variable {env} is not set (or not UTF-8)"))?,
            SecretRef::File { file } => {
                let path = base_dir.join(file);
                read_secret_file(&path)?
            }
            SecretRef::Credential { credential } => {
                if credential.contains('/') || credential.is_empty() || credential == ".." {
                    return Err(format!(
                        "credential name {credential:?} is not a plain file name"
                    ));
                }
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    format!(
                        "credential {credential} needs $CREDENTIALS_DIRECTORY (set by systemd's LoadCredential=)"
                    )
                })?;
                read_secret_file(&Path::new(&dir).join(credential))?
            }
        };
        if value.is_empty() {
            return Err("the secret is empty".to_string());
        }
        Ok(Secret(Some(value)))
    }
}

fn read_secret_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read secret file {}: {error}", path.display()))?;
    // Files written by `echo` or editors end with a newline that is not part of the secret.
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
    }

    #[test]
    fn file_secrets_lose_their_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "abc\n").unwrap();
        let secret = SecretRef::File {
            file: "token".into(),
        }
        .resolve(dir.path())
        .unwrap();
        assert_eq!(secret.expose(), "abc");
    }

    #[test]
    fn missing_env_names_the_variable_only() {
        let error = SecretRef::Env {
            env: "FRESHET_TEST_SURELY_UNSET".into(),
        }
        .resolve(Path::new("."))
        .unwrap_err();
        assert!(error.contains("FRESHET_TEST_SURELY_UNSET"), "{error}");
    }

    #[test]
    fn parses_every_form() {
        #[derive(Deserialize)]
        struct T {
            a: SecretRef,
            b: SecretRef,
            c: SecretRef,
            d: SecretRef,
        }
        let t: T = toml::from_str(
            r#"a = "lit"
b = { env = "X" }
c = { file = "/f" }
d = { credential = "n" }"#,
        )
        .unwrap();
        assert!(t.a.is_literal());
        assert_eq!(t.b, SecretRef::Env { env: "X".into() });
        assert_eq!(t.c, SecretRef::File { file: "/f".into() });
        assert_eq!(
            t.d,
            SecretRef::Credential {
                credential: "n".into()
            }
        );
    }
}
