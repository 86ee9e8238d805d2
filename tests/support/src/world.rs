//! A relay test's world: a test certificate authority, a private secrets file, a directory
//! for the daemon, and upstreams that require STARTTLS and then AUTH, as the real smarthost.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::certs::TestCa;
use crate::config::TestConfig;
use crate::daemon::free_port;
use crate::sink::{Sink, SinkOptions};

/// The label of the credentials in the secrets file, as relay URLs name it.
pub const LABEL: &str = "papmx";

pub struct RelayWorld {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    /// The CA's certificate, for the daemon's `ca_file`.
    pub ca_file: PathBuf,
    /// `papmx USER:PASSWORD`, mode 0600.
    pub secrets: PathBuf,
    user: String,
    password: String,
}

impl RelayWorld {
    pub fn new(user: &str, password: &str) -> RelayWorld {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = TestCa::new();
        let ca_file = ca.write_pem_file(dir.path());
        let secrets = dir.path().join("secrets");
        fs::write(
            &secrets,
            format!("# relay credentials\n{LABEL} {user}:{password}\n"),
        )
        .expect("write the secrets");
        fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600))
            .expect("chmod the secrets");
        RelayWorld {
            dir,
            ca,
            ca_file,
            secrets,
            user: user.into(),
            password: password.into(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's `queue_dir` in [`RelayWorld::config`].
    pub fn queue_dir(&self) -> PathBuf {
        self.path().join("queue")
    }

    /// An upstream with a certificate for 127.0.0.1 from the test CA, requiring STARTTLS and
    /// then AUTH with the world's credentials; `tweak` adjusts it.
    pub async fn upstream(&self, tweak: impl FnOnce(&mut SinkOptions)) -> Sink {
        let mut options = SinkOptions {
            tls: Some(self.ca.issue(&["127.0.0.1"])),
            require_tls: true,
            auth: Some((self.user.clone(), self.password.clone())),
            ..SinkOptions::default()
        };
        tweak(&mut options);
        Sink::start(options).await
    }

    /// `mx.ublog.tech` relaying everything to `ports` (a pool) with the `@ublog.tech`
    /// rewrite, connecting within 5 s, waiting `command_timeout` (e.g. `10s`) for each reply,
    /// retrying every second or two.
    pub fn config(&self, ports: &[u16], command_timeout: &str) -> TestConfig {
        TestConfig::new(self.path(), free_port())
            .hostname("mx.ublog.tech")
            .local_domains(&["localhost"])
            .relay_to(LABEL, ports, &self.secrets, &self.ca_file)
            .mail_from("@ublog.tech")
            .action_lines(
                "outbound",
                &format!("connect_timeout = \"5s\"\ncommand_timeout = \"{command_timeout}\""),
            )
            .retry("1s", "2s")
            .warn_and_expire("1h", "2h")
    }
}
