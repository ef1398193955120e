//! `shardlog tune`: host checks against what the broker needs (see README.md).
//!
//! Runs in the `shardlog tune` process only, before or beside a broker,
//! never inside one. `checks` decides (pure), `sysfs` reads and writes the
//! host; this module runs the checks, applies fixes and prints.

pub mod checks;
pub mod sysfs;

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{self, BrokerConfig};
use checks::{Mount, Status, Verdict};
use sysfs::Roots;

/// `shardlog tune` flags.
#[derive(clap::Args, Debug)]
pub struct TuneArgs {
    /// Only report (the default).
    #[arg(long, conflicts_with = "apply")]
    pub check: bool,
    /// Change what can be changed safely (sysctls, THP, I/O scheduler,
    /// nr_requests, CPU governor); idempotent.
    #[arg(long)]
    pub apply: bool,
    /// One JSON document on stdout instead of aligned lines.
    #[arg(long)]
    pub json: bool,
    /// The broker's TOML config file (as `shardlog --config`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Any Kafka-named setting, repeatable (as `shardlog --set`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The broker's data dir [default: the config's log.dirs].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Shards to check for [default: the config's, one per core].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Run only this check (repeatable); names as printed.
    #[arg(long = "only", value_name = "NAME")]
    pub only: Vec<String>,
}

/// Every check, in the order they run and print.
pub const CHECK_NAMES: &[&str] = &[
    "io_uring",
    "memlock",
    "nofile",
    "fs.type",
    "fs.o_direct",
    "block.scheduler",
    "block.nr_requests",
    "thp",
    "vm.swappiness",
    "cpu.governor",
    "clocksource",
    "irq.affinity",
    "net.core.somaxconn",
    "net.core.rmem_max",
    "net.core.wmem_max",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "fs.aio-max-nr",
];

/// One check's line of the report (and element of `checks` in `--json`).
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub name: &'static str,
    pub status: Status,
    pub found: String,
    pub wanted: String,
    pub why: String,
    pub changed: bool,
    /// What was found before `--apply` changed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What to do by hand (limits of the future broker process, kernel parameters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

#[derive(Debug, Serialize)]
struct HostReport {
    kernel: String,
    machine: String,
    nproc: usize,
    cpus_online: String,
    shards: usize,
    data_dir: String,
    config: Option<String>,
    mode: &'static str,
}

#[derive(Debug, Serialize)]
struct Report {
    host: HostReport,
    checks: Vec<CheckReport>,
}

/// What every check may look at, gathered once.
struct Context {
    roots: Roots,
    config: BrokerConfig,
    /// The data dir if it exists, else its nearest existing parent.
    probe_dir: PathBuf,
    mount: Option<Mount>,
    kernel_release: String,
}

/// A check's verdict and the files `--apply` writes its fix to.
struct Evaluated {
    verdict: Verdict,
    targets: Vec<PathBuf>,
}

impl From<Verdict> for Evaluated {
    fn from(verdict: Verdict) -> Self {
        Evaluated {
            verdict,
            targets: Vec::new(),
        }
    }
}

/// Runs the checks; returns the process exit code.
pub fn run(args: TuneArgs) -> i32 {
    match run_inner(args, Roots::default()) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("shardlog tune: {message}");
            2
        }
    }
}

/// Bad usage (a config that does not load, an unknown check) is `Err`.
fn run_inner(args: TuneArgs, roots: Roots) -> Result<i32, String> {
    for name in &args.only {
        if !CHECK_NAMES.contains(&name.as_str()) {
            return Err(format!(
                "unknown check {name:?}; checks: {}",
                CHECK_NAMES.join(", ")
            ));
        }
    }
    let mut overrides = args
        .set
        .iter()
        .map(|s| config::parse_override(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if let Some(dir) = &args.data_dir {
        overrides.push(("log.dirs".into(), dir.display().to_string()));
    }
    let mut config = BrokerConfig::load(args.config.as_deref(), &overrides).map_err(|e| e.to_string())?;
    if let Some(n) = args.shards {
        if n == 0 {
            return Err("--shards must be at least 1".into());
        }
        config.shards = n;
    }
    let probe_dir = sysfs::nearest_existing(&config.data_dir);
    let mounts = sysfs::read(&roots.proc_file("self/mountinfo"))
        .map(|t| checks::parse_mountinfo(&t))
        .unwrap_or_default();
    let mount = checks::mount_for(&mounts, &probe_dir.to_string_lossy()).cloned();
    let (kernel_release, machine) = sysfs::uname();
    let ctx = Context {
        roots,
        config,
        probe_dir,
        mount,
        kernel_release,
    };

    let mut reports = Vec::new();
    for name in CHECK_NAMES.iter().copied() {
        if args.only.is_empty() || args.only.iter().any(|o| o == name) {
            reports.push(run_check(&ctx, name, args.apply));
        }
    }
    let failed = reports.iter().any(|r| r.status == Status::Fail);
    let online = sysfs::read(&ctx.roots.sys_file("devices/system/cpu/online")).unwrap_or_default();
    let host = HostReport {
        kernel: ctx.kernel_release.clone(),
        machine,
        nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        cpus_online: online.trim().to_string(),
        shards: ctx.config.shards,
        data_dir: ctx.config.data_dir.display().to_string(),
        config: args.config.as_ref().map(|p| p.display().to_string()),
        mode: if args.apply { "apply" } else { "check" },
    };
    let report = Report {
        host,
        checks: reports,
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => return Err(format!("cannot encode the report: {e}")),
        }
    } else {
        print!("{}", render_human(&report));
    }
    Ok(if failed { 1 } else { 0 })
}

/// Evaluates one check and, with `apply`, writes its fix and evaluates again.
fn run_check(ctx: &Context, name: &'static str, apply: bool) -> CheckReport {
    let before = evaluate(ctx, name);
    let mut report = CheckReport {
        name,
        status: before.verdict.status,
        found: before.verdict.found.clone(),
        wanted: before.verdict.wanted.clone(),
        why: before.verdict.why.clone(),
        changed: false,
        previous: None,
        error: None,
        advice: before.verdict.advice.clone(),
    };
    let Some(fix) = before.verdict.fix.as_deref() else {
        return report;
    };
    if !apply || before.targets.is_empty() {
        if report.advice.is_none() {
            report.advice = Some(format!("shardlog tune --apply --only {name} writes {fix:?}"));
        }
        return report;
    }
    let mut error = None;
    let mut wrote = false;
    for target in &before.targets {
        match sysfs::write(target, fix) {
            Ok(()) => wrote = true,
            Err(e) => {
                error = Some(write_error(target, fix, &e));
                break;
            }
        }
    }
    let after = evaluate(ctx, name).verdict;
    report.changed = wrote && after.found != before.verdict.found;
    if report.changed {
        report.previous = Some(before.verdict.found.clone());
    }
    report.status = after.status;
    report.found = after.found;
    report.advice = after.advice;
    report.error = error;
    report
}

fn write_error(target: &Path, value: &str, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => format!(
            "no permission to write {value:?} to {}: {e} (needs root; /proc/sys and /sys are read-only in \
             most containers); left unchanged",
            target.display()
        ),
        _ => format!(
            "writing {value:?} to {} failed: {e}; left unchanged",
            target.display()
        ),
    }
}

fn evaluate(ctx: &Context, name: &str) -> Evaluated {
    match name {
        "io_uring" => check_io_uring(ctx),
        "memlock" => check_memlock(ctx),
        "nofile" => check_nofile(ctx),
        "fs.type" => check_fs_type(ctx),
        "fs.o_direct" => checks::o_direct(
            &ctx.probe_dir.display().to_string(),
            sysfs::probe_o_direct(&ctx.probe_dir),
        )
        .into(),
        "block.scheduler" | "block.nr_requests" => check_block(ctx, name),
        "thp" => check_file(
            &ctx.roots.sys_file("kernel/mm/transparent_hugepage/enabled"),
            "kernel without transparent huge pages",
            checks::thp,
        ),
        "cpu.governor" => check_governor(ctx),
        "clocksource" => check_clocksource(ctx),
        "irq.affinity" => check_irq_affinity(ctx),
        "net.core.somaxconn" => {
            let backlog = ctx.config.socket_listen_backlog_size;
            check_sysctl(ctx, name, |t| checks::somaxconn(t, backlog))
        }
        "net.core.rmem_max" | "net.core.wmem_max" => check_sysctl(ctx, name, checks::socket_buffer_max),
        "net.ipv4.tcp_rmem" | "net.ipv4.tcp_wmem" => check_sysctl(ctx, name, checks::tcp_mem_max),
        "vm.swappiness" => check_sysctl(ctx, name, checks::swappiness),
        "fs.aio-max-nr" => check_sysctl(ctx, name, checks::aio_max_nr),
        _ => Verdict {
            status: Status::Skip,
            found: String::new(),
            wanted: String::new(),
            why: "unknown check".into(),
            fix: None,
            advice: None,
        }
        .into(),
    }
}

/// A one-file check whose fix is written back to that file.
fn check_file(path: &Path, missing: &str, decide: impl Fn(&str) -> Verdict) -> Evaluated {
    match sysfs::read(path) {
        Some(text) => Evaluated {
            verdict: decide(&text),
            targets: vec![path.to_path_buf()],
        },
        None => Verdict {
            status: Status::Skip,
            found: format!("{} missing", path.display()),
            wanted: String::new(),
            why: missing.to_string(),
            fix: None,
            advice: None,
        }
        .into(),
    }
}

fn check_sysctl(ctx: &Context, name: &str, decide: impl Fn(&str) -> Verdict) -> Evaluated {
    check_file(
        &ctx.roots.sysctl_path(name),
        "not present in this kernel or network namespace",
        decide,
    )
}

fn check_io_uring(ctx: &Context) -> Evaluated {
    let disabled = sysfs::read(&ctx.roots.sysctl_path("kernel.io_uring_disabled"));
    checks::io_uring(
        checks::parse_kernel_version(&ctx.kernel_release),
        disabled.as_deref(),
        sysfs::probe_io_uring(),
    )
    .into()
}

/// CAP_IPC_LOCK's bit in the capability sets.
const CAP_IPC_LOCK: u32 = 14;

fn check_memlock(ctx: &Context) -> Evaluated {
    match sysfs::rlimit(libc::RLIMIT_MEMLOCK) {
        Ok((soft, hard)) => checks::memlock(
            soft,
            hard,
            ctx.config.shards,
            sysfs::has_capability(&ctx.roots, CAP_IPC_LOCK),
        )
        .into(),
        Err(e) => unreadable("RLIMIT_MEMLOCK", &e),
    }
}

fn check_nofile(ctx: &Context) -> Evaluated {
    let c = &ctx.config;
    let breakdown = format!(
        "log.fd.cache.size {} x 2 (segment files, zero-copy slices) x {} shards + max.connections {} + {} reserved",
        c.log_fd_cache_size,
        c.shards,
        c.max_connections,
        c.descriptors_reserved()
    );
    match sysfs::rlimit(libc::RLIMIT_NOFILE) {
        Ok((soft, hard)) => checks::nofile(soft, hard, c.descriptors_needed(), &breakdown).into(),
        Err(e) => unreadable("RLIMIT_NOFILE", &e),
    }
}

fn unreadable(what: &str, e: &io::Error) -> Evaluated {
    Verdict {
        status: Status::Skip,
        found: format!("{what} unreadable: {e}"),
        wanted: String::new(),
        why: String::new(),
        fix: None,
        advice: None,
    }
    .into()
}

fn check_fs_type(ctx: &Context) -> Evaluated {
    let from_mount = ctx.mount.as_ref().map(|m| m.fstype.clone());
    let from_statfs = || {
        sysfs::statfs_type(&ctx.probe_dir).ok().map(|magic| {
            sysfs::fs_magic_name(magic).map_or_else(|| format!("magic {magic:#x}"), str::to_string)
        })
    };
    match from_mount.or_else(from_statfs) {
        Some(fstype) => {
            let mut v = checks::fs_type(&fstype);
            v.found = format!("{fstype} ({})", ctx.probe_dir.display());
            v.into()
        }
        None => unreadable("filesystem type", &io::Error::from_raw_os_error(libc::ENOENT)),
    }
}

/// The whole disk under the data dir, or why there is none to check.
fn data_disk(ctx: &Context) -> Result<PathBuf, String> {
    let Some(mount) = &ctx.mount else {
        return Err(format!(
            "no mount found for {} in mountinfo",
            ctx.probe_dir.display()
        ));
    };
    let (mut major, mut minor) = (mount.major, mount.minor);
    if major == 0 && mount.source.starts_with("/dev/") {
        // btrfs and others report an anonymous device number; the source names the disk.
        if let Ok(meta) = std::fs::metadata(&mount.source) {
            use std::os::unix::fs::MetadataExt;
            let rdev = meta.rdev();
            (major, minor) = (libc::major(rdev), libc::minor(rdev));
        }
    }
    if major == 0 {
        return Err(format!("{} ({}) has no block device", mount.fstype, mount.source));
    }
    if major == 7 {
        return Err(format!(
            "{} is a loop device: its queue settings do not reach the disk holding its backing file",
            mount.source
        ));
    }
    ctx.roots
        .whole_disk(major, minor)
        .ok_or_else(|| format!("no /sys/dev/block/{major}:{minor}"))
}

fn check_block(ctx: &Context, name: &str) -> Evaluated {
    let disk = match data_disk(ctx) {
        Ok(disk) => disk,
        Err(reason) => {
            return Verdict {
                status: Status::Skip,
                found: reason,
                wanted: String::new(),
                why: "block queue settings apply to a disk".into(),
                fix: None,
                advice: None,
            }
            .into()
        }
    };
    let disk_name = disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == "block.scheduler" {
        let rotational = sysfs::read(&disk.join("queue/rotational"))
            .and_then(|t| checks::parse_u64(&t))
            .map(|v| v == 1);
        check_file(&disk.join("queue/scheduler"), "no scheduler file", |t| {
            checks::scheduler(&disk_name, t, rotational)
        })
    } else {
        check_file(&disk.join("queue/nr_requests"), "no nr_requests file", |t| {
            checks::nr_requests(&disk_name, t)
        })
    }
}

fn check_governor(ctx: &Context) -> Evaluated {
    let paths = ctx.roots.governor_paths();
    let governors: Vec<(usize, String)> = paths
        .iter()
        .filter_map(|(cpu, path)| sysfs::read(path).map(|t| (*cpu, t)))
        .collect();
    let targets = paths
        .iter()
        .zip(&governors)
        .filter(|(_, (_, text))| text.trim() != "performance")
        .map(|((_, path), _)| path.clone())
        .collect();
    Evaluated {
        verdict: checks::governor(&governors),
        targets,
    }
}

fn check_clocksource(ctx: &Context) -> Evaluated {
    let dir = ctx.roots.sys_file("devices/system/clocksource/clocksource0");
    let Some(current) = sysfs::read(&dir.join("current_clocksource")) else {
        return unreadable("current_clocksource", &io::Error::from_raw_os_error(libc::ENOENT));
    };
    let available = sysfs::read(&dir.join("available_clocksource")).unwrap_or_default();
    let in_vm = ctx.roots.sys_file("hypervisor/type").exists()
        || sysfs::read(&ctx.roots.proc_file("cpuinfo")).is_some_and(|t| {
            t.lines()
                .any(|l| l.starts_with("flags") && l.split_whitespace().any(|w| w == "hypervisor"))
        });
    checks::clocksource(&current, &available, in_vm).into()
}

fn check_irq_affinity(ctx: &Context) -> Evaluated {
    let allowed = sysfs::allowed_cpus();
    let shard_cores: Vec<usize> = allowed.iter().copied().take(ctx.config.shards.max(1)).collect();
    let online = sysfs::read(&ctx.roots.sys_file("devices/system/cpu/online"))
        .and_then(|t| checks::parse_cpu_list(&t))
        .unwrap_or_else(|| allowed.clone());
    let interrupts = sysfs::read(&ctx.roots.proc_file("interrupts"))
        .map(|t| checks::parse_interrupts(&t))
        .unwrap_or_default();
    let irqs: Vec<(u32, String)> = checks::nic_irqs(&interrupts, &ctx.roots.nic_tokens())
        .into_iter()
        .filter_map(|irq| {
            sysfs::read(&ctx.roots.proc_file(&format!("irq/{irq}/smp_affinity_list"))).map(|t| (irq, t))
        })
        .collect();
    checks::irq_affinity(&irqs, &shard_cores, &online).into()
}

/// One aligned line per check, then what changed, failed or needs doing by hand.
fn render_human(report: &Report) -> String {
    let h = &report.host;
    let mut out = format!(
        "shardlog tune --{}: kernel {} {}, {} cpus, {} shards, data dir {}\n",
        h.mode, h.kernel, h.machine, h.nproc, h.shards, h.data_dir
    );
    let name_w = report.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let found_w = report
        .checks
        .iter()
        .map(|c| c.found.chars().count())
        .max()
        .unwrap_or(0)
        .min(44);
    let wanted_w = report
        .checks
        .iter()
        .map(|c| c.wanted.chars().count())
        .max()
        .unwrap_or(0)
        .min(36);
    for c in &report.checks {
        out.push_str(&format!(
            "{:<4}  {:<name_w$}  {:<found_w$}  wanted {:<wanted_w$}  {}\n",
            c.status.as_str(),
            c.name,
            c.found,
            c.wanted,
            c.why
        ));
        let indent = " ".repeat(6);
        if let Some(previous) = &c.previous {
            out.push_str(&format!(
                "{indent}changed {} {} -> {}\n",
                c.name, previous, c.found
            ));
        }
        if let Some(error) = &c.error {
            out.push_str(&format!("{indent}error: {error}\n"));
        }
        if let Some(advice) = &c.advice {
            if c.status != Status::Ok {
                out.push_str(&format!("{indent}fix: {advice}\n"));
            }
        }
    }
    let count = |s: Status| report.checks.iter().filter(|c| c.status == s).count();
    let changed = report.checks.iter().filter(|c| c.changed).count();
    out.push_str(&format!(
        "{} ok, {} warn, {} fail, {} skip{}\n",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail),
        count(Status::Skip),
        if h.mode == "apply" {
            format!(", {changed} changed")
        } else {
            String::new()
        }
    ));
    out
}

#[cfg(test)]
mod tests;
