//! The `shardlog` broker binary.

use std::path::PathBuf;

use clap::Parser;
use shardlog::config::{self, BrokerConfig};

/// A Kafka-wire-compatible event streaming broker: one pinned io_uring
/// executor per core, each owning its partitions.
///
/// Configuration uses Kafka's names and defaults (num.partitions,
/// auto.create.topics.enable, log.segment.bytes, log.retention.ms,
/// log.retention.bytes, socket.request.max.bytes, message.max.bytes,
/// log.flush.interval.messages, ...), from a TOML file and --set overrides.
/// Flags win over --set, which wins over the file.
#[derive(Parser, Debug)]
#[command(name = "shardlog", version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML file of Kafka-named settings, e.g. `num.partitions = 6`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address of the Kafka listener [default: 127.0.0.1:9092].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Where partitions and metadata live [default: ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Executors (one pinned per core by default).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Any Kafka-named setting, repeatable: --set log.segment.bytes=1048576.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Check this host against what the broker needs (and `--apply` fixes).
    Tune(shardlog::tune::TuneArgs),
}

fn main() {
    let args = Args::parse();
    if let Some(Command::Tune(tune)) = args.command {
        std::process::exit(shardlog::tune::run(tune));
    }
    let overrides = match args
        .set
        .iter()
        .map(|s| config::parse_override(s))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(overrides) => overrides,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    shardlog::logging::init(config::peek_log_format(args.config.as_deref(), &overrides));
    if let Err(e) = run(args, overrides) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args, mut overrides: Vec<(String, String)>) -> anyhow::Result<()> {
    if let Some(dir) = args.data_dir {
        overrides.push(("log.dirs".into(), dir.display().to_string()));
    }
    let mut broker = BrokerConfig::load(args.config.as_deref(), &overrides)?;
    // `--listen` is the PLAINTEXT shorthand: it leaves a CONTROLLER listener alone.
    if let Some(listen) = args.listen {
        let addr = config::resolve_listen(&listen)?;
        broker.set_plaintext_listener(addr);
    }
    if let Some(n) = args.shards {
        anyhow::ensure!(n > 0, "--shards must be at least 1");
        broker.shards = n;
    }
    let open_files_max = raise_open_files_limit();
    let needed = broker.descriptors_needed();
    if open_files_max.is_some_and(|max| needed > max) {
        tracing::warn!(
            "log.fd.cache.size ({}) x 2 (cached files, zero-copy slices) x {} shards + max.connections ({}) + {} \
             for the rest need {needed} \
             file descriptors under full load, above the open-files limit ({}): opens would fail \
             with EMFILE; raise the limit (ulimit -n, systemd LimitNOFILE) or lower those settings",
            broker.log_fd_cache_size,
            broker.shards,
            broker.max_connections,
            broker.descriptors_reserved(),
            open_files_max.unwrap_or_default(),
        );
    }
    shardlog::server::run(broker)
}

/// Raises the soft open-files limit to the hard one, as Kafka's deployment
/// guides ask of operators: partitions, segments and connections all use
/// descriptors (bounded by `log.fd.cache.size` and `max.connections`).
/// Returns the soft limit in force afterwards (None if it cannot be read).
fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let soft = limit.rlim_cur;
            let mut raised = limit;
            raised.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                tracing::info!("open files limit raised from {soft} to {}", raised.rlim_cur);
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}
