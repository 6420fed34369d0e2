//! `ringmaster-agent tune`: raise fs.aio-max-nr safely.

#[derive(clap::Args, Debug)]
pub struct TuneArgs {}

pub fn run(_a: TuneArgs) -> i32 {
    2
}
