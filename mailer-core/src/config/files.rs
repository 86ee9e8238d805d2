//! What `mailer config check` adds to parsing: the files the configuration names exist, can be
//! read, and are not exposed where that matters; the account `user` names exists.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{Action, Config, Diagnostic};
use crate::tables::users::lookup_user;

pub(super) fn check_files(config: &Config) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let at = |key: &str, message: String| {
        let (line, col) = config.positions.get(key);
        Diagnostic::new(&config.source, line, col, message)
    };

    if let Err(d) = config.user_account(lookup_user) {
        out.push(d);
    }

    for (name, path) in &config.tables {
        if let Err(why) = readable_file(path) {
            out.push(at(
                &format!("tables.{name}"),
                format!("table `{name}`: {}: {why}", path.display()),
            ));
        }
    }

    for (i, listen) in config.listen.iter().enumerate() {
        let Some(tls) = &listen.tls else { continue };
        for (key, path) in [("tls_cert", &tls.cert), ("tls_key", &tls.key)] {
            if let Err(why) = readable_file(path) {
                out.push(at(
                    &format!("listen[{i}].{key}"),
                    format!("{key} {}: {why}", path.display()),
                ));
            }
        }
    }

    // The contents of tables and keys are read once, by `delivery::Tables`.
    for (name, action) in &config.actions {
        let Action::Relay(relay) = action else {
            continue;
        };
        if let Some(ca) = &relay.ca_file {
            if let Err(why) = readable_file(ca) {
                out.push(at(
                    &format!("actions.{name}.ca_file"),
                    format!("ca_file {}: {why}", ca.display()),
                ));
            }
        }
        for (i, key) in relay.dkim.iter().enumerate() {
            let position = format!("actions.{name}.dkim[{i}].key");
            if let Err(why) = readable_file(&key.key) {
                out.push(at(
                    &position,
                    format!("DKIM key {}: {why}", key.key.display()),
                ));
                continue;
            }
            if let Ok(meta) = std::fs::metadata(&key.key) {
                let mode = meta.permissions().mode() & 0o7777;
                // Owner read/write and group read at most: 0600 or 0640.
                if mode & !0o640 != 0 {
                    out.push(at(
                        &position,
                        format!(
                            "DKIM key {}: mode {mode:04o} is too open (0640 at most); chmod 600 it",
                            key.key.display()
                        ),
                    ));
                }
            }
        }
    }
    out.sort();
    out
}

/// Whether `path` is a regular file this process can open; the reason if not.
fn readable_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    File::open(path).map(drop).map_err(|e| e.to_string())
}
