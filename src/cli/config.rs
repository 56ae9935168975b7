//! The config file: the same keys as the long flags, so a scheduled job can keep its
//! settings in one reviewed file. Precedence: flags > environment > file > defaults.
//!
//! Implemented in front of clap, not beside it: file values are turned into extra
//! `--key value` arguments, added only when the command line does not already give the
//! flag and the flag's environment variable (if it has one) is unset. clap then parses
//! and validates everything exactly as if typed, so a file can never bypass a check.
//!
//! Layout (TOML): top-level keys apply to every command that has the flag (plus the global
//! flags); a `[COMMAND]` table applies to that command only. Lists repeat a flag
//! (`name = ["web-*", "db-*"]`); `true` sets a switch, `false` leaves it off.
//!
//! ```toml
//! log-format = "json"
//! subscription = "00000000-0000-0000-0000-000000000000"
//! [export]
//! output-dir = "/srv/azure2kvm"
//! format = "qcow2"
//! ```

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Command;

/// Environment variable naming a config file when `--config` is not given.
pub const CONFIG_ENV: &str = "AZURE2KVM_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error(
        "config file {path}: unknown key {key:?} for `{command}` (keys are long flag names, e.g. output-dir)"
    )]
    UnknownKey {
        path: PathBuf,
        key: String,
        command: String,
    },
    #[error("config file {path}: [{table}] is not a command")]
    UnknownTable { path: PathBuf, table: String },
    #[error("config file {path}: key {key:?} must be a string, number, boolean or list of those")]
    BadValue { path: PathBuf, key: String },
    #[error("--config needs a file name")]
    MissingPath,
}

/// Where the config file is: `--config FILE` / `--config=FILE` on the command line, else
/// the environment variable. Only before a `--` separator.
fn config_path(args: &[OsString]) -> Result<Option<PathBuf>, ConfigError> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == "--config" {
            return it
                .next()
                .map(|p| Some(PathBuf::from(p)))
                .ok_or(ConfigError::MissingPath);
        }
        if let Some(p) = s.strip_prefix("--config=") {
            return Ok(Some(PathBuf::from(p)));
        }
    }
    Ok(std::env::var_os(CONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from))
}

/// The subcommand named on the command line: the first argument that is one.
fn subcommand_name<'a>(args: &[OsString], cmd: &'a Command) -> Option<&'a Command> {
    args.iter()
        .skip(1)
        .find_map(|a| cmd.find_subcommand(a.to_str()?))
}

/// True if `args` already give the flag `long` (or its short form).
fn given(args: &[OsString], long: &str, short: Option<char>) -> bool {
    let long_eq = format!("--{long}=");
    args.iter()
        .skip(1)
        .map(|a| a.to_string_lossy())
        .take_while(|s| s != "--")
        .any(|s| {
            s == format!("--{long}")
                || s.starts_with(&long_eq)
                || short.is_some_and(|c| {
                    s.len() >= 2 && s.starts_with('-') && !s.starts_with("--") && s[1..].contains(c)
                })
        })
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Returns `args` with the config file's values added as flags (see the module note).
pub fn apply(args: Vec<OsString>, cmd: &Command) -> Result<Vec<OsString>, ConfigError> {
    let Some(path) = config_path(&args)? else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let sub = subcommand_name(&args, cmd);
    let mut extra: Vec<OsString> = Vec::new();

    // Top-level keys first, then the command's own table, which wins on conflicts.
    let mut entries: Vec<(String, toml::Value, bool)> = Vec::new();
    for (key, value) in &table {
        match value {
            toml::Value::Table(t) => {
                if cmd.find_subcommand(key).is_none() {
                    return Err(ConfigError::UnknownTable {
                        path,
                        table: key.clone(),
                    });
                }
                if sub.is_some_and(|s| s.get_name() == key) {
                    entries.extend(t.iter().map(|(k, v)| (k.clone(), v.clone(), true)));
                }
            }
            _ => entries.push((key.clone(), value.clone(), false)),
        }
    }
    let command_name = sub.map_or("azure2kvm", |s| s.get_name()).to_string();
    let mut seen: Vec<String> = Vec::new();
    for (key, value, from_table) in entries.iter().rev() {
        if seen.contains(key) {
            continue;
        }
        seen.push(key.clone());
        let arg = sub
            .and_then(|s| {
                s.get_arguments()
                    .find(|a| a.get_long() == Some(key.as_str()))
            })
            .or_else(|| {
                cmd.get_arguments()
                    .find(|a| a.get_long() == Some(key.as_str()))
            });
        let Some(arg) = arg else {
            // A shared top-level key (e.g. `subscription`) may not apply to this command;
            // only a key no command knows, or a wrong key in a command's table, is an error.
            let known_anywhere = cmd
                .get_subcommands()
                .any(|s| s.get_arguments().any(|a| a.get_long() == Some(key)));
            if *from_table || !known_anywhere {
                return Err(ConfigError::UnknownKey {
                    path,
                    key: key.clone(),
                    command: command_name,
                });
            }
            continue;
        };
        if key == "config" || given(&args, key, arg.get_short()) {
            continue;
        }
        if arg
            .get_env()
            .and_then(std::env::var_os)
            .is_some_and(|v| !v.is_empty())
        {
            continue;
        }
        let values: Vec<&toml::Value> = match value {
            toml::Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        let takes_value = arg.get_action().takes_values();
        for v in values {
            let s = scalar(v).ok_or_else(|| ConfigError::BadValue {
                path: path.clone(),
                key: key.clone(),
            })?;
            if takes_value {
                extra.push(format!("--{key}").into());
                extra.push(s.into());
            } else if s == "true" {
                extra.push(format!("--{key}").into());
            } else if s != "false" {
                return Err(ConfigError::BadValue {
                    path: path.clone(),
                    key: key.clone(),
                });
            }
        }
    }
    let mut out = args;
    // Before a `--` separator, if any, so the values stay flags.
    let at = out.iter().position(|a| a == "--").unwrap_or(out.len());
    out.splice(at..at, extra);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn cmd() -> Command {
        Command::new("t")
            .arg(Arg::new("config").long("config").global(true))
            .arg(
                Arg::new("log-format")
                    .long("log-format")
                    .global(true)
                    .env("T_LOG_FORMAT"),
            )
            .arg(
                Arg::new("quiet")
                    .short('q')
                    .long("quiet")
                    .action(ArgAction::SetTrue)
                    .global(true),
            )
            .subcommand(
                Command::new("export")
                    .arg(Arg::new("output-dir").long("output-dir"))
                    .arg(Arg::new("name").long("name").action(ArgAction::Append))
                    .arg(Arg::new("force").long("force").action(ArgAction::SetTrue)),
            )
            .subcommand(Command::new("inspect").arg(Arg::new("file")))
    }

    fn run(config: &str, argv: &[&str]) -> Result<Vec<String>, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, config).unwrap();
        let mut args: Vec<OsString> = vec!["t".into(), "--config".into(), path.clone().into()];
        args.extend(argv.iter().map(OsString::from));
        apply(args, &cmd()).map(|v| {
            v.into_iter()
                .skip(3)
                .map(|a| a.into_string().unwrap())
                .collect()
        })
    }

    #[test]
    fn file_fills_what_flags_leave_open() {
        let got = run(
            "[export]\noutput-dir = \"/srv\"\nname = [\"a*\", \"b\"]\nforce = true\n",
            &["export"],
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "export",
                "--output-dir",
                "/srv",
                "--name",
                "a*",
                "--name",
                "b",
                "--force"
            ]
        );
    }

    #[test]
    fn flags_beat_the_file() {
        let got = run(
            "[export]\noutput-dir = \"/srv\"\n",
            &["export", "--output-dir=/x"],
        )
        .unwrap();
        assert_eq!(got, ["export", "--output-dir=/x"]);
        let got = run("quiet = true\n", &["-q", "export"]).unwrap();
        assert_eq!(got, ["-q", "export"]);
    }

    #[test]
    fn global_keys_apply_to_any_command() {
        // (Environment precedence is tested on the binary in tests/config.rs: setting
        // variables in this shared test process would race other tests.)
        let got = run("log-format = \"json\"\n", &["inspect", "f"]).unwrap();
        assert_eq!(got, ["inspect", "f", "--log-format", "json"]);
    }

    #[test]
    fn false_switch_adds_nothing() {
        assert_eq!(
            run("[export]\nforce = false\n", &["export"]).unwrap(),
            ["export"]
        );
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(
            matches!(run("[export]\nouput-dir = 1\n", &["export"]), Err(ConfigError::UnknownKey { key, .. }) if key == "ouput-dir")
        );
        assert!(matches!(
            run("nonsense = 1\n", &["export"]),
            Err(ConfigError::UnknownKey { .. })
        ));
        assert!(matches!(
            run("[exprot]\n", &["export"]),
            Err(ConfigError::UnknownTable { .. })
        ));
        assert!(matches!(
            run("[export]\nname = [[1]]\n", &["export"]),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            run("[export]\nforce = \"yes\"\n", &["export"]),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            run("this is not toml", &["export"]),
            Err(ConfigError::Syntax { .. })
        ));
        let missing = apply(
            vec!["t".into(), "--config".into(), "/nonexistent.toml".into()],
            &cmd(),
        );
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
        assert!(matches!(
            apply(vec!["t".into(), "--config".into()], &cmd()),
            Err(ConfigError::MissingPath)
        ));
    }

    #[test]
    fn other_commands_tables_are_ignored() {
        assert_eq!(
            run("[export]\nforce = true\n", &["inspect", "f"]).unwrap(),
            ["inspect", "f"]
        );
    }

    #[test]
    fn shipped_example_config_parses_for_every_command() {
        // config/azure2kvm.toml must name only real flags with valid values: run it through
        // apply and clap's full parse (values included) for each command.
        use clap::{CommandFactory, Parser};
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/azure2kvm.toml");
        let commands: [&[&str]; 5] = [
            &["list"],
            &["export"],
            &[
                "download",
                "https://a.blob.core.windows.net/c/b.vhd?sig=x",
                "o.qcow2",
            ],
            &["convert", "a.vhd", "b.qcow2"],
            &["inspect", "a.vhd"],
        ];
        for argv in commands {
            let mut args: Vec<OsString> =
                vec!["azure2kvm".into(), "--config".into(), example.into()];
            args.extend(argv.iter().map(OsString::from));
            let args = apply(args, &crate::cli::Cli::command()).unwrap();
            let parsed = crate::cli::Cli::try_parse_from(&args);
            assert!(parsed.is_ok(), "{argv:?}: {}", parsed.unwrap_err());
        }
    }
}
