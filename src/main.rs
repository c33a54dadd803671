//! `skiff`: a Kubernetes-compatible node in one binary.

mod bench;
mod cidr;
mod cli;
mod kubeconfig;
mod server;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    // `skiff shim` starts containers with fork/clone, which is only sound in a single-threaded
    // process: dispatch it before clap, tokio or anything else can start a thread.
    let mut argv = std::env::args();
    if argv.nth(1).as_deref() == Some("shim") {
        skiff_runtime::shim_main(argv.collect());
    }

    // Only ring is compiled in; installing it explicitly keeps TLS working whatever else
    // enables a provider later.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            cli::version::run();
            ExitCode::SUCCESS
        }
        Command::Shim { args } => skiff_runtime::shim_main(args),
        Command::Images(args) => report(cli::image::run_images(args)),
        Command::Image(args) => report(cli::image::run(args)),
        Command::Pull(args) => report(cli::image::run_pull(args)),
        Command::Bench(args) => report(cli::bench::run(args)),
        Command::Server(args) => {
            init_logging();
            let result = args.resolve().and_then(|config| {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("skiff")
                    .build()
                    .map_err(anyhow::Error::from)?;
                runtime.block_on(server::run(config))
            });
            report(result)
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: log files and CI output stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}
