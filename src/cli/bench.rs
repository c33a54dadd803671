//! `skiff bench`: measurements printed against peers run on the same machine in the same run.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub target: BenchTarget,
}

#[derive(Debug, Subcommand)]
pub enum BenchTarget {
    /// Container create+start+wait+delete against runc and crun (interleaved), then pod start
    /// latency through a temporary `skiff server` (as root; cleans up after itself).
    Runtime(RuntimeArgs),
}

#[derive(Debug, Args)]
pub struct RuntimeArgs {
    /// Container cycles per runtime (0 skips the container part).
    #[arg(long, default_value_t = 50)]
    pub iterations: usize,
    /// Pods started one at a time and then as many in a burst (0 skips the pod part).
    #[arg(long, default_value_t = 100)]
    pub pods: usize,
    /// Where the bench's scratch directory (state, bundle, server data) is made.
    #[arg(long, default_value = "/tmp")]
    pub work_dir: PathBuf,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("skiff-bench").build()?;
    match args.target {
        BenchTarget::Runtime(a) => runtime.block_on(crate::bench::runtime(crate::bench::RuntimeBench {
            iterations: a.iterations,
            pods: a.pods,
            work_dir: a.work_dir,
        })),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn bench_runtime_takes_iterations_pods_and_a_work_dir() {
        let cli = Cli::try_parse_from(["skiff", "bench", "runtime", "--iterations", "7", "--pods", "0"]).unwrap();
        let Command::Bench(BenchArgs { target: BenchTarget::Runtime(a) }) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!((a.iterations, a.pods, a.work_dir), (7, 0, PathBuf::from("/tmp")));
        assert!(Cli::try_parse_from(["skiff", "bench", "runtime", "--iterations", "many"]).is_err());
        assert!(Cli::try_parse_from(["skiff", "bench"]).is_err(), "a target is required");
    }
}
