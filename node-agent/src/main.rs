//! `ringmaster-agent`: prepares a node for io_uring storage and runs the read path.
//!
//! Subcommands:
//! - `check`  diagnose this host (no cluster needed), text or JSON; exit 0 ready, 1 not, 2 error
//! - `tune`   raise `fs.aio-max-nr` safely (never lowers; `--restore` puts back the original)
//! - `serve`  the HTTP range-read service over the io_uring (or pread) worker pool
//! - `bench`  random reads through the worker pool
//! - `reader` the unprivileged reader container: probe + workers + HTTP, config from the state dir
//! - `run`    the privileged node agent in a cluster: tune, report StorageNode, label the Node

use clap::{Parser, Subcommand};

use ringmaster_agent::{bench, check, cluster, reader, serve, tune};

#[derive(Parser)]
#[command(
    name = "ringmaster-agent",
    version,
    about = "Ringmaster node agent: io_uring readiness, aio tuning, read workers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Diagnose this host: io_uring, libaio, sysctls, limits. Exit 0 ready, 1 not ready, 2 error.
    Check(check::CheckArgs),
    /// Raise fs.aio-max-nr to what the read workers need (never lowers it).
    Tune(tune::TuneArgs),
    /// Serve HTTP range reads from data dirs through the worker pool.
    Serve(serve::ServeArgs),
    /// Benchmark random reads through the worker pool.
    Bench(bench::BenchArgs),
    /// Unprivileged reader: probe io_uring, run workers and the read service (config from the state dir).
    Reader(reader::ReaderArgs),
    /// Privileged node agent in a cluster: tune, report, label.
    Run(cluster::RunArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check(a) => check::run(a),
        Command::Tune(a) => tune::run(a),
        Command::Serve(a) => {
            raise_nofile_soft_limit();
            serve::run(a)
        }
        Command::Bench(a) => bench::run(a),
        Command::Reader(a) => {
            raise_nofile_soft_limit();
            reader::run(a)
        }
        Command::Run(a) => cluster::run(a),
    };
    std::process::exit(code);
}

/// The read service holds an fd per connection and per cached open file, and the container
/// runtime's soft RLIMIT_NOFILE (often 1024) would cut its defaults (1024 connections plus
/// 1024 cached files) short. Raise the soft limit to the hard one, as Go's runtime does at
/// start; the hard limit, the runtime's ceiling, stays.
fn raise_nofile_soft_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (lim.current, lim.maximum) {
        if soft < hard {
            let raised = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                eprintln!("warning: cannot raise RLIMIT_NOFILE from {soft} to {hard}: {e}");
            }
        }
    }
}
