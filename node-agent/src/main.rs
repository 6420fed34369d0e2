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
        Command::Serve(a) => serve::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Reader(a) => reader::run(a),
        Command::Run(a) => cluster::run(a),
    };
    std::process::exit(code);
}
