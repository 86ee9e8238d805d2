//! Replays every committed fuzz corpus file (fuzz/corpus/<target>/) through the same target
//! code the fuzzers run, so a plain test run checks every seed and every past finding.

#[path = "../../fuzz/targets/mod.rs"]
#[allow(dead_code)]
mod targets;

use std::path::{Path, PathBuf};

// Counts heap bytes so the session target checks its memory bound here too.
#[global_allocator]
static ALLOC: targets::memory::Counting = targets::memory::Counting;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Runs every file of the target's corpus; the panic names the file at fault.
fn replay(target: &str) {
    let run = targets::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target {target}"))
        .1;
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no seed", dir.display());
    for file in files {
        let data = std::fs::read(&file).expect("readable corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} fails target {target}", file.display());
    }
}

#[test]
fn every_target_has_a_corpus_and_a_binary() {
    let bins =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/Cargo.toml"))
            .expect("fuzz/Cargo.toml is readable");
    assert!(targets::TARGETS.len() >= 10);
    for (name, _) in targets::TARGETS {
        assert!(corpus_dir(name).is_dir(), "no corpus for {name}");
        assert!(
            bins.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no binary {name}"
        );
    }
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*
    };
}

replay_tests!(
    session,
    data,
    address,
    config,
    aliases,
    secrets,
    align,
    dsn,
    mta_sts,
    spf,
    dmarc,
    tlsrpt,
    relay_reply,
    bdat,
    relay_session,
    offline,
    dotenv,
    import,
    relay_probe,
    dot_stuff_stream,
);
