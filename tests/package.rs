//! The Debian package, as `debian/build-deb` makes it (from the binary under test): what
//! `dpkg -c` and `dpkg -I` show an admin before installing it. Installing, delivering and
//! purging are `debian/try-install`'s job in `.ci/run` (they change the machine's root).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_mailer");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn found(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds the package into `out` from the debug binary; None (the test skips, saying why)
/// without dpkg-deb or cargo-deb, except under CI, where `.ci/run` installs both.
fn build_package(out: &Path) -> Option<PathBuf> {
    let missing: Vec<&str> = [("dpkg-deb", "dpkg-deb"), ("cargo-deb", "cargo-deb")]
        .into_iter()
        .filter(|(program, _)| !found(program))
        .map(|(_, name)| name)
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{missing:?} missing under CI: .ci/run installs them"
        );
        eprintln!(
            "skipped: {missing:?} not installed (dpkg-deb: apt-get install dpkg; \
             cargo-deb: cargo install --locked cargo-deb)"
        );
        return None;
    }
    // BIN is <target>/debug/mailer: the package is made from that target directory.
    let target = Path::new(BIN).parent().and_then(Path::parent).unwrap();
    let built = Command::new(format!("{REPO}/debian/build-deb"))
        .arg("--debug")
        .arg("--output")
        .arg(out)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .unwrap();
    assert!(built.status.success(), "debian/build-deb: {}", text(&built));
    let deb = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| panic!("no .deb in {}: {}", out.display(), text(&built)));
    Some(deb)
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .unwrap();
    assert!(out.status.success(), "dpkg-deb {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// `dpkg -c`'s line for `path` (`./usr/sbin/mailer`), without the date columns: mode,
/// owner and the name (with ` -> target` for a link).
fn entry(listing: &str, path: &str) -> Option<(String, String, String)> {
    listing.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let name_at = fields.iter().position(|f| f.starts_with("./"))?;
        let name = fields[name_at..].join(" ");
        let bare = name.split(" -> ").next().unwrap_or_default();
        (bare == path).then(|| (fields[0].to_string(), fields[1].to_string(), name))
    })
}

#[test]
fn the_package_holds_the_binary_links_unit_conffile_man_pages_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let Some(deb) = build_package(dir.path()) else {
        return;
    };
    let listing = dpkg_deb(&["-c"], &deb);
    let has = |path: &str| {
        entry(&listing, path).unwrap_or_else(|| panic!("{path} not in the package:\n{listing}"))
    };

    let (mode, owner, _) = has("./usr/sbin/mailer");
    assert_eq!(mode, "-rwxr-xr-x");
    assert!(["root/root", "0/0"].contains(&owner.as_str()), "{owner}");
    for (link, target) in [
        ("./usr/sbin/sendmail", "mailer"),
        ("./usr/bin/mailq", "../sbin/mailer"),
        ("./usr/bin/newaliases", "../sbin/mailer"),
    ] {
        let (mode, _, name) = has(link);
        assert!(mode.starts_with('l'), "{link} is a link: {mode}");
        assert_eq!(name, format!("{link} -> {target}"));
    }
    let unit = [
        "./lib/systemd/system/mailer.service",
        "./usr/lib/systemd/system/mailer.service",
    ]
    .into_iter()
    .find(|p| entry(&listing, p).is_some())
    .unwrap_or_else(|| panic!("no systemd unit:\n{listing}"));
    assert_eq!(has(unit).0, "-rw-r--r--");
    assert_eq!(has("./etc/mailer/mailer.toml").0, "-rw-r--r--");
    for page in [
        "./usr/share/man/man8/mailer.8.gz",
        "./usr/share/man/man8/mailer-queue.8.gz",
        "./usr/share/man/man8/mailer-newaliases.8.gz",
        "./usr/share/man/man5/mailer.toml.5.gz",
        "./usr/share/man/man8/sendmail.8.gz",
        "./usr/share/man/man8/mailq.8.gz",
        "./usr/share/man/man8/newaliases.8.gz",
        "./usr/share/doc/mailer/changelog.Debian.gz",
        "./usr/share/bash-completion/completions/mailer",
        "./usr/share/zsh/vendor-completions/_mailer",
        "./usr/share/fish/vendor_completions.d/mailer.fish",
        "./usr/lib/tmpfiles.d/mailer.conf",
        "./usr/share/doc/mailer/README.md",
        "./usr/share/doc/mailer/copyright",
    ] {
        has(page);
    }

    // The control fields that make it a mail-transport-agent, as Postfix and OpenSMTPD are.
    for field in ["Provides", "Conflicts", "Replaces"] {
        let value = dpkg_deb(&["-f"], &deb);
        let line = value
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field}:\n{value}"));
        assert!(line.contains("mail-transport-agent"), "{line}");
    }
    assert_eq!(
        dpkg_deb(&["-f"], &deb)
            .lines()
            .find(|l| l.starts_with("Package:")),
        Some("Package: mailer")
    );

    // Maintainer scripts: the conffile, the user and directories, the unit's enabling.
    let control = dir.path().join("control");
    let out = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(&control)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let conffiles = fs::read_to_string(control.join("conffiles")).unwrap();
    assert!(
        conffiles.lines().any(|l| l == "/etc/mailer/mailer.toml"),
        "{conffiles}"
    );
    let postinst = fs::read_to_string(control.join("postinst")).unwrap();
    for want in [
        "useradd --system",
        "install -d -o mailer -g mailer -m 0711 /var/spool/mailer",
        "install -d -o root -g mail -m 2775 /var/mail",
        "deb-systemd-helper",
    ] {
        assert!(
            postinst.contains(want),
            "postinst lacks {want:?}:\n{postinst}"
        );
    }
    assert!(!postinst.contains("#DEBHELPER#"), "{postinst}");
    let postrm = fs::read_to_string(control.join("postrm")).unwrap();
    assert!(postrm.contains("rm -rf /var/spool/mailer"), "{postrm}");
    for script in ["postinst", "postrm", "prerm"] {
        let path = control.join(script);
        if !path.exists() {
            continue;
        }
        let out = Command::new("sh").arg("-n").arg(&path).output().unwrap();
        assert!(out.status.success(), "{script}: {}", text(&out));
    }

    // The packaged configuration is valid as shipped (files it names aside: /etc/aliases is
    // made by postinst), and routes local mail without relaying anything.
    let shipped = fs::read_to_string(format!("{REPO}/debian/mailer.toml")).unwrap();
    assert!(shipped.contains("user = \"mailer\""));
    assert!(shipped.contains("mbox = \"/var/mail/%u\""));
}
