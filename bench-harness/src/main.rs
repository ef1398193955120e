//! `shardlog-bench`: load generator and capacity planner (issue 5; not built yet).

fn main() {
    eprintln!("shardlog-bench is not built yet (issue 5); use scripts/bench.sh for end-to-end numbers");
    std::process::exit(2);
}
