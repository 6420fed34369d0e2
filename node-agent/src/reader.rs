//! `ringmaster-agent reader`: the unprivileged reader process.

#[derive(clap::Args, Debug)]
pub struct ReaderArgs {}

pub fn run(_a: ReaderArgs) -> i32 {
    2
}
