//! `ringmaster-agent check`: diagnose this host.

#[derive(clap::Args, Debug)]
pub struct CheckArgs {}

pub fn run(_a: CheckArgs) -> i32 {
    2
}
