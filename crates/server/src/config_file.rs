//! The optional `--config` TOML file of `weft serve`.
//!
//! Every setting is already a flag with an environment variable behind it,
//! so the file fills in environment variables that are not set: clap then
//! resolves flag > environment > file > default by itself. Keys are the
//! flags' names (`max-connections` or `max_connections`); an unknown key is
//! an error, so a typo never silently does nothing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Command};

use crate::cli::ServeConfig;

/// The config file named on the command line (`--config F`, `--config=F`)
/// or by `WEFT_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("WEFT_CONFIG").map(PathBuf::from)
}

/// Reads the config file, if any, into environment variables not yet set.
/// Call before any thread starts (setting the environment is not thread-safe).
pub fn apply(args: &[OsString]) -> anyhow::Result<()> {
    let Some(path) = config_path(args) else {
        return Ok(());
    };
    for (env, value) in settings(&path)? {
        if std::env::var_os(&env).is_none() {
            std::env::set_var(env, value);
        }
    }
    Ok(())
}

/// The file's settings as (environment variable, value) pairs.
fn settings(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read the config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    let serve = ServeConfig::augment_args(Command::new("serve"));
    let mut out = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        let Some(arg) = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()) && flag != "config")
        else {
            bail!(
                "{}: unknown setting {key:?}; `weft serve --help` lists them",
                path.display()
            );
        };
        let Some(env) = arg.get_env() else {
            bail!("{}: {key:?} cannot be set from a file", path.display());
        };
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            other => bail!(
                "{}: {key:?} has an unsupported value {other}",
                path.display()
            ),
        };
        out.push((env.to_string_lossy().into_owned(), value));
    }
    Ok(out)
}

/// The effective configuration as TOML, secrets redacted.
pub fn print(config: &ServeConfig) -> anyhow::Result<String> {
    Ok(toml::to_string_pretty(config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_environment_variables() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("weft.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\nmax_connections = 5\nallowed-origins = [\"https://a\", \"https://b\"]\nauth-expiry-disconnects = false\n",
        )
        .expect("write");
        let mut got = settings(&path).expect("parses");
        got.sort();
        assert_eq!(
            got,
            vec![
                ("WEFT_ALLOWED_ORIGINS".into(), "https://a,https://b".into()),
                ("WEFT_AUTH_EXPIRY_DISCONNECTS".into(), "false".into()),
                ("WEFT_LISTEN".into(), "0.0.0.0:9000".into()),
                ("WEFT_MAX_CONNECTIONS".into(), "5".into()),
            ]
        );
        std::fs::write(&path, "lisen = \"x\"\n").expect("write");
        let err = settings(&path).expect_err("typo").to_string();
        assert!(err.contains("unknown setting \"lisen\""), "{err}");
    }

    #[test]
    fn finds_the_file_argument() {
        let args: Vec<OsString> = ["weft", "serve", "--config", "a.toml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(config_path(&args), Some(PathBuf::from("a.toml")));
        let args: Vec<OsString> = ["weft", "serve", "--config=b.toml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(config_path(&args), Some(PathBuf::from("b.toml")));
    }
}
