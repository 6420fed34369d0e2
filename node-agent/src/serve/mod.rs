//! `ringmaster-agent serve`: HTTP range reads over the worker pool.

#[derive(clap::Args, Debug)]
pub struct ServeArgs {}

pub fn run(_a: ServeArgs) -> i32 {
    2
}
