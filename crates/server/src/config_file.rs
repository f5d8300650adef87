//! The optional `--config` TOML file of `weft serve`: read under the flags
//! and environment variables, and printed back by `--print-config`.
//!
//! Layering is clap's own, and nothing is written to the process
//! environment (secrets in the file stay in this process's memory): each
//! of the file's settings becomes one more command-line argument, added
//! only where neither a flag nor the setting's environment variable gave
//! it. clap then parses it like any flag (same parser, same checks:
//! `--tls-cert` still needs `--tls-key`), and falls back to the default
//! for what is left: flag > environment > file > default.
//!
//! Keys are the flags' names (`max-connections` or `max_connections`); an
//! unknown key is an error, so a typo never silently does nothing. A list
//! may be empty: `allowed-origins = []` is the same as leaving the key out.
//! A setting is known across commands by its environment variable, so the
//! operator commands (`weft docs`, `weft backup`, ...) take the ones they
//! share with `weft serve` (`data-dir`, `admin-key`) from the file named by
//! `WEFT_CONFIG` too.
//!
//! `--print-config` writes the same keys (with `_`), durations in the
//! largest unit that keeps them exact (`90days`, `1500ms`), and secrets as
//! `<redacted>`, which the file refuses: its output loads back as itself.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};

use crate::cli::Cli;
use crate::secret::Secret;
use crate::serve_config::ServeConfig;

/// The environment variable that names the file, for every command.
const CONFIG_ENV: &str = "WEFT_CONFIG";

/// `args` (the whole command line) with the config file's settings added
/// as flags, for each setting that neither a flag nor an environment
/// variable gives. Unchanged when there is no file, and for `--help` and
/// `--version`, which clap answers by itself.
pub fn under_flags_and_env(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let mut cli = Cli::command();
    cli.build();
    // Usage errors are left for the real parse to report.
    let Ok(matches) = cli.clone().ignore_errors(true).try_get_matches_from(&args) else {
        return Ok(args);
    };
    let invoked = invoked(&cli, &matches);
    let (Some(path), Some(serve)) = (config_path(&invoked), cli.find_subcommand("serve")) else {
        return Ok(args);
    };
    let added = read(&path, serve)?
        .iter()
        .flat_map(|setting| as_flags(setting, &invoked))
        .collect();
    Ok(insert_flags(args, added))
}

/// The setting as flags of the command that runs (`--long=value`, once per
/// value), unless that command has no such setting or was given it.
fn as_flags(setting: &Setting, invoked: &[(&clap::Command, &ArgMatches)]) -> Vec<OsString> {
    let Some((leaf, _)) = invoked.last() else {
        return Vec::new();
    };
    let arg = leaf
        .get_arguments()
        .find(|a| a.get_env() == Some(&setting.env));
    match arg.and_then(|a| Some((a.get_id(), a.get_long()?))) {
        Some((id, long)) if !given(invoked, id.as_str()) => setting
            .values
            .iter()
            .map(|value| OsString::from(format!("--{long}={value}")))
            .collect(),
        _ => Vec::new(),
    }
}

/// The command and its matches at each level of the command line, from
/// the top to the subcommand that runs.
fn invoked<'a>(
    cli: &'a clap::Command,
    matches: &'a ArgMatches,
) -> Vec<(&'a clap::Command, &'a ArgMatches)> {
    let mut chain = vec![(cli, matches)];
    while let Some((command, matches)) = chain.last().and_then(|(command, matches)| {
        let (name, sub) = matches.subcommand()?;
        Some((command.find_subcommand(name)?, sub))
    }) {
        chain.push((command, matches));
    }
    chain
}

/// The file named by `--config`, or else by `WEFT_CONFIG` (read by clap
/// for `weft serve`, here for the commands that have no `--config`).
fn config_path(invoked: &[(&clap::Command, &ArgMatches)]) -> Option<PathBuf> {
    invoked
        .iter()
        .find_map(|(_, m)| m.try_get_one::<PathBuf>("config").ok().flatten().cloned())
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
}

/// Whether a flag or an environment variable gave the argument `id`.
fn given(invoked: &[(&clap::Command, &ArgMatches)], id: &str) -> bool {
    invoked.iter().any(|(command, m)| {
        command.get_arguments().any(|a| a.get_id() == id)
            && matches!(
                m.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
    })
}

/// The flags go before a `--`, if there is one, so that they stay flags.
fn insert_flags(mut args: Vec<OsString>, flags: Vec<OsString>) -> Vec<OsString> {
    let at = args
        .iter()
        .position(|a| a.as_os_str() == OsStr::new("--"))
        .unwrap_or(args.len());
    args.splice(at..at, flags);
    args
}

/// One setting of the file: the environment variable of its `weft serve`
/// flag (the setting's name across commands) and its values as text.
#[derive(Debug, PartialEq, Eq)]
struct Setting {
    env: OsString,
    values: Vec<String>,
}

/// The file's settings, each checked against the flags of `weft serve`.
fn read(path: &Path, serve: &clap::Command) -> anyhow::Result<Vec<Setting>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read the config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    let file = path.display();
    let mut settings = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        let Some(arg) = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()) && flag != "config")
        else {
            bail!("{file}: unknown setting {key:?}; `weft serve --help` lists them");
        };
        let Some(env) = arg.get_env() else {
            bail!("{file}: {key:?} cannot be set from a file");
        };
        let values = match value {
            toml::Value::Array(items) => items.into_iter().map(text_of).collect(),
            toml::Value::Table(_) | toml::Value::Datetime(_) => {
                bail!("{file}: {key:?} has an unsupported value {value}")
            }
            value => vec![text_of(value)],
        };
        if arg.is_hide_env_values_set() && values.iter().any(|v| v == Secret::REDACTED) {
            bail!(
                "{file}: {key:?} is {}, as --print-config shows secrets; put the secret \
                 itself there, or remove the key and set {}",
                Secret::REDACTED,
                env.to_string_lossy()
            );
        }
        settings.push(Setting {
            env: env.to_owned(),
            values,
        });
    }
    Ok(settings)
}

/// A value as it would be typed after its flag.
fn text_of(value: toml::Value) -> String {
    match value {
        toml::Value::String(s) => s,
        // As a number is typed: `1000.0` is `1000`, as it always was here.
        toml::Value::Float(f) => f.to_string(),
        other => other.to_string(),
    }
}

/// The effective configuration as TOML, secrets redacted.
pub fn print(config: &ServeConfig) -> anyhow::Result<String> {
    Ok(toml::to_string_pretty(config)?)
}

/// Serializes a duration in the largest unit that keeps it exact, in the
/// form the flags take (`90days`, `10m`, `1500ms`).
pub fn exact_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&duration_text(*d))
}

fn duration_text(d: Duration) -> String {
    const UNITS: [(u128, &str); 6] = [
        (86_400_000_000_000, "days"),
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
    ];
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    match UNITS.iter().find(|(unit, _)| nanos.is_multiple_of(*unit)) {
        Some((unit, name)) => format!("{}{name}", nanos / unit),
        None => format!("{nanos}ns"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve() -> clap::Command {
        let mut cli = Cli::command();
        cli.build();
        cli.find_subcommand("serve").expect("serve").clone()
    }

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn keys_name_the_flags_and_their_environment_variables() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("weft.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\nmax_connections = 5\nallowed-origins = [\"https://a\", \"https://b\"]\nauth-expiry-disconnects = false\nsnapshot-every = 1000.0\n",
        )
        .expect("write");
        let mut got: Vec<(String, Vec<String>)> = read(&path, &serve())
            .expect("parses")
            .into_iter()
            .map(|s| (s.env.to_string_lossy().into_owned(), s.values))
            .collect();
        got.sort();
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            got,
            vec![
                (
                    "WEFT_ALLOWED_ORIGINS".into(),
                    owned(&["https://a", "https://b"])
                ),
                ("WEFT_AUTH_EXPIRY_DISCONNECTS".into(), owned(&["false"])),
                ("WEFT_LISTEN".into(), owned(&["0.0.0.0:9000"])),
                ("WEFT_MAX_CONNECTIONS".into(), owned(&["5"])),
                // A whole number written as a float, as it is typed.
                ("WEFT_SNAPSHOT_EVERY".into(), owned(&["1000"])),
            ]
        );
        std::fs::write(&path, "lisen = \"x\"\n").expect("write");
        let err = read(&path, &serve()).expect_err("typo").to_string();
        assert!(err.contains("unknown setting \"lisen\""), "{err}");
        std::fs::write(&path, "print-config = true\n").expect("write");
        let err = read(&path, &serve())
            .expect_err("not a setting")
            .to_string();
        assert!(err.contains("cannot be set from a file"), "{err}");
    }

    #[test]
    fn a_redacted_secret_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("weft.toml");
        std::fs::write(&path, "webhook-secret = \"<redacted>\"\n").expect("write");
        let err = read(&path, &serve()).expect_err("redacted").to_string();
        assert!(err.contains("WEFT_WEBHOOK_SECRET"), "{err}");
        std::fs::write(&path, "listen = \"<redacted>\"\n").expect("write");
        assert!(read(&path, &serve()).is_ok(), "only secrets are checked");
    }

    #[test]
    fn finds_the_file_argument_and_adds_what_flags_do_not_give() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("a.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\nmax-connections = 5\nwebhook-url = []\nallowed-origins = [\"https://a\", \"https://b\"]\n",
        )
        .expect("write");
        let file = path.to_str().expect("utf8");
        let joined = format!("--config={file}");
        for given in [
            args(&["weft", "serve", "--config", file, "--listen", "127.0.0.1:2"]),
            args(&["weft", "serve", &joined, "--listen", "127.0.0.1:2"]),
        ] {
            let got = under_flags_and_env(given.clone()).expect("layers");
            let mut want = given;
            want.extend(args(&[
                "--allowed-origins=https://a",
                "--allowed-origins=https://b",
                "--max-connections=5",
            ]));
            assert_eq!(got, want);
        }
        let help = args(&["weft", "serve", "--config", file, "--help"]);
        assert_eq!(under_flags_and_env(help.clone()).expect("help"), help);
    }

    #[test]
    fn durations_print_exactly_in_the_largest_unit() {
        for (d, text) in [
            (Duration::from_secs(90 * 86_400), "90days"),
            (Duration::from_secs(7 * 86_400), "7days"),
            (Duration::from_secs(600), "10m"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_nanos(1_000_001), "1000001ns"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(duration_text(d), text);
            assert_eq!(humantime::parse_duration(text).expect("parses"), d);
        }
    }

    #[test]
    fn every_printed_key_is_a_file_key() {
        let mut cli = Cli::command();
        cli.build();
        let matches = cli
            .clone()
            .try_get_matches_from(["weft", "serve"])
            .expect("parses");
        let (_, sub) = matches.subcommand().expect("serve");
        let config = <ServeConfig as clap::FromArgMatches>::from_arg_matches(sub).expect("config");
        let printed: toml::Table = print(&config).expect("prints").parse().expect("TOML");
        let serve = serve();
        for key in printed.keys() {
            let flag = key.replace('_', "-");
            assert!(
                serve.get_arguments().any(|a| a.get_long() == Some(&flag)),
                "--print-config prints {key:?}, which is no flag"
            );
        }
    }
}
