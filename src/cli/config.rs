//! The config file: the same keys as the long flags, so a scheduled job can keep its
//! settings in one reviewed file. Precedence: flags > environment > file > defaults.
//!
//! Implemented in front of clap, not beside it: file values are turned into extra
//! `--key value` arguments, added only when the command line does not already give the
//! flag (as clap itself reads it: its value source, not a guess from the raw arguments)
//! and the flag's environment variable (if it has one) is unset. clap then parses
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
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

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

/// How clap reads `args` before the file is merged: only to ask which flags the command
/// line gave ([`ValueSource::CommandLine`]). Errors are ignored here (a required value
/// may still come from the file); None when clap stops anyway (`--help`, `--version`):
/// then nothing counts as given and the real parse decides.
fn command_line_matches(args: &[OsString], cmd: &Command) -> Option<ArgMatches> {
    cmd.clone()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .ok()
}

/// True if the command line gives the argument `id`, at the top level or in `sub`.
fn given(matches: Option<&ArgMatches>, sub: Option<&str>, id: &str) -> bool {
    let Some(top) = matches else {
        return false;
    };
    let in_sub = sub.and_then(|s| top.subcommand_matches(s));
    [Some(top), in_sub].into_iter().flatten().any(|m| {
        // `value_source` insists on a known id; a global flag shows in both.
        m.ids().any(|i| i.as_str() == id) && m.value_source(id) == Some(ValueSource::CommandLine)
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
    let table = read_table(&path)?;
    let sub = subcommand_name(&args, cmd);
    let entries = entries_for(&table, cmd, sub, &path)?;
    let matches = command_line_matches(&args, cmd);
    let command_name = sub.map_or("azure2kvm", |s| s.get_name()).to_string();
    let mut extra: Vec<OsString> = Vec::new();
    for (key, value, from_table) in &entries {
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
        let id = arg.get_id().as_str();
        if key == "config" || given(matches.as_ref(), sub.map(|s| s.get_name()), id) {
            continue;
        }
        if arg
            .get_env()
            .and_then(std::env::var_os)
            .is_some_and(|v| !v.is_empty())
        {
            continue;
        }
        extra.extend(flag_values(
            key,
            value,
            arg.get_action().takes_values(),
            &path,
        )?);
    }
    let mut out = args;
    // Before a `--` separator, if any, so the values stay flags.
    let at = out.iter().position(|a| a == "--").unwrap_or(out.len());
    out.splice(at..at, extra);
    Ok(out)
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// The file's entries that apply to the command line's subcommand, one per key: the
/// command's own table wins over a top-level key. `(key, value, from the command's table)`.
fn entries_for(
    table: &toml::Table,
    cmd: &Command,
    sub: Option<&Command>,
    path: &Path,
) -> Result<Vec<(String, toml::Value, bool)>, ConfigError> {
    // Top-level keys first, then the command's own table, which wins on conflicts.
    let mut entries: Vec<(String, toml::Value, bool)> = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(t) => {
                if cmd.find_subcommand(key).is_none() {
                    return Err(ConfigError::UnknownTable {
                        path: path.to_path_buf(),
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
    let mut seen: Vec<String> = Vec::new();
    let mut kept = Vec::new();
    for entry in entries.into_iter().rev() {
        if !seen.contains(&entry.0) {
            seen.push(entry.0.clone());
            kept.push(entry);
        }
    }
    Ok(kept)
}

/// `key = value` as arguments: `--key value` per value (a list repeats the flag), or
/// `--key` for a switch set to true.
fn flag_values(
    key: &str,
    value: &toml::Value,
    takes_value: bool,
    path: &Path,
) -> Result<Vec<OsString>, ConfigError> {
    let bad = || ConfigError::BadValue {
        path: path.to_path_buf(),
        key: key.to_string(),
    };
    let values: Vec<&toml::Value> = match value {
        toml::Value::Array(items) => items.iter().collect(),
        v => vec![v],
    };
    let mut out = Vec::new();
    for v in values {
        let s = scalar(v).ok_or_else(bad)?;
        if takes_value {
            out.push(format!("--{key}").into());
            out.push(s.into());
        } else if s == "true" {
            out.push(format!("--{key}").into());
        } else if s != "false" {
            return Err(bad());
        }
    }
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

    /// What the command line gives is read by clap itself (value_source), also when the
    /// command line alone does not parse yet: here `cleanup` misses its required
    /// --run-id, which only the file supplies.
    #[test]
    fn given_flags_are_what_clap_parses_even_before_the_file_completes_them() {
        use clap::CommandFactory;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[cleanup]\nrun-id = \"r1\"\noutput-dir = \"/srv\"\n").unwrap();
        let args: Vec<OsString> = ["azure2kvm", "--config"]
            .iter()
            .map(OsString::from)
            .chain([path.into_os_string()])
            .chain(["cleanup", "--output-dir", "/x"].iter().map(OsString::from))
            .collect();
        let got: Vec<String> = apply(args, &crate::cli::Cli::command())
            .unwrap()
            .into_iter()
            .skip(3)
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(got, ["cleanup", "--output-dir", "/x", "--run-id", "r1"]);
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
