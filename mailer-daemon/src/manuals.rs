//! `mailer generate …` (for packaging): manual pages and shell completions, made from the command
//! line's own definition so they cannot drift from it. Packaging runs it at build time.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// mailer.toml(5), written by hand: the configuration is not a command line.
const CONFIG_PAGE: &str = include_str!("../../docs/mailer.toml.5");

/// `mailer generate …`, parsed on its own: it is not part of [`crate::command`].
#[derive(clap::Parser)]
#[command(name = "mailer generate")]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Write mailer(8), one page per subcommand, sendmail(8), mailq(8), newaliases(8) and
    /// mailer.toml(5) into DIR.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print the completion script for SHELL.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `args`: `generate` and what follows it.
pub fn main(args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = <Args as clap::Parser>::parse_from(args);
    let result = match args.what {
        What::Man { dir } => man_pages(&dir).map(|written| {
            for path in written {
                println!("{}", path.display());
            }
        }),
        What::Completions { shell } => {
            // Into memory first: clap_complete panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut crate::command(), "mailer", &mut script);
            let mut out = io::stdout().lock();
            out.write_all(&script).and_then(|()| out.flush())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailer generate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the pages into `dir` (created if missing); returns their paths.
fn man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut cmd = crate::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    let mut page = |cmd: clap::Command| -> io::Result<()> {
        let man = clap_mangen::Man::new(cmd)
            .section("8")
            .manual("System Manager's Manual");
        let path = dir.join(man.get_filename());
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        fs::write(&path, roff)?;
        written.push(path);
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(sub.clone())?;
    }
    page(cmd)?;
    // The names the package links to `mailer` get their pages too, as roff includes of the
    // subcommand's page.
    for (name, page) in [
        ("sendmail.8", "mailer-sendmail.8"),
        ("mailq.8", "mailer-mailq.8"),
        ("newaliases.8", "mailer-newaliases.8"),
    ] {
        let path = dir.join(name);
        fs::write(&path, format!(".so man8/{page}\n"))?;
        written.push(path);
    }
    let config_page = dir.join("mailer.toml.5");
    fs::write(&config_page, CONFIG_PAGE)?;
    written.push(config_page);
    Ok(written)
}
