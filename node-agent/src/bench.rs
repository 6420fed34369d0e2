//! `ringmaster-agent bench`: random reads through the pool.

#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

pub fn run(_a: BenchArgs) -> i32 {
    2
}
