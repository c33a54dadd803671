//! The `skiff` command line: one file per verb.

pub mod bench;
pub mod image;
pub mod server;
pub mod version;

use clap::{Parser, Subcommand};

/// Skiff: a Kubernetes-compatible node in one binary.
#[derive(Debug, Parser)]
#[command(name = "skiff", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API server, scheduler, kubelet and container runtime (as root).
    Server(server::ServerArgs),
    /// Print the versions of Skiff and of the Kubernetes API it serves.
    Version,
    /// List the node's images (`docker images`).
    Images(image::ImagesArgs),
    /// Manage the node's images: pull, import, ls, rm, tag, prune.
    Image(image::ImageArgs),
    /// Pull an image into the node's image store (`docker pull`; as `skiff image pull`).
    Pull(image::PullCommandArgs),
    /// Measure Skiff against peers on this machine (`skiff bench runtime`).
    Bench(bench::BenchArgs),
    /// Internal: the runtime re-executes `skiff shim …` to start and watch each container.
    /// `main` dispatches it before any thread exists; clap only knows it for `--help` hygiene.
    #[command(hide = true)]
    Shim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}
