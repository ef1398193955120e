//! The I/O edge of `shardlog tune`: reading and writing /proc and /sys
//! (under roots that unit tests may point elsewhere), limits, statfs, and
//! the io_uring and O_DIRECT probes. No decisions here; see `checks`.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where /proc and /sys are; tests point these at a fake tree.
#[derive(Clone, Debug)]
pub struct Roots {
    pub proc: PathBuf,
    pub sys: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }
}

/// Bytes read from one pseudo-file at most: every file read here is a
/// line or a table far below this.
const READ_BYTES_MAX: u64 = 4 << 20;

/// A file's text, or None when it is missing or unreadable.
pub fn read(path: &Path) -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(READ_BYTES_MAX).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Writes `value` to a /proc or /sys file, as `echo value > path` does.
pub fn write(path: &Path, value: &str) -> io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(format!("{value}\n").as_bytes())
}

impl Roots {
    /// `/proc/sys/<dotted name with dots as slashes>`: `vm.swappiness`.
    pub fn sysctl_path(&self, name: &str) -> PathBuf {
        self.proc.join("sys").join(name.replace('.', "/"))
    }

    pub fn proc_file(&self, rel: &str) -> PathBuf {
        self.proc.join(rel)
    }

    pub fn sys_file(&self, rel: &str) -> PathBuf {
        self.sys.join(rel)
    }

    /// (cpu, scaling_governor path) of every CPU that has cpufreq.
    pub fn governor_paths(&self) -> Vec<(usize, PathBuf)> {
        let dir = self.sys.join("devices/system/cpu");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<(usize, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let cpu: usize = name.strip_prefix("cpu")?.parse().ok()?;
                let path = e.path().join("cpufreq/scaling_governor");
                path.exists().then_some((cpu, path))
            })
            .collect();
        out.sort_unstable_by_key(|(cpu, _)| *cpu);
        out
    }

    /// Names that identify network devices' interrupts: each interface
    /// with a device behind it (not lo, bridges, ifb), its bus device's
    /// name (`virtio2`) and its PCI address.
    pub fn nic_tokens(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.sys.join("class/net")) else {
            return Vec::new();
        };
        let mut tokens = Vec::new();
        for entry in entries.filter_map(|e| e.ok()) {
            let Ok(device) = std::fs::canonicalize(entry.path().join("device")) else {
                continue;
            };
            tokens.push(entry.file_name().to_string_lossy().into_owned());
            for dev in [Some(device.as_path()), device.parent()].into_iter().flatten() {
                if let Some(name) = dev.file_name().map(|n| n.to_string_lossy().into_owned()) {
                    if name.starts_with("virtio") || is_pci_address(&name) {
                        tokens.push(name);
                    }
                }
            }
        }
        tokens.sort();
        tokens.dedup();
        tokens
    }

    /// The whole disk's sysfs directory for a block device number: a
    /// partition's `/sys/dev/block/M:m` resolves to `.../vda/vda1`, whose
    /// parent holds `queue/`.
    pub fn whole_disk(&self, major: u32, minor: u32) -> Option<PathBuf> {
        let dev = std::fs::canonicalize(self.sys.join(format!("dev/block/{major}:{minor}"))).ok()?;
        if dev.join("partition").exists() {
            dev.parent().map(Path::to_path_buf)
        } else {
            Some(dev)
        }
    }
}

fn is_pci_address(name: &str) -> bool {
    // 0000:00:03.0
    let b = name.as_bytes();
    b.len() == 12 && b[4] == b':' && b[7] == b':' && b[10] == b'.'
}

/// (soft, hard) of a resource limit; `RLIM_INFINITY` as u64::MAX.
pub fn rlimit(resource: libc::__rlimit_resource_t) -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct passed.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Whether this process holds a capability (CapEff in /proc/self/status).
pub fn has_capability(roots: &Roots, cap: u32) -> bool {
    let Some(status) = read(&roots.proc_file("self/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| cap < 64 && mask & (1 << cap) != 0)
}

/// Creates a tiny io_uring (4 entries) and closes it; the errno on failure.
pub fn probe_io_uring() -> Result<(), i32> {
    // struct io_uring_params is 120 bytes; zeroed asks for defaults.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes the params struct, whose
    // size matches the kernel's; the returned fd is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO));
    }
    // SAFETY: fd was just returned by io_uring_setup and is ours alone.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// `dir` if it exists, else its nearest existing ancestor (made absolute).
pub fn nearest_existing(dir: &Path) -> PathBuf {
    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|c| c.join(dir))
            .unwrap_or_else(|_| dir.to_path_buf())
    };
    let mut at = absolute.as_path();
    loop {
        if let Ok(canonical) = std::fs::canonicalize(at) {
            return canonical;
        }
        match at.parent() {
            Some(parent) => at = parent,
            None => return PathBuf::from("/"),
        }
    }
}

/// Writes one 4 KiB-aligned block with O_DIRECT to a new file in `dir`
/// and removes it; the errno of the first step that failed.
pub fn probe_o_direct(dir: &Path) -> Result<(), i32> {
    use std::io::Write;
    const BLOCK_BYTES: usize = 4096;
    let path = dir.join(format!(".shardlog-tune-odirect-{}", std::process::id()));
    let errno = |e: io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(errno)?;
    let layout = std::alloc::Layout::from_size_align(BLOCK_BYTES, BLOCK_BYTES).map_err(|_| libc::EINVAL)?;
    // SAFETY: the layout has a non-zero size; the block is freed below.
    let block = unsafe { std::alloc::alloc_zeroed(layout) };
    let result = if block.is_null() {
        Err(libc::ENOMEM)
    } else {
        // SAFETY: block points at BLOCK_BYTES zeroed bytes we own.
        let bytes = unsafe { std::slice::from_raw_parts(block, BLOCK_BYTES) };
        let written = file.write_all(bytes).map_err(errno);
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(block, layout) };
        written
    };
    drop(file);
    let removed = std::fs::remove_file(&path).map_err(errno);
    result.and(removed)
}

/// The filesystem magic of the filesystem holding `dir` (statfs f_type).
pub fn statfs_type(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: statfs writes only the struct passed; c_path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as u64)
}

/// Names of the statfs magics a data dir may sit on (mountinfo is preferred:
/// it tells ext4 from ext2/3, which share a magic).
pub fn fs_magic_name(magic: u64) -> Option<&'static str> {
    Some(match magic {
        0x5846_5342 => "xfs",
        0xEF53 => "ext4",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlay",
        0x6969 => "nfs",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        _ => return None,
    })
}

/// The host's kernel release and machine (uname).
pub fn uname() -> (String, String) {
    // SAFETY: uname writes only the struct passed.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return (String::new(), String::new());
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (field(&u.release), field(&u.machine))
}

/// CPUs this process may run on, in order: the cores shards are pinned to
/// (shard i on the i-th, as `server::run` places them via core_affinity).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity writes only the set passed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: cpu is below CPU_SETSIZE.
        .filter(|cpu| unsafe { libc::CPU_ISSET(*cpu, &set) })
        .collect()
}
