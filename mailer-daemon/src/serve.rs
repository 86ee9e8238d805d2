//! `mailer serve`: wiring of the daemon, signals, reload and shutdown.
//!
//! SIGHUP (or `mailer reload`) re-reads the configuration, aliases and secrets; a new
//! configuration that does not load is refused and the running one kept. SIGTERM/SIGINT stop
//! accepting (new connections get `421`), let sessions and deliveries in flight finish
//! within `shutdown_grace`, and exit 0. Under systemd (`Type=notify`) the daemon reports its
//! state over `$NOTIFY_SOCKET`, and takes its listening sockets from systemd when socket
//! activation passes them (`LISTEN_FDS`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use mailer_core::config::Config;
use mailer_core::intake::reply::replies;
use mailer_core::intake::SessionConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::control::ReloadRequest;
use mailer_core::check::CheckInput;

use crate::engine::Engine;
use crate::logging;
use crate::smtp::{self, Intake};

#[derive(clap::Args)]
pub struct Args {
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: logging::Format,
}

/// Where the configuration comes from, to read it again on reload.
#[derive(Clone)]
enum Source {
    Embedded,
    File(PathBuf),
}

impl Source {
    fn load(&self) -> Result<Config, String> {
        match self {
            Source::Embedded => Ok(Config::embedded_default()),
            Source::File(path) => Config::load(path).map_err(|diagnostics| {
                diagnostics
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
        }
    }
}

pub fn main(config_path: Option<&Path>, args: Args) -> ExitCode {
    let (config, source) = if crate::embedded() {
        (Config::embedded_default(), Source::Embedded)
    } else {
        let path = crate::config_path(config_path);
        if config_path.is_none() && !path.exists() {
            eprintln!(
                "mailer: no configuration at {}: give one with --config FILE (see config/mailer.toml), \
                 or try the built-in one with `mailer serve --embedded`",
                path.display()
            );
            return ExitCode::from(2);
        }
        match crate::load_config(config_path) {
            Ok(c) => (c, Source::File(path.to_path_buf())),
            Err(code) => return code,
        }
    };
    run(config, source, args.log_format)
}

fn run(config: Config, source: Source, log_format: logging::Format) -> ExitCode {
    let log_level = logging::init(&config.log.level, log_format);
    keep_large_buffers_out_of_the_heap();
    // Before any other thread exists: this clears the LISTEN_* variables.
    let mut inherited = activation::inherited();
    // Also before: credentials are per thread, and the runtime's workers inherit them.
    let opened = match crate::privileges::settle(&config, &mut inherited) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!("{e}");
            notify::send(&format!("STATUS=failed: {e}"));
            eprintln!("mailer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mailer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, source, inherited, opened, log_level)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            notify::send(&format!("STATUS=failed: {e}"));
            eprintln!("mailer: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A listening socket and the task accepting on it.
struct Bound {
    /// Kept open for the daemon's life: the accept task works on a duplicate, so the task
    /// can be replaced (on reload) without closing the port, and the port can answer 421
    /// during shutdown.
    socket: std::net::TcpListener,
    task: JoinHandle<()>,
}

/// What a new configuration's listeners need, made ready before anything changes.
struct Prepared {
    fresh: HashMap<SocketAddr, std::net::TcpListener>,
    acceptors: HashMap<SocketAddr, tokio_rustls::TlsAcceptor>,
}

/// The SMTP listeners, keyed by address.
struct Listeners {
    bound: HashMap<SocketAddr, Bound>,
    /// Sockets passed by systemd, not yet claimed by a `[[listen]]` entry.
    inherited: HashMap<SocketAddr, std::net::TcpListener>,
    connections: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

impl Listeners {
    /// Binds the sockets `config` needs and does not have yet and loads the certificates of
    /// its listeners. Nothing changes on error (an inherited socket stays claimed).
    fn prepare(&mut self, config: &Config) -> Result<Prepared, String> {
        let mut acceptors = HashMap::new();
        for listen in &config.listen {
            if let Some(tls) = &listen.tls {
                acceptors.insert(
                    listen.address,
                    crate::engine::tls_acceptor(&tls.cert, &tls.key)?,
                );
            }
        }
        let mut fresh = HashMap::new();
        for listen in &config.listen {
            if self.bound.contains_key(&listen.address) || fresh.contains_key(&listen.address) {
                continue;
            }
            let socket = match self.inherited.remove(&listen.address) {
                Some(s) => s,
                None => std::net::TcpListener::bind(listen.address)
                    .map_err(|e| format!("cannot listen on {}: {e}", listen.address))?,
            };
            socket
                .set_nonblocking(true)
                .map_err(|e| format!("cannot listen on {}: {e}", listen.address))?;
            fresh.insert(listen.address, socket);
        }
        Ok(Prepared { fresh, acceptors })
    }

    /// Makes the listeners match `config`: new ones start, removed ones close, kept ones
    /// take the new routing and TLS settings. Sessions in flight keep theirs.
    fn apply(
        &mut self,
        config: &Config,
        engine: &Arc<Engine>,
        prepared: Prepared,
    ) -> Result<(), String> {
        let Prepared {
            mut fresh,
            mut acceptors,
        } = prepared;
        let wanted: Vec<SocketAddr> = config.listen.iter().map(|l| l.address).collect();
        self.bound.retain(|addr, b| {
            if wanted.contains(addr) {
                return true;
            }
            b.task.abort();
            tracing::info!(address = %addr, "stopped listening");
            false
        });
        for listen in &config.listen {
            let tls = acceptors.remove(&listen.address);
            let (socket, old) = match (
                fresh.remove(&listen.address),
                self.bound.remove(&listen.address),
            ) {
                (Some(s), _) => (s, None),
                (None, Some(b)) => (b.socket, Some(b.task)),
                (None, None) => continue,
            };
            let listener = socket
                .try_clone()
                .and_then(TcpListener::from_std)
                .map_err(|e| format!("cannot listen on {}: {e}", listen.address))?;
            if let Some(task) = old {
                // Pending connections wait in the kernel's backlog for the new task.
                task.abort();
            } else {
                tracing::info!(address = %listen.address, starttls = tls.is_some(), "listening");
            }
            let intake = Arc::new(self.intake(config, tls.is_some(), engine));
            let task = tokio::spawn(smtp::listen(listener, tls, intake));
            self.bound.insert(listen.address, Bound { socket, task });
        }
        Ok(())
    }

    fn intake(&self, config: &Config, starttls: bool, engine: &Arc<Engine>) -> Intake {
        Intake {
            session: Arc::new(SessionConfig::new(config, starttls)),
            router: engine.router(),
            engine: engine.clone(),
            connections: self.connections.clone(),
            idle_timeout: config.limits.idle_timeout,
            shutdown: self.shutdown.clone(),
        }
    }

    /// Answers `421` to every new connection until `done` flips: clients hear that the
    /// service is stopping instead of a refused connection.
    fn refuse_new(&self, done: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let reply = replies::shutting_down().to_bytes();
        self.bound
            .values()
            .filter_map(|b| b.socket.try_clone().and_then(TcpListener::from_std).ok())
            .map(|listener| {
                let reply = reply.clone();
                let mut done = done.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            r = listener.accept() => {
                                if let Ok((mut stream, _)) = r {
                                    let _ = stream.write_all(&reply).await;
                                    let _ = stream.shutdown().await;
                                }
                            }
                            _ = done.changed() => break,
                        }
                    }
                })
            })
            .collect()
    }
}

/// The metrics endpoint and the means to stop it.
struct MetricsServer {
    address: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// `opened`: the endpoint's socket, bound before the daemon gave up root.
async fn start_metrics(
    address: SocketAddr,
    opened: Option<std::net::TcpListener>,
    engine: &Arc<Engine>,
) -> Result<MetricsServer, String> {
    let listener = match opened {
        Some(socket) => TcpListener::from_std(socket),
        None => TcpListener::bind(address).await,
    }
    .map_err(|e| format!("cannot serve metrics on {address}: {e}"))?;
    let (stop, stopped) = watch::channel(false);
    let source = engine.clone();
    let snapshot: crate::metrics::SnapshotSource = Arc::new(move || source.snapshot());
    let task = tokio::spawn(crate::metrics::serve(
        listener,
        engine.metrics_handle(),
        snapshot,
        stopped,
    ));
    tracing::info!(%address, "metrics endpoint");
    Ok(MetricsServer {
        address,
        stop,
        task,
    })
}

async fn serve(
    config: Config,
    source: Source,
    inherited: HashMap<SocketAddr, std::net::TcpListener>,
    opened: crate::privileges::Opened,
    log_level: logging::Level,
) -> Result<(), String> {
    // Handlers first: a SIGHUP right after READY must reload, not kill.
    let mut signals = Signals::new();
    let (shutdown_tx, shutdown) = watch::channel(false);
    let engine = Engine::start(&config, shutdown.clone()).await?;

    // The control socket is bound before the SMTP listeners open, so that whoever sees the
    // port answer (an admin, a test, a readiness probe) can also reach `mailer queue`.
    let control_listener = match opened.control {
        Some(socket) => tokio::net::UnixListener::from_std(socket),
        None => crate::control::bind(&config.control_socket),
    }
    .map_err(|e| {
        format!(
            "cannot open the control socket {}: {e}",
            config.control_socket.display()
        )
    })?;
    let mut listeners = Listeners {
        bound: HashMap::new(),
        inherited,
        connections: Arc::new(Semaphore::new(config.limits.max_connections)),
        shutdown: shutdown.clone(),
    };
    let prepared = listeners.prepare(&config)?;
    listeners.apply(&config, &engine, prepared)?;
    for addr in listeners.inherited.keys() {
        tracing::warn!(address = %addr, "socket passed by systemd matches no [[listen]] entry; closed");
    }
    listeners.inherited.clear();

    // Local submissions (the socket, and what sendmail kept in offline/ while nobody
    // answered) take the settings of the configuration in effect.
    let (local_intake, local_intakes) =
        watch::channel(Arc::new(listeners.intake(&config, false, &engine)));
    let submit_socket = mailer_core::queue::Spool::submit_socket_in(&config.queue_dir);
    let submissions = smtp::bind_local(&submit_socket).map_err(|e| {
        format!(
            "cannot open the submission socket {}: {e}",
            submit_socket.display()
        )
    })?;
    let submissions = tokio::spawn(smtp::listen_local(submissions, local_intakes.clone()));
    tokio::spawn(crate::offline::run(
        engine.clone(),
        local_intakes,
        shutdown.clone(),
    ));

    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let control = tokio::spawn(crate::control::serve(
        control_listener,
        config.control_socket.clone(),
        engine.clone(),
        reload_tx,
        shutdown.clone(),
    ));
    let mut metrics = match &config.metrics {
        Some(m) => Some(start_metrics(m.address, opened.metrics, &engine).await?),
        None => None,
    };

    match (config.check.interval, CheckInput::from_config(&config)) {
        (Some(interval), Some(input)) => {
            tokio::spawn(crate::watch::run(
                input,
                interval,
                engine.metrics_handle(),
                shutdown.clone(),
            ));
        }
        (Some(_), None) => {
            tracing::debug!("no relay action rewrites the sender: no deliverability watch")
        }
        (None, _) => {}
    }
    if let Some(interval) = config.check.interval {
        let plans = mailer_core::delivery::Tables::load(&config)
            .map_err(|e| e.join("; "))
            .and_then(|tables| mailer_core::check::probe::plan(&config, &tables));
        match plans {
            Ok(plans) if !plans.is_empty() => {
                tokio::spawn(crate::watch::run_probe(
                    plans,
                    interval,
                    engine.metrics_handle(),
                    shutdown.clone(),
                ));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "relay pool probe not started"),
        }
    }

    let mut running = config;
    notify::send(&format!("READY=1\nSTATUS={}", status(&running)));
    loop {
        let reply = tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop => break,
                Signal::Reload => None,
            },
            request = reload_rx.recv() => request,
        };
        notify::send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            notify::monotonic_usec()
        ));
        let result = reload(&source, &mut running, &engine, &mut listeners, &mut metrics).await;
        match &result {
            Ok(summary) => {
                engine
                    .metrics()
                    .reloads
                    .get_or_create(&outcome("applied"))
                    .inc();
                local_intake.send_replace(Arc::new(listeners.intake(&running, false, &engine)));
                if let Err(e) = log_level.set(&running.log.level) {
                    tracing::warn!("log level not changed: {e}");
                }
                tracing::info!("configuration reloaded: {summary}");
            }
            Err(e) => {
                engine
                    .metrics()
                    .reloads
                    .get_or_create(&outcome("refused"))
                    .inc();
                tracing::error!("reload refused, running configuration kept: {e}");
            }
        }
        notify::send(&format!("READY=1\nSTATUS={}", status(&running)));
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    tracing::info!("stopping: no new sessions; finishing those in flight");
    notify::send("STOPPING=1\nSTATUS=stopping: finishing sessions and deliveries in flight");
    let _ = shutdown_tx.send(true);
    let (refusing_done, refusing) = watch::channel(false);
    let refusers = listeners.refuse_new(refusing);
    for (_, b) in listeners.bound.drain() {
        let _ = b.task.await;
    }
    let _ = submissions.await;
    let _ = control.await;
    if let Some(m) = metrics.take() {
        let _ = m.stop.send(true);
        let _ = m.task.await;
    }
    let grace = running.limits.shutdown_grace;
    // Sessions hold a connection permit each: all permits back means all sessions ended.
    let sessions_done = tokio::time::timeout(
        grace,
        listeners
            .connections
            .acquire_many(running.limits.max_connections as u32),
    )
    .await
    .is_ok();
    let deliveries_done = engine.drain(grace).await;
    let _ = refusing_done.send(true);
    for r in refusers {
        let _ = r.await;
    }
    if !sessions_done || !deliveries_done {
        tracing::warn!(
            "shutdown grace of {}s over; exiting with work in flight (queued mail is safe)",
            grace.as_secs()
        );
    }
    tracing::info!("stopped");
    Ok(())
}

fn outcome(outcome: &str) -> crate::metrics::Outcome {
    crate::metrics::Outcome {
        outcome: outcome.to_string(),
    }
}

/// One line for `systemctl status`.
fn status(config: &Config) -> String {
    let addresses: Vec<String> = config
        .listen
        .iter()
        .map(|l| l.address.to_string())
        .collect();
    format!("accepting mail on {}", addresses.join(", "))
}

/// Reads the configuration again and applies it; on any error the running one stays whole.
async fn reload(
    source: &Source,
    running: &mut Config,
    engine: &Arc<Engine>,
    listeners: &mut Listeners,
    metrics: &mut Option<MetricsServer>,
) -> Result<String, String> {
    let config = source.load()?;
    // New sockets and certificates are ready before anything changes: a busy port or a bad
    // certificate refuses the reload.
    let prepared = listeners.prepare(&config)?;
    engine.reload(&config)?;
    listeners.apply(&config, engine, prepared)?;
    let wanted_metrics = config.metrics.as_ref().map(|m| m.address);
    let metrics_changed = metrics.as_ref().map(|m| m.address) != wanted_metrics;
    if metrics_changed {
        // The old endpoint closes first: a reload may keep the address but it must be free.
        if let Some(m) = metrics.take() {
            let _ = m.stop.send(true);
            let _ = m.task.await;
        }
    }
    let started = match wanted_metrics {
        Some(address) if metrics_changed => Some(start_metrics(address, None, engine).await),
        _ => None,
    };
    match started {
        Some(Ok(m)) => *metrics = Some(m),
        Some(Err(e)) => tracing::error!("{e}"),
        None => {}
    }
    if config.user != running.user {
        tracing::warn!("user changed; it takes effect at the next start");
    }
    if config.control_socket != running.control_socket {
        tracing::warn!("control_socket changed; the new path takes effect at the next start");
    }
    if config.limits.max_connections != running.limits.max_connections {
        tracing::warn!("limits.max_connections changed; it takes effect at the next start");
    }
    let summary = format!(
        "{} listener(s), {} action(s), {} rule(s)",
        config.listen.len(),
        config.actions.len(),
        config.matches.len()
    );
    *running = config;
    Ok(summary)
}

/// SIGTERM/SIGINT stop, SIGHUP reloads.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    async fn next(&mut self) -> Signal {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.term) => Signal::Stop,
            _ = recv(&mut self.int) => Signal::Stop,
            _ = recv(&mut self.hup) => Signal::Reload,
        }
    }
}

enum Signal {
    Stop,
    Reload,
}

/// sd_notify(3): state reports to systemd over the datagram socket in `$NOTIFY_SOCKET`.
mod notify {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    /// Sends `state` (newline-separated `KEY=value` lines); does nothing outside systemd.
    pub fn send(state: &str) {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        let bytes = path.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            // A leading '@' names a socket in the abstract namespace.
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(&path),
        };
        let result = addr.and_then(|addr| {
            let socket = UnixDatagram::unbound()?;
            socket.send_to_addr(state.as_bytes(), &addr)
        });
        if let Err(e) = result {
            tracing::debug!(error = %e, "cannot notify systemd");
        }
    }

    /// CLOCK_MONOTONIC in microseconds, as `RELOADING=1` wants it beside (Type=notify-reload).
    pub fn monotonic_usec() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
    }
}

/// systemd socket activation (sd_listen_fds(3)): listening TCP sockets passed as fds 3…
mod activation {
    use std::collections::HashMap;
    use std::net::{SocketAddr, TcpListener};
    use std::os::fd::FromRawFd;

    const FIRST_FD: i32 = 3;

    /// The TCP sockets systemd passed to this process, by local address.
    pub fn inherited() -> HashMap<SocketAddr, TcpListener> {
        let mut found = HashMap::new();
        let pid_matches = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|p| p == std::process::id());
        let count = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse::<i32>().ok())
            .unwrap_or(0);
        // Children must not inherit them a second time.
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
        if !pid_matches {
            return found;
        }
        for fd in FIRST_FD..FIRST_FD + count.clamp(0, 64) {
            // SAFETY: systemd hands these fds to this process alone (LISTEN_PID matched);
            // each is wrapped once and owned from here on.
            let socket = unsafe { TcpListener::from_raw_fd(fd) };
            // SAFETY: fcntl on an fd we own; FD_CLOEXEC keeps it from leaking into children.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            match socket.local_addr() {
                Ok(addr) if addr.is_ipv4() || addr.is_ipv6() => {
                    tracing::info!(address = %addr, "listening socket passed by systemd");
                    found.insert(addr, socket);
                }
                _ => tracing::warn!(fd, "fd passed by systemd is not a TCP socket; ignored"),
            }
        }
        found
    }
}

/// Message bodies (up to `max_message_size`) are allocated and freed all the time. glibc
/// raises its mmap threshold after each large free, after which such buffers come from the
/// heap arenas and stay with the process; a fixed threshold keeps them mmapped, so memory
/// goes back to the system as soon as a message is on disk or delivered.
fn keep_large_buffers_out_of_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}
