//! The decisions of `shardlog tune`, free of I/O: each function takes what
//! was read (a file's text, a number, a probe's errno) and says what was
//! found, what is wanted, why, and what `--apply` would write. Odd file
//! contents give a `warn` or `skip` with the text quoted, never a panic.

use serde::Serialize;

/// A check's outcome. `Fail` makes `shardlog tune` exit 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// What one check decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: Status,
    pub found: String,
    pub wanted: String,
    pub why: String,
    /// The text `--apply` writes to the check's file(s); None when the
    /// value is fine or the setting is not one `--apply` changes.
    pub fix: Option<String>,
    /// What an operator does instead, for what `--apply` cannot change
    /// (limits of a process not started yet, mounts, kernel parameters).
    pub advice: Option<String>,
}

impl Verdict {
    fn new(
        status: Status,
        found: impl Into<String>,
        wanted: impl Into<String>,
        why: impl Into<String>,
    ) -> Self {
        Verdict {
            status,
            found: found.into(),
            wanted: wanted.into(),
            why: why.into(),
            fix: None,
            advice: None,
        }
    }

    fn skip(found: impl Into<String>, wanted: impl Into<String>, why: impl Into<String>) -> Self {
        Verdict::new(Status::Skip, found, wanted, why)
    }

    fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    fn with_advice(mut self, advice: impl Into<String>) -> Self {
        self.advice = Some(advice.into());
        self
    }
}

const MIB: u64 = 1 << 20;

// --- parsers ----------------------------------------------------------------

/// A whole decimal number file (`/proc/sys/vm/swappiness`).
pub fn parse_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The selected entry of a sysfs choice file: `always [madvise] never` -> `madvise`.
pub fn bracketed(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find(|w| w.len() > 2 && w.starts_with('[') && w.ends_with(']'))
        .map(|w| &w[1..w.len() - 1])
}

/// Every entry of a sysfs choice file, brackets removed.
pub fn choices(text: &str) -> Vec<&str> {
    text.split_whitespace()
        .map(|w| w.trim_matches(|c| c == '[' || c == ']'))
        .collect()
}

/// The most CPUs a list may name; a larger range is taken as garbage.
const CPUS_MAX: usize = 1 << 16;

/// A kernel CPU list (`0-3,8,10-11`); None when malformed.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim().parse().ok()?, hi.trim().parse().ok()?),
            None => {
                let cpu: usize = part.trim().parse().ok()?;
                (cpu, cpu)
            }
        };
        if lo > hi || hi >= CPUS_MAX {
            return None;
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// `6.18.44-fc-v1147` -> (6, 18).
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub major: u32,
    pub minor: u32,
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
}

/// Parses `/proc/self/mountinfo`, skipping lines it cannot read.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    // id parent major:minor root mount_point options [optional...] - fstype source super_options
    let (left, right) = line.split_once(" - ")?;
    let fields: Vec<&str> = left.split(' ').collect();
    let (major, minor) = fields.get(2)?.split_once(':')?;
    let mut right = right.split(' ');
    Some(Mount {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        mount_point: unescape_octal(fields.get(4)?),
        fstype: right.next()?.to_string(),
        source: unescape_octal(right.next().unwrap_or("")),
    })
}

/// mountinfo writes space, tab, newline and backslash as `\040` etc.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(d)) = (bytes[i], octal) {
            let v = u32::from(d[0] - b'0') * 64 + u32::from(d[1] - b'0') * 8 + u32::from(d[2] - b'0');
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount holding `path` (absolute, canonical): the longest mount point
/// that is a path prefix of it; the last listed wins between equal ones
/// (a later mount hides an earlier one on the same point).
pub fn mount_for<'a>(mounts: &'a [Mount], path: &str) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        let mp = m.mount_point.trim_end_matches('/');
        let covers = mp.is_empty() || path == mp || path.starts_with(&format!("{mp}/"));
        if covers && best.is_none_or(|b| mp.len() >= b.mount_point.trim_end_matches('/').len()) {
            best = Some(m);
        }
    }
    best
}

/// `/proc/interrupts` rows: (IRQ number, everything after the per-CPU counts:
/// chip, hardware IRQ and the action's name). Rows like `NMI:` are skipped.
pub fn parse_interrupts(text: &str) -> Vec<(u32, String)> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let Some((irq, rest)) = line.trim_start().split_once(':') else {
            continue;
        };
        let Ok(irq) = irq.parse::<u32>() else {
            continue;
        };
        let description: Vec<&str> = rest
            .split_whitespace()
            .skip_while(|w| w.chars().all(|c| c.is_ascii_digit()))
            .collect();
        rows.push((irq, description.join(" ")));
    }
    rows
}

/// The IRQs of network devices: rows whose description names one of
/// `tokens` (an interface name, its virtio device `virtio2`, its PCI
/// address). Configuration-change vectors (`virtio2-config`) carry no
/// traffic and are left out.
pub fn nic_irqs(interrupts: &[(u32, String)], tokens: &[String]) -> Vec<u32> {
    let mut irqs = Vec::new();
    for (irq, description) in interrupts {
        let words: Vec<&str> = description.split_whitespace().collect();
        let name = words.last().copied().unwrap_or("");
        if name.ends_with("-config") {
            continue;
        }
        let matches = tokens.iter().any(|t| {
            words.iter().any(|w| {
                *w == t.as_str()
                    || w.starts_with(&format!("{t}-"))
                    || w.ends_with(&format!("-{t}"))
                    || w.contains(&format!("@pci:{t}"))
            })
        });
        if matches {
            irqs.push(*irq);
        }
    }
    irqs
}

/// Compact CPU list for display: [0, 1, 2, 5] -> `0-2,5`.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

fn human_bytes(bytes: u64) -> String {
    if bytes == u64::MAX {
        "unlimited".to_string()
    } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

fn limit_text(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".to_string()
    } else {
        v.to_string()
    }
}

// --- checks -----------------------------------------------------------------

/// Oldest kernel glommio runs on (its crate docs: 5.8).
const KERNEL_MIN: (u32, u32) = (5, 8);

/// `io_uring`: the kernel has it, `kernel.io_uring_disabled` allows it and
/// a tiny ring can be created. `probe` is the errno of `io_uring_setup`.
pub fn io_uring(kernel: Option<(u32, u32)>, disabled: Option<&str>, probe: Result<(), i32>) -> Verdict {
    let wanted = "io_uring_setup works; kernel.io_uring_disabled=0";
    let disabled_value = disabled.map(|t| (t.trim().to_string(), parse_u64(t)));
    let mut found = match &probe {
        Ok(()) => "ring created".to_string(),
        Err(errno) => format!(
            "io_uring_setup failed: {}",
            std::io::Error::from_raw_os_error(*errno)
        ),
    };
    if let Some((text, _)) = &disabled_value {
        found.push_str(&format!(", io_uring_disabled={text}"));
    }
    if let Some((major, minor)) = kernel {
        found.push_str(&format!(", kernel {major}.{minor}"));
    }
    let why_base = "every shard runs on glommio's io_uring rings; the broker cannot start without them";
    if let Some(k) = kernel {
        if k < KERNEL_MIN {
            return Verdict::new(
                Status::Fail,
                found,
                wanted,
                format!("{why_base}; glommio needs kernel >= 5.8"),
            );
        }
    }
    match (probe, disabled_value.as_ref().map(|(_, v)| *v)) {
        (Err(errno), _) => {
            let hint = match errno {
                libc::ENOSYS => "kernel built without io_uring (CONFIG_IO_URING)",
                libc::EPERM => {
                    "refused: kernel.io_uring_disabled, a seccomp filter (container runtime) or io_uring_group membership"
                }
                _ => "the probe ring could not be created",
            };
            Verdict::new(Status::Fail, found, wanted, format!("{why_base}; {hint}")).with_advice(
                "set kernel.io_uring_disabled=0 (sysctl) and allow io_uring_setup in the container's seccomp profile",
            )
        }
        (Ok(()), Some(Some(0)) | None) => Verdict::new(Status::Ok, found, wanted, why_base),
        (Ok(()), Some(Some(1))) => Verdict::new(
            Status::Warn,
            found,
            wanted,
            format!(
                "{why_base}; io_uring_disabled=1 lets only CAP_SYS_ADMIN and kernel.io_uring_group members \
                 create rings: this process may, the service user may not"
            ),
        )
        .with_advice(
            "add the service user to kernel.io_uring_group's group or set kernel.io_uring_disabled=0",
        ),
        (Ok(()), Some(_)) => Verdict::new(
            Status::Warn,
            found,
            wanted,
            format!("{why_base}; unexpected io_uring_disabled value"),
        ),
    }
}

/// glommio refuses to start below this locked-memory limit (`sys/uring.rs`).
pub const MEMLOCK_GLOMMIO_MIN_BYTES: u64 = 512 * 1024;
/// glommio's `DEFAULT_IO_MEMORY`: each executor's DMA buffer arena, which it
/// registers with each of its three rings (main, latency, poll).
pub const GLOMMIO_IO_MEMORY_BYTES: u64 = 10 * MIB;
pub const GLOMMIO_RINGS_PER_SHARD: u64 = 3;
/// Ring arrays of three 128-entry rings (charged to memlock before 5.12)
/// and glommio's one mlock'ed membarrier page, rounded up.
pub const MEMLOCK_RINGS_BYTES_PER_SHARD: u64 = 2 * MIB;

/// Locked memory one shard uses: the arena pinned once per ring (each
/// registration is charged on its own), plus the rings.
pub fn memlock_per_shard_bytes() -> u64 {
    GLOMMIO_RINGS_PER_SHARD * GLOMMIO_IO_MEMORY_BYTES + MEMLOCK_RINGS_BYTES_PER_SHARD
}

/// `memlock`: RLIMIT_MEMLOCK of this process against what `shards` executors pin.
pub fn memlock(soft: u64, hard: u64, shards: usize, cap_ipc_lock: bool) -> Verdict {
    let per_shard = memlock_per_shard_bytes();
    let needed = per_shard.saturating_mul(shards as u64);
    let found = format!(
        "soft {} hard {}{}",
        human_bytes(soft),
        human_bytes(hard),
        if cap_ipc_lock {
            " (CAP_IPC_LOCK: not charged)"
        } else {
            ""
        }
    );
    let wanted = format!(
        ">= {} ({} shards x {})",
        human_bytes(needed),
        shards,
        human_bytes(per_shard)
    );
    let why = format!(
        "glommio registers each shard's {} DMA arena with its {} rings, each registration pinned and charged to \
         RLIMIT_MEMLOCK (per user) on its own; short of that it logs a warning and does I/O without registered \
         buffers; below {} it refuses to start. Kernels >= 5.12 charge the rings themselves to the memory \
         cgroup instead, not to this limit",
        human_bytes(GLOMMIO_IO_MEMORY_BYTES),
        GLOMMIO_RINGS_PER_SHARD,
        human_bytes(MEMLOCK_GLOMMIO_MIN_BYTES),
    );
    let advice = format!(
        "systemd: LimitMEMLOCK={} (or infinity); limits.conf: shardlog - memlock {}",
        human_bytes(needed).replace(" MiB", "M"),
        needed / 1024
    );
    let status = if soft < MEMLOCK_GLOMMIO_MIN_BYTES {
        Status::Fail
    } else if soft >= needed || cap_ipc_lock {
        Status::Ok
    } else {
        Status::Warn
    };
    let v = Verdict::new(status, found, wanted, why);
    if status == Status::Ok {
        v
    } else {
        v.with_advice(advice)
    }
}

/// `nofile`: RLIMIT_NOFILE against `BrokerConfig::descriptors_needed`. The
/// broker raises its soft limit to the hard one at start, so the hard
/// limit is the one that must cover the need.
pub fn nofile(soft: u64, hard: u64, needed: u64, breakdown: &str) -> Verdict {
    let found = format!("soft {} hard {}", limit_text(soft), limit_text(hard));
    let wanted = format!(">= {needed}");
    let why = format!(
        "{breakdown}; the broker raises its soft limit to the hard one at start, so the hard limit must cover it \
         or opens fail with EMFILE under load"
    );
    let advice = format!("systemd: LimitNOFILE={needed}; limits.conf: shardlog - nofile {needed}");
    if hard < needed {
        Verdict::new(Status::Fail, found, wanted, why).with_advice(advice)
    } else {
        Verdict::new(Status::Ok, found, wanted, why)
    }
}

/// `fs.type`: the filesystem type of the data dir (mountinfo's name).
pub fn fs_type(fstype: &str) -> Verdict {
    let wanted = "xfs (ext4 accepted)";
    let measured =
        "measured here (results/preallocation.md, one shard, loop devices, log.preallocate=false): \
                    ext4 634 MB/s max and p99 6.88 ms at half load, XFS 429 MB/s and p99 4.21 ms";
    match fstype {
        "xfs" => Verdict::new(
            Status::Ok,
            fstype,
            wanted,
            format!("XFS is what Kafka and Redpanda recommend; {measured}: XFS gave the lower p99"),
        ),
        "ext4" => Verdict::new(
            Status::Warn,
            fstype,
            wanted,
            format!(
                "works (O_DIRECT, io_uring); {measured}: ext4 gave more throughput, XFS the lower p99 and is \
                 Kafka's and Redpanda's recommendation. Keep log.preallocate=false on ext4 (-25% max rate with it)"
            ),
        ),
        "tmpfs" | "ramfs" | "overlay" | "nfs" | "nfs4" | "cifs" | "fuse" | "9p" | "virtiofs" => Verdict::new(
            Status::Warn,
            fstype,
            wanted,
            "not a local disk filesystem: data is lost on reboot (tmpfs, ramfs) or O_DIRECT and \
             fdatasync semantics differ (overlay, network); see fs.o_direct",
        ),
        other => Verdict::new(
            Status::Warn,
            other,
            wanted,
            "not measured with shardlog; ext4 and XFS are (results/preallocation.md)",
        ),
    }
}

/// `fs.o_direct`: the result of writing one aligned 4 KiB block with
/// O_DIRECT in the data dir (or its nearest existing parent).
pub fn o_direct(dir: &str, result: Result<(), i32>) -> Verdict {
    let wanted = "O_DIRECT write of 4 KiB works";
    let why = "segments are written with O_DIRECT through io_uring (DMA buffers, no page cache copy)";
    match result {
        Ok(()) => Verdict::new(Status::Ok, format!("works in {dir}"), wanted, why),
        Err(libc::EINVAL) => Verdict::new(
            Status::Fail,
            format!("EINVAL in {dir}: this filesystem does not support O_DIRECT"),
            wanted,
            why,
        )
        .with_advice("put log.dirs on an ext4 or XFS filesystem"),
        Err(errno @ (libc::EACCES | libc::EPERM | libc::EROFS)) => Verdict::skip(
            format!(
                "cannot create a file in {dir}: {}",
                std::io::Error::from_raw_os_error(errno)
            ),
            wanted,
            format!("{why}; run as the broker's user to test it"),
        ),
        Err(errno) => Verdict::new(
            Status::Fail,
            format!("{dir}: {}", std::io::Error::from_raw_os_error(errno)),
            wanted,
            why,
        ),
    }
}

/// `block.scheduler`: the data dir's disk's I/O scheduler.
pub fn scheduler(disk: &str, text: &str, rotational: Option<bool>) -> Verdict {
    let wanted = "none or mq-deadline";
    let why = "none hands requests straight to NVMe/virtio hardware queues; mq-deadline bounds read latency \
               behind writes. bfq and kyber add per-request accounting (bfq also idling) that costs CPU and \
               latency at NVMe rates. mq-deadline ignores ionice classes, so throttle compaction with \
               log.cleaner.io.max.bytes.per.second (results/compaction-impact.md)";
    let Some(current) = bracketed(text) else {
        return Verdict::skip(format!("{disk}: unreadable {:?}", text.trim()), wanted, why);
    };
    let found = format!("{disk}: {current}");
    if current == "none" || current == "mq-deadline" {
        return Verdict::new(Status::Ok, found, wanted, why);
    }
    let available = choices(text);
    let pick = if rotational == Some(true) {
        "mq-deadline"
    } else {
        "none"
    };
    let v = Verdict::new(Status::Warn, found, wanted, why);
    if available.contains(&pick) {
        v.with_fix(pick)
    } else {
        v
    }
}

/// glommio's ring depth (`DEFAULT_RING_SUBMISSION_DEPTH`): I/Os one shard's ring can have in flight.
pub const RING_DEPTH: u64 = 128;

/// `block.nr_requests`: requests the block layer queues per hardware queue.
pub fn nr_requests(disk: &str, text: &str) -> Verdict {
    let wanted = format!(">= {RING_DEPTH}");
    let why =
        "one shard's io_uring can submit 128 I/Os at once (glommio's ring depth); below that they wait \
               in the block layer instead of the device";
    let Some(n) = parse_u64(text) else {
        return Verdict::skip(format!("{disk}: unreadable {:?}", text.trim()), wanted, why);
    };
    let found = format!("{disk}: {n}");
    if n >= RING_DEPTH {
        Verdict::new(Status::Ok, found, wanted, why)
    } else {
        Verdict::new(Status::Warn, found, wanted, why).with_fix(RING_DEPTH.to_string())
    }
}

/// `thp`: transparent huge pages mode.
pub fn thp(text: &str) -> Verdict {
    let wanted = "madvise or never";
    let why = "with always, page faults and khugepaged compact memory to build huge pages, which stalls \
               whichever reactor thread faults; madvise limits that to regions that ask for it";
    match bracketed(text) {
        Some(mode @ ("madvise" | "never")) => Verdict::new(Status::Ok, mode, wanted, why),
        Some(mode) => {
            let v = Verdict::new(Status::Warn, mode, wanted, why);
            if choices(text).contains(&"madvise") {
                v.with_fix("madvise")
            } else {
                v
            }
        }
        None => Verdict::skip(format!("unreadable {:?}", text.trim()), wanted, why),
    }
}

/// `vm.swappiness`.
pub fn swappiness(text: &str) -> Verdict {
    let wanted = "1";
    let why = "Kafka's and Redpanda's guides set 1: page cache (zero-copy fetches) and the heap stay in RAM \
               while swap remains a last resort";
    match parse_u64(text) {
        Some(v) if v <= 1 => Verdict::new(Status::Ok, v.to_string(), wanted, why),
        Some(v) => Verdict::new(Status::Warn, v.to_string(), wanted, why).with_fix("1"),
        None => Verdict::skip(format!("unreadable {:?}", text.trim()), wanted, why),
    }
}

/// `cpu.governor`: (cpu, scaling_governor text) of every CPU with cpufreq.
pub fn governor(governors: &[(usize, String)]) -> Verdict {
    let wanted = "performance";
    let why =
        "a reactor thread busy-polls and sleeps in short bursts; powersave/schedutil clock it down between \
               bursts, adding latency to the next request";
    if governors.is_empty() {
        return Verdict::skip(
            "no cpufreq",
            wanted,
            "no scaling_governor files: a VM or a kernel without a cpufreq driver; the host controls frequency",
        );
    }
    let mut slow: Vec<usize> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for (cpu, text) in governors {
        let name = text.trim();
        if !names.contains(&name) {
            names.push(name);
        }
        if name != "performance" {
            slow.push(*cpu);
        }
    }
    let found = names.join(",");
    if slow.is_empty() {
        Verdict::new(Status::Ok, found, wanted, why)
    } else {
        Verdict::new(
            Status::Warn,
            format!("{found} (cpus {})", format_cpu_list(&slow)),
            wanted,
            why,
        )
        .with_fix("performance")
    }
}

/// `clocksource`.
pub fn clocksource(current: &str, available: &str, in_vm: bool) -> Verdict {
    let current = current.trim();
    let wanted = if in_vm { "tsc or kvm-clock" } else { "tsc" };
    let why = "tsc (and kvm-clock in a VM) are read in user space by clock_gettime's vDSO; hpet and acpi_pm \
               trap into the kernel on every read, and the reactor reads the clock on every poll";
    let ok = current == "tsc" || (in_vm && current == "kvm-clock");
    if ok {
        return Verdict::new(Status::Ok, current, wanted, why);
    }
    let v = Verdict::new(Status::Warn, current, wanted, why);
    if choices(available).contains(&"tsc") {
        v.with_advice("the kernel left tsc for this one (often: found it unstable); check dmesg before booting with clocksource=tsc")
    } else {
        v.with_advice("tsc is not offered by this kernel; check dmesg for why")
    }
}

/// `irq.affinity`: NIC IRQs (number, smp_affinity_list text) against the
/// cores the shards are pinned to, out of the online ones.
pub fn irq_affinity(irqs: &[(u32, String)], shard_cores: &[usize], online: &[usize]) -> Verdict {
    let free: Vec<usize> = online
        .iter()
        .copied()
        .filter(|c| !shard_cores.contains(c))
        .collect();
    let wanted = if free.is_empty() {
        "any (every core runs a shard)".to_string()
    } else {
        format!("NIC IRQs on cores {} (no shard)", format_cpu_list(&free))
    };
    let why = "a NIC interrupt and its softirq run on the core it lands on, taking that time from the shard \
               pinned there; with cores free of shards, steer NIC IRQs there (irqbalance or \
               /proc/irq/N/smp_affinity_list)";
    if irqs.is_empty() {
        return Verdict::skip(
            "no NIC IRQs found",
            wanted,
            "no network device interrupts in /proc/interrupts",
        );
    }
    let mut on_shards = Vec::new();
    for (irq, text) in irqs {
        let Some(cpus) = parse_cpu_list(text) else {
            continue;
        };
        if cpus.iter().any(|c| shard_cores.contains(c)) {
            on_shards.push(format!("{irq}->{}", format_cpu_list(&cpus)));
        }
    }
    let found = format!(
        "{} NIC IRQs, {} on shard cores {}{}",
        irqs.len(),
        on_shards.len(),
        format_cpu_list(shard_cores),
        if on_shards.is_empty() {
            String::new()
        } else {
            format!(" ({})", on_shards.join(" "))
        }
    );
    if on_shards.is_empty() || free.is_empty() {
        Verdict::new(Status::Ok, found, wanted, why)
    } else {
        Verdict::new(Status::Warn, found, wanted, why).with_advice(
            "not applied (irqbalance would move them back): stop irqbalance or ban the shard cores in it",
        )
    }
}

/// `net.core.somaxconn`: the cap on every listen() backlog.
pub fn somaxconn(text: &str, listen_backlog: i32) -> Verdict {
    let want = (listen_backlog.max(0) as u64).max(4096);
    let wanted = format!(">= {want}");
    let why = format!(
        "caps the broker's socket.listen.backlog.size ({listen_backlog}); 4096 is the kernel's default since 5.4, \
         so a connection storm (clients reconnecting after a restart) is not dropped at SYN time"
    );
    match parse_u64(text) {
        Some(v) if v >= want => Verdict::new(Status::Ok, v.to_string(), wanted, why),
        Some(v) => Verdict::new(Status::Warn, v.to_string(), wanted, why).with_fix(want.to_string()),
        None => Verdict::skip(format!("unreadable {:?}", text.trim()), wanted, why),
    }
}

/// Socket buffer maximum that Kafka: The Definitive Guide recommends (2 MiB).
pub const SOCKET_BUFFER_MAX_BYTES: u64 = 2 * MIB;

/// `net.core.rmem_max` / `net.core.wmem_max`.
pub fn socket_buffer_max(text: &str) -> Verdict {
    let wanted = format!(">= {SOCKET_BUFFER_MAX_BYTES}");
    let why = "the largest SO_RCVBUF/SO_SNDBUF a process may set (clients' socket.receive.buffer.bytes and \
               send.buffer.bytes); 2 MiB as Kafka: The Definitive Guide recommends, one 10 Gb/s link's \
               bandwidth-delay product at 1.6 ms RTT. The broker itself leaves its buffers to TCP autotuning";
    match parse_u64(text) {
        Some(v) if v >= SOCKET_BUFFER_MAX_BYTES => Verdict::new(Status::Ok, v.to_string(), wanted, why),
        Some(v) => Verdict::new(Status::Warn, v.to_string(), wanted, why)
            .with_fix(SOCKET_BUFFER_MAX_BYTES.to_string()),
        None => Verdict::skip(format!("unreadable {:?}", text.trim()), wanted, why),
    }
}

/// `net.ipv4.tcp_rmem` / `tcp_wmem`: "min default max"; the max bounds autotuning.
pub fn tcp_mem_max(text: &str) -> Verdict {
    let wanted = format!("max >= {SOCKET_BUFFER_MAX_BYTES}");
    let why = "bounds TCP autotuning of the broker's sockets, which set no buffer size themselves; \
               2 MiB as for net.core.rmem_max";
    let fields: Vec<u64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let [min, default, max] = fields[..] else {
        return Verdict::skip(format!("unreadable {:?}", text.trim()), wanted, why);
    };
    let found = format!("{min} {default} {max}");
    if max >= SOCKET_BUFFER_MAX_BYTES {
        Verdict::new(Status::Ok, found, wanted, why)
    } else {
        Verdict::new(Status::Warn, found, wanted, why)
            .with_fix(format!("{min} {default} {SOCKET_BUFFER_MAX_BYTES}"))
    }
}

/// Redpanda's tuner's value for `fs.aio-max-nr`.
pub const AIO_MAX_NR: u64 = 1_048_576;

/// `fs.aio-max-nr`.
pub fn aio_max_nr(text: &str) -> Verdict {
    let wanted = format!(">= {AIO_MAX_NR}");
    let why = "shardlog does not use Linux AIO (glommio submits through io_uring), so this does not limit it; \
               Seastar-based brokers (Redpanda's tuner sets 1048576) and libaio users on the same host need it";
    match parse_u64(text) {
        Some(v) if v >= AIO_MAX_NR => Verdict::new(Status::Ok, v.to_string(), wanted, why),
        Some(v) => Verdict::new(Status::Warn, v.to_string(), wanted, why).with_fix(AIO_MAX_NR.to_string()),
        None => Verdict::skip(format!("unreadable {:?}", text.trim()), wanted, why),
    }
}
