//! `--config FILE`: any flag from a TOML file, and any flag from a
//! `PG_DBMIGRATOR_<FLAG>` environment variable, with the precedence a DBA
//! expects: command line > environment > file > defaults.
//!
//! The file holds flags by their long names (`jobs = 8`, `dump-path =
//! "/var/tmp/m"`, `fix-replica-identity = true`, `schema = ["app", "ops"]`),
//! at the top level for every command that has them, or in a table named
//! after one command (`[migrate]`) for that command only. The file's values
//! become command-line arguments placed before the user's, and a value is
//! left out when the same flag is on the command line or in the
//! environment, so clap's own parsing (and its errors) apply to all of them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command};

/// Environment variable names for every flag: `PG_DBMIGRATOR_` and the
/// flag's id in upper case (`--dump-path` → `PG_DBMIGRATOR_DUMP_PATH`).
/// Flags that already name a variable (`--source`, `--target`) keep it.
pub fn with_env_vars(cmd: Command) -> Command {
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let mut cmd = cmd;
    for name in subs {
        cmd = cmd.mut_subcommand(name, |sc| {
            let ids: Vec<String> = sc
                .get_arguments()
                .filter(|a| wants_env(a))
                .map(|a| a.get_id().to_string())
                .collect();
            let mut sc = sc;
            for id in ids {
                sc = sc.mut_arg(&id, |a| a.env(env_name(&id)));
            }
            sc
        });
    }
    cmd
}

fn wants_env(a: &Arg) -> bool {
    a.get_env().is_none()
        && a.get_long().is_some()
        && !a.is_global_set()
        && !matches!(a.get_action(), ArgAction::Help | ArgAction::Version)
}

fn env_name(id: &str) -> String {
    format!(
        "PG_DBMIGRATOR_{}",
        id.to_ascii_uppercase().replace('-', "_")
    )
}

/// The config file named by `--config FILE` / `--config=FILE` on the
/// command line, else by `PG_DBMIGRATOR_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("PG_DBMIGRATOR_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The command line with the config file's values inserted after the
/// subcommand's name. Errors are for the user: they name the file and the
/// setting.
pub fn expand(cmd: &Command, args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(path) = config_path(&args) else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("the config file {} is not valid TOML: {e}", path.display()))?;
    // The subcommand: the first argument naming one.
    let names: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
    let Some(pos) = args
        .iter()
        .position(|a| names.contains(&a.to_string_lossy().as_ref()))
    else {
        return Ok(args); // clap reports the missing subcommand
    };
    let sub_name = args[pos].to_string_lossy().to_string();
    let sub = cmd.find_subcommand(&sub_name).expect("found by name above");
    let given = &args[pos + 1..];

    let mut settings: Vec<(String, toml::Value)> = Vec::new();
    let mut section: Vec<(String, toml::Value)> = Vec::new();
    for (key, value) in &table {
        match value {
            toml::Value::Table(t) => {
                if !names.contains(&key.as_str()) {
                    return Err(format!(
                        "the config file {} has a section [{key}], but there is no command of that name (commands: {})",
                        path.display(),
                        names.join(", ")
                    ));
                }
                if *key == sub_name {
                    section.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
            v => {
                // Top level: for every command that has the flag.
                let known =
                    cmd.get_subcommands().any(|s| find_arg(s, key).is_some()) || key == "config";
                if !known {
                    return Err(unknown(&path, key));
                }
                if find_arg(sub, key).is_some() {
                    settings.push((key.clone(), v.clone()));
                }
            }
        }
    }
    // A section's value wins over the top level's (the last one counts).
    settings.extend(section);
    let mut inserted: Vec<OsString> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (key, value) in settings.into_iter().rev() {
        let Some(arg) = find_arg(sub, &key) else {
            return Err(unknown(&path, &format!("{sub_name}.{key}")));
        };
        let id = arg.get_id().to_string();
        if !seen.insert(id.clone()) {
            continue;
        }
        if on_command_line(arg, given) || in_environment(arg) {
            continue;
        }
        let long = format!("--{}", arg.get_long().expect("long flags only"));
        warn_about_secrets(&path, &key, &value);
        inserted.extend(to_args(&path, &key, &long, arg, &value)?);
    }
    let mut out = args[..=pos].to_vec();
    out.extend(inserted);
    out.extend(given.iter().cloned());
    Ok(out)
}

fn unknown(path: &Path, key: &str) -> String {
    format!(
        "the config file {} sets `{key}`, which is not a flag of pg_dbmigrator (keys are long flag names, e.g. `jobs = 8`; see --help)",
        path.display()
    )
}

fn find_arg<'a>(sub: &'a Command, key: &str) -> Option<&'a Arg> {
    let long = key.replace('_', "-");
    sub.get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()) && !a.is_global_set())
}

fn on_command_line(arg: &Arg, given: &[OsString]) -> bool {
    let long = format!("--{}", arg.get_long().unwrap_or_default());
    let short = arg.get_short().map(|c| format!("-{c}"));
    given.iter().any(|g| {
        let g = g.to_string_lossy();
        g == long
            || g.starts_with(&format!("{long}="))
            || short.as_ref().is_some_and(|s| g.starts_with(s.as_str()))
    })
}

fn in_environment(arg: &Arg) -> bool {
    arg.get_env()
        .is_some_and(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

fn to_args(
    path: &Path,
    key: &str,
    long: &str,
    arg: &Arg,
    value: &toml::Value,
) -> Result<Vec<OsString>, String> {
    let takes_value = !matches!(
        arg.get_action(),
        ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count
    );
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => Err(format!(
                "the config file {} sets `{key}` to {v}: give a string, a number or a boolean",
                path.display()
            )),
        }
    };
    // A flag whose value may be left out (`--source-pressure`): `true`
    // gives it bare, `false` leaves it out.
    let value_optional = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
    match value {
        toml::Value::Boolean(b) if !takes_value || value_optional => {
            Ok(if *b { vec![long.into()] } else { Vec::new() })
        }
        _ if !takes_value => Err(format!(
            "the config file {} sets `{key}`, an on/off flag, to {value}: use true or false",
            path.display()
        )),
        toml::Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => {
            let mut out = Vec::new();
            for v in items {
                out.push(OsString::from(long));
                out.push(scalar(v)?.into());
            }
            Ok(out)
        }
        v => Ok(vec![long.into(), scalar(v)?.into()]),
    }
}

/// Passwords belong in PGPASSWORD or ~/.pgpass; a config file that holds
/// one should at least not be readable by others.
fn warn_about_secrets(path: &Path, key: &str, value: &toml::Value) {
    let Some(s) = value.as_str() else { return };
    let has_password = s.contains("password=")
        || s.split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    if !has_password {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let loose = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0);
    if loose {
        eprintln!(
            "pg_dbmigrator: warning: `{key}` in {} holds a password and the file is readable by other users: chmod 600 it, or give the password through PGPASSWORD or ~/.pgpass",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_the_flag() {
        assert_eq!(env_name("dump_path"), "PG_DBMIGRATOR_DUMP_PATH");
        assert_eq!(env_name("jobs"), "PG_DBMIGRATOR_JOBS");
    }
}
