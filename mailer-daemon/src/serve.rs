//! `mailer serve`: wiring of the daemon, signals and shutdown.

use std::process::ExitCode;
use std::sync::Arc;

use mailer_core::config::Config;
use mailer_core::intake::SessionConfig;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};

use crate::engine::Engine;
use crate::logging;
use crate::smtp::{self, Intake};

#[derive(clap::Args)]
pub struct Args {
    /// Use the built-in configuration (127.0.0.1:2525, state under ./mailer-state).
    #[arg(long)]
    embedded: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: logging::Format,
}

pub fn main(config_path: Option<&std::path::Path>, args: Args) -> ExitCode {
    let config = if args.embedded {
        Config::embedded_default()
    } else {
        match crate::load_config(config_path) {
            Ok(c) => c,
            Err(code) => return code,
        }
    };
    run(config, args.log_format)
}

fn run(config: Config, log_format: logging::Format) -> ExitCode {
    logging::init(&config.log.level, log_format);
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
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("mailer: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let problems = crate::engine::check_files(&config);
    if !problems.is_empty() {
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        return Err(format!("invalid configuration:\n{}", text.join("\n")));
    }
    let (shutdown_tx, shutdown) = watch::channel(false);
    let engine = Engine::start(&config, shutdown.clone()).await?;

    let session = Arc::new(SessionConfig {
        hostname: config.hostname.clone(),
        max_message_size: config.limits.max_message_size as usize,
        max_recipients: config.limits.max_recipients,
        max_line_length: config.limits.max_line_length,
        bare_newlines: config.limits.bare_newlines,
        starttls: false,
    });
    let connections = Arc::new(Semaphore::new(config.limits.max_connections));
    let mut listeners = Vec::new();
    for listen in &config.listen {
        let listener = TcpListener::bind(listen.address)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", listen.address))?;
        let tls = match &listen.tls {
            Some(tls) => Some(crate::engine::tls_acceptor(&tls.cert, &tls.key)?),
            None => None,
        };
        let intake = Arc::new(Intake {
            session: Arc::new(SessionConfig {
                starttls: tls.is_some(),
                ..(*session).clone()
            }),
            router: engine.router(),
            engine: engine.clone(),
            connections: connections.clone(),
            idle_timeout: config.limits.idle_timeout,
            data_timeout: config.limits.data_timeout,
            shutdown: shutdown.clone(),
        });
        tracing::info!(address = %listen.address, starttls = tls.is_some(), "listening");
        listeners.push(tokio::spawn(smtp::listen(listener, tls, intake)));
    }

    let control = tokio::spawn(crate::control::serve(
        config.control_socket.clone(),
        engine.clone(),
        shutdown.clone(),
    ));
    let metrics = config.metrics.as_ref().map(|m| {
        tokio::spawn(crate::metrics::serve(
            m.address,
            engine.clone(),
            shutdown.clone(),
        ))
    });

    wait_for_signal().await;
    tracing::info!("stopping: no new sessions; finishing those in flight");
    let _ = shutdown_tx.send(true);
    for l in listeners {
        let _ = l.await;
    }
    let _ = control.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    let grace = config.limits.shutdown_grace;
    // Sessions hold a connection permit each: all permits back means all sessions ended.
    let sessions_done = tokio::time::timeout(
        grace,
        connections.acquire_many(config.limits.max_connections as u32),
    )
    .await
    .is_ok();
    let deliveries_done = engine.drain(grace).await;
    if !sessions_done || !deliveries_done {
        tracing::warn!(
            "shutdown grace of {}s over; exiting with work in flight (queued mail is safe)",
            grace.as_secs()
        );
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
