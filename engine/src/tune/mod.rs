//! `shardlog tune`: host checks against what the broker needs (see README.md).

/// `shardlog tune` flags.
#[derive(clap::Args, Debug)]
pub struct TuneArgs {}

/// Runs the checks; returns the process exit code.
pub fn run(_args: TuneArgs) -> i32 {
    eprintln!("shardlog tune: not built yet");
    2
}
