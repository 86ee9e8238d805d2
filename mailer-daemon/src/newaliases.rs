//! `newaliases` (and `mailer newaliases`): what an admin types after editing `/etc/aliases`.
//!
//! There is no database to rebuild: the daemon reads the text files. This checks every file
//! the configuration would read on a reload (the aliases first of all), reports each problem
//! as `FILE:LINE: reason`, and asks the running daemon to reload, so the admin learns at once,
//! not from a bounce, whether the edit took. Exit 0 when the files are valid (the daemon
//! reloaded, or is not running and reads them when it starts), 2 when they are not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mailer_core::config::{Action, Config};

use crate::control::Request;
use crate::queue_cmd::{call, CallError};

const INVALID: u8 = 2;

pub fn main(config_path: Option<&Path>) -> ExitCode {
    let config = match crate::load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let tables = match mailer_core::delivery::preflight(&config) {
        Ok(t) => t,
        Err(problems) => {
            for p in problems {
                eprintln!("{p}");
            }
            eprintln!("newaliases: nothing reloaded; fix the lines above and run newaliases again");
            return ExitCode::from(INVALID);
        }
    };
    let files = alias_files(&config, &tables);
    if files.is_empty() {
        println!(
            "newaliases: {} names no aliases file (no local action has `alias`)",
            config.source.display()
        );
    }
    for (path, count) in &files {
        println!(
            "{}: {count} alias{}",
            path.display(),
            if *count == 1 { "" } else { "es" }
        );
    }
    for w in mailer_core::delivery::alias_warnings(&config, &tables) {
        eprintln!("{w} (warning)");
    }
    match call(&config.control_socket, &Request::Reload) {
        Ok(summary) => {
            println!(
                "newaliases: the daemon reloaded ({})",
                summary.as_str().unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(CallError::Down(_)) => {
            println!("newaliases: the daemon is not running; it reads these files when it starts");
            ExitCode::SUCCESS
        }
        Err(CallError::Failed(e)) => {
            eprintln!("newaliases: the daemon refused to reload: {e}");
            ExitCode::from(INVALID)
        }
    }
}

/// Each aliases file the local actions read, with its number of aliases.
fn alias_files(
    config: &Config,
    tables: &mailer_core::delivery::Tables,
) -> BTreeMap<PathBuf, usize> {
    let mut files = BTreeMap::new();
    for (name, action) in &config.actions {
        if !matches!(action, Action::Local(_)) {
            continue;
        }
        if let Some(aliases) = tables.aliases(name) {
            files.insert(aliases.source().to_path_buf(), aliases.len());
        }
    }
    files
}
