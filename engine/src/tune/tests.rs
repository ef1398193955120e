//! Unit tests of the pure decisions (`checks`) and of `--apply` against a
//! fake /proc tree.

use super::checks::*;
use super::*;

#[test]
fn bracketed_choice_is_the_selected_one_and_garbage_is_none() {
    assert_eq!(bracketed("always [madvise] never\n"), Some("madvise"));
    assert_eq!(bracketed("none [mq-deadline] kyber bfq"), Some("mq-deadline"));
    assert_eq!(bracketed("[]"), None);
    assert_eq!(bracketed(""), None);
    assert_eq!(choices("[none] mq-deadline"), vec!["none", "mq-deadline"]);
}

#[test]
fn cpu_lists_parse_ranges_and_reject_garbage() {
    assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
    assert_eq!(parse_cpu_list("1"), Some(vec![1]));
    assert_eq!(parse_cpu_list("3-1"), None);
    assert_eq!(parse_cpu_list("0-99999999"), None);
    assert_eq!(parse_cpu_list("x"), None);
    assert_eq!(format_cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
}

#[test]
fn kernel_version_reads_major_and_minor() {
    assert_eq!(parse_kernel_version("6.18.44-fc-v1147"), Some((6, 18)));
    assert_eq!(parse_kernel_version("5.4"), Some((5, 4)));
    assert_eq!(parse_kernel_version("junk"), None);
}

const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw
40 27 259:3 / /var/lib/shard\\040log rw,noatime shared:5 - xfs /dev/nvme0n1p1 rw
not a mountinfo line
";

#[test]
fn mount_for_picks_the_longest_mount_point_prefix() {
    let mounts = parse_mountinfo(MOUNTINFO);
    assert_eq!(mounts.len(), 4);
    let m = mount_for(&mounts, "/var/lib/shard log/data").unwrap();
    assert_eq!((m.major, m.minor, m.fstype.as_str()), (259, 3, "xfs"));
    assert_eq!(m.source, "/dev/nvme0n1p1");
    assert_eq!(mount_for(&mounts, "/var/lib/shard").unwrap().fstype, "ext4");
    assert_eq!(mount_for(&mounts, "/dev/shm").unwrap().fstype, "tmpfs");
    assert_eq!(mount_for(&mounts, "/").unwrap().fstype, "ext4");
}

const INTERRUPTS: &str = "\
           CPU0       CPU1
 26:          0         13  IO-APIC   4-edge      ttyS0
 36:          0      15587 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
 37:          0          0 PCI-MSIX-0000:00:03.0   0-edge      virtio2-config
 38:          0       1501 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0
 39:        912          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0
 90:          1          2 IR-PCI-MSI 1-edge  eth1-TxRx-0
 91:          1          2 IR-PCI-MSI 2-edge  mlx5_comp0@pci:0000:3b:00.0
NMI:          0          0   Non-maskable interrupts
";

#[test]
fn nic_irqs_are_the_interfaces_queues_not_disks_or_config_vectors() {
    let rows = parse_interrupts(INTERRUPTS);
    assert_eq!(rows.len(), 7);
    let tokens = vec![
        "eth0".to_string(),
        "virtio2".to_string(),
        "0000:00:03.0".to_string(),
    ];
    assert_eq!(nic_irqs(&rows, &tokens), vec![38, 39]);
    let tokens = vec!["eth1".to_string(), "0000:3b:00.0".to_string()];
    assert_eq!(nic_irqs(&rows, &tokens), vec![90, 91]);
    assert!(nic_irqs(&rows, &[]).is_empty());
}

#[test]
fn irq_affinity_warns_only_when_irqs_share_shard_cores_and_free_cores_exist() {
    let irqs = vec![(38, "0-1\n".to_string())];
    assert_eq!(irq_affinity(&irqs, &[0, 1], &[0, 1]).status, Status::Ok);
    assert_eq!(irq_affinity(&irqs, &[0], &[0, 1]).status, Status::Warn);
    let elsewhere = vec![(38, "2-3".to_string())];
    assert_eq!(
        irq_affinity(&elsewhere, &[0, 1], &[0, 1, 2, 3]).status,
        Status::Ok
    );
    assert_eq!(irq_affinity(&[], &[0], &[0, 1]).status, Status::Skip);
}

#[test]
fn io_uring_fails_when_setup_fails_and_warns_when_restricted() {
    let ok = io_uring(Some((6, 18)), Some("0\n"), Ok(()));
    assert_eq!(ok.status, Status::Ok);
    assert_eq!(io_uring(Some((6, 1)), None, Ok(())).status, Status::Ok);
    assert_eq!(io_uring(Some((6, 6)), Some("1"), Ok(())).status, Status::Warn);
    let disabled = io_uring(Some((6, 6)), Some("2"), Err(libc::EPERM));
    assert_eq!(disabled.status, Status::Fail);
    assert!(disabled.found.contains("io_uring_disabled=2"));
    assert_eq!(io_uring(Some((5, 4)), None, Ok(())).status, Status::Fail);
    assert_eq!(io_uring(None, Some("garbage"), Ok(())).status, Status::Warn);
}

#[test]
fn memlock_wants_three_registered_arenas_per_shard() {
    assert_eq!(memlock_per_shard_bytes(), 32 << 20);
    assert_eq!(memlock(64 << 20, 64 << 20, 2, false).status, Status::Ok);
    let short = memlock(8 << 20, 8 << 20, 2, false);
    assert_eq!(short.status, Status::Warn);
    assert!(short.advice.unwrap().contains("LimitMEMLOCK=64M"));
    assert_eq!(memlock(8 << 20, 8 << 20, 2, true).status, Status::Ok);
    assert_eq!(memlock(256 << 10, 8 << 20, 1, true).status, Status::Fail);
    assert_eq!(memlock(u64::MAX, u64::MAX, 64, false).status, Status::Ok);
}

#[test]
fn nofile_judges_the_hard_limit_the_broker_raises_to() {
    assert_eq!(nofile(1024, 20_000, 11_408, "x").status, Status::Ok);
    let low = nofile(1024, 4096, 11_408, "x");
    assert_eq!(low.status, Status::Fail);
    assert!(low.advice.unwrap().contains("LimitNOFILE=11408"));
    assert_eq!(
        nofile(u64::MAX, u64::MAX, 11_408, "x").found,
        "soft unlimited hard unlimited"
    );
}

#[test]
fn filesystem_xfs_ok_ext4_warned_with_the_measured_figures() {
    assert_eq!(fs_type("xfs").status, Status::Ok);
    let ext4 = fs_type("ext4");
    assert_eq!(ext4.status, Status::Warn);
    assert!(ext4.why.contains("634 MB/s") && ext4.why.contains("429 MB/s"));
    assert_eq!(fs_type("tmpfs").status, Status::Warn);
    assert_eq!(o_direct("/d", Ok(())).status, Status::Ok);
    assert_eq!(o_direct("/d", Err(libc::EINVAL)).status, Status::Fail);
    assert_eq!(o_direct("/d", Err(libc::EACCES)).status, Status::Skip);
}

#[test]
fn block_queue_scheduler_and_depth() {
    assert_eq!(
        scheduler("vda", "none [mq-deadline] kyber bfq", Some(false)).status,
        Status::Ok
    );
    assert_eq!(
        scheduler("vda", "[none] mq-deadline", Some(false)).status,
        Status::Ok
    );
    let bfq = scheduler("sda", "none mq-deadline kyber [bfq]", Some(false));
    assert_eq!((bfq.status, bfq.fix.as_deref()), (Status::Warn, Some("none")));
    let hdd = scheduler("sda", "none mq-deadline [bfq]", Some(true));
    assert_eq!(hdd.fix.as_deref(), Some("mq-deadline"));
    assert_eq!(scheduler("x", "", None).status, Status::Skip);
    assert_eq!(nr_requests("vda", "256\n").status, Status::Ok);
    assert_eq!(nr_requests("vda", "64").fix.as_deref(), Some("128"));
    assert_eq!(nr_requests("vda", "?").status, Status::Skip);
}

#[test]
fn sysctl_decisions_and_their_fixes() {
    assert_eq!(thp("always [madvise] never").status, Status::Ok);
    assert_eq!(thp("[always] madvise never").fix.as_deref(), Some("madvise"));
    assert_eq!(thp("").status, Status::Skip);
    assert_eq!(swappiness("60\n").fix.as_deref(), Some("1"));
    assert_eq!(swappiness("1").status, Status::Ok);
    assert_eq!(swappiness("0").status, Status::Ok);
    assert_eq!(swappiness("-").status, Status::Skip);
    assert_eq!(somaxconn("128", 50).fix.as_deref(), Some("4096"));
    assert_eq!(somaxconn("4096", 50).status, Status::Ok);
    assert_eq!(somaxconn("4096", 8192).fix.as_deref(), Some("8192"));
    assert_eq!(socket_buffer_max("212992").fix.as_deref(), Some("2097152"));
    assert_eq!(
        tcp_mem_max("4096\t16384\t1048576").fix.as_deref(),
        Some("4096 16384 2097152")
    );
    assert_eq!(tcp_mem_max("4096 131072 33554432").status, Status::Ok);
    assert_eq!(tcp_mem_max("1 2").status, Status::Skip);
    assert_eq!(aio_max_nr("65536").status, Status::Warn);
    assert_eq!(aio_max_nr("1048576").status, Status::Ok);
}

#[test]
fn governor_and_clocksource() {
    assert_eq!(governor(&[]).status, Status::Skip);
    let mixed = governor(&[(0, "performance\n".into()), (1, "powersave\n".into())]);
    assert_eq!(mixed.status, Status::Warn);
    assert!(mixed.found.contains("cpus 1"));
    assert_eq!(clocksource("tsc\n", "tsc hpet", false).status, Status::Ok);
    assert_eq!(clocksource("kvm-clock", "tsc kvm-clock", true).status, Status::Ok);
    assert_eq!(clocksource("kvm-clock", "kvm-clock", false).status, Status::Warn);
    assert_eq!(clocksource("hpet", "hpet acpi_pm", false).status, Status::Warn);
}

fn fake_context(proc_root: &Path) -> Context {
    Context {
        roots: Roots {
            proc: proc_root.to_path_buf(),
            sys: proc_root.join("no-sys"),
        },
        config: BrokerConfig::load(None, &[]).unwrap(),
        probe_dir: proc_root.to_path_buf(),
        mount: None,
        kernel_release: "6.18.0".into(),
    }
}

#[test]
fn apply_changes_a_sysctl_once_and_then_reports_ok() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sys/vm/swappiness");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "60\n").unwrap();
    let ctx = fake_context(dir.path());

    let checked = run_check(&ctx, "vm.swappiness", false);
    assert_eq!((checked.status, checked.changed), (Status::Warn, false));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "60\n");

    let first = run_check(&ctx, "vm.swappiness", true);
    assert_eq!((first.status, first.changed), (Status::Ok, true));
    assert_eq!(first.previous.as_deref(), Some("60"));
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), "1");

    let second = run_check(&ctx, "vm.swappiness", true);
    assert_eq!(
        (second.status, second.changed, second.previous),
        (Status::Ok, false, None)
    );
}

#[test]
fn apply_without_permission_reports_the_error_and_keeps_the_warning() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = fake_context(dir.path());
    let missing = run_check(&ctx, "fs.aio-max-nr", true);
    assert_eq!((missing.status, missing.changed), (Status::Skip, false));
    if nix_is_root() {
        // root writes whatever the mode bits say; nothing to refuse it.
        return;
    }
    let file = dir.path().join("sys/net/core/somaxconn");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "128\n").unwrap();
    let mut perms = std::fs::metadata(&file).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(&file, perms).unwrap();
    let report = run_check(&ctx, "net.core.somaxconn", true);
    assert_eq!((report.status, report.changed), (Status::Warn, false));
    assert!(report.error.unwrap().contains("no permission"));
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn unknown_only_name_and_bad_set_are_usage_errors() {
    let args = |only: &[&str], set: &[&str]| TuneArgs {
        check: true,
        apply: false,
        json: true,
        config: None,
        set: set.iter().map(|s| s.to_string()).collect(),
        data_dir: None,
        shards: None,
        only: only.iter().map(|s| s.to_string()).collect(),
    };
    assert!(run_inner(args(&["nope"], &[]), Roots::default()).is_err());
    assert!(run_inner(args(&["thp"], &["no-equals"]), Roots::default()).is_err());
    assert!(run_inner(args(&["thp"], &["num.partitions=zero"]), Roots::default()).is_err());
}
