//! A real Linux guest for tests that boot something: Debian bookworm with its stock
//! kernel, systemd and `qemu-guest-agent`, on a GPT disk image, built from Debian's
//! packages only (no image downloads).
//!
//! `debootstrap --variant=minbase` makes the tree; `mkfs.ext4 -d` turns it into a file
//! system without mounting anything, written at 1 MiB into a raw disk whose GPT
//! `sgdisk` writes. The guest is made small and quick to boot: no documentation or
//! locales, only the kernel modules a virtio guest uses, an initrd of just those
//! (`MODULES=list`), and a unit that prints [`READY_MARKER`] on the serial console once
//! `multi-user.target` is reached. `qemu-guest-agent` starts when its virtio-serial
//! port appears (Debian's udev rule), with `--fsfreeze-hook`: the hook runs every
//! script in `/etc/qemu/fsfreeze-hook.d/`, and the guest's one prints
//! [`FSFREEZE_MARKER`] and the action on the serial console and appends it to
//! [`FSFREEZE_LOG`], so a test sees the freeze from inside the guest (the line written
//! before a freeze is in the snapshot taken during it). A virtio NIC, when the guest
//! has one, gets its address by DHCP (`systemd-networkd`), and a socket unit listens on
//! [`GUEST_TCP_PORT`]. The kernel and initrd are also kept beside the images, to boot
//! the guest directly.
//!
//! Building takes a few minutes, so the images are built once per machine and kept in
//! [`cache_dir`] under [`GUEST_VERSION`]: a change to the recipe must change the
//! version. An exclusive `flock` serialises builders across threads and processes
//! (tests, CI), and a build is renamed into place only when complete.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::FixtureError;
use crate::process::run;

/// Version of the recipe; the cache folder is named after it.
pub const GUEST_VERSION: &str = "bookworm-3";
/// What the guest prints on its serial console when it is up.
pub const READY_MARKER: &str = "HAVEN-GUEST-READY";
/// What the guest's fsfreeze hook prints on the serial console, followed by the
/// agent's action (`freeze`, `thaw`).
pub const FSFREEZE_MARKER: &str = "HAVEN-FSFREEZE";
/// Where in the guest the hook also appends its lines.
pub const FSFREEZE_LOG: &str = "/var/log/haven-fsfreeze.log";
/// The TCP port a service of the guest listens on (a systemd socket unit echoing what
/// it gets), for boot checks of a guest port: the guest brings up any virtio NIC it
/// has with DHCP (`systemd-networkd`).
pub const GUEST_TCP_PORT: u16 = 7777;
/// Size of the disk images (sparse; about 200 MiB of it holds data).
pub const DISK_SIZE: u64 = 1024 * 1024 * 1024;
/// Where the root partition starts.
pub const PARTITION_START: u64 = 1024 * 1024;
/// The guest's kernel command line besides the consoles.
pub const KERNEL_ROOT: &str = "root=/dev/vda1 ro";
/// Packages besides `minbase`.
const PACKAGES: &str = "linux-image-amd64,systemd-sysv,udev,qemu-guest-agent";
/// Kernel module folders kept (below `kernel/`); the rest is removed.
const KEPT_MODULES: &[&str] = &[
    "drivers/block",
    "drivers/virtio",
    "drivers/char",
    "drivers/tty",
    "drivers/input",
    "drivers/net/virtio_net.ko",
    "drivers/net/net_failover.ko",
    "net/core/failover.ko",
    "drivers/scsi",
    "drivers/base",
    "fs/ext4",
    "fs/jbd2",
    "fs/mbcache.ko",
    "lib",
    "crypto",
    "block",
];
const DEBOOTSTRAP_HINT: &str = "the debootstrap package (scripts/install-deps.sh)";
const GPT_HINT: &str = "the gdisk package (scripts/install-files-deps.sh)";
const E2FS_HINT: &str = "the e2fsprogs package";

/// The cached images of the test guest.
#[derive(Debug, Clone)]
pub struct GuestImages {
    /// A raw GPT disk whose partition 1 holds the whole guest; it boots to
    /// [`READY_MARKER`] with `root=/dev/vda1` and the kernel in its `/boot`.
    pub bootable: PathBuf,
    /// The same disk with only `/boot` left on the partition (kernel and initrd, no
    /// root file system): the kernel starts, then the initrd finds no init.
    pub no_root: PathBuf,
    /// The guest's kernel, to boot it directly (`-kernel`, with [`KERNEL_ROOT`]).
    pub kernel: PathBuf,
    /// Its initrd.
    pub initrd: PathBuf,
}

/// Where the images are kept: `$HAVEN_TEST_GUEST_CACHE`, else `/var/tmp/haven-test-guest`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("HAVEN_TEST_GUEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/haven-test-guest"))
}

/// The test guest's images, built first if this machine has none of this version.
/// Blocking (minutes on the first call).
pub fn test_guest() -> Result<GuestImages, FixtureError> {
    let root = cache_dir();
    std::fs::create_dir_all(&root).map_err(FixtureError::io(format!(
        "cannot create {}",
        root.display()
    )))?;
    let done = root.join(GUEST_VERSION);
    let images = GuestImages {
        bootable: done.join("bootable.raw"),
        no_root: done.join("no-root.raw"),
        kernel: done.join("vmlinuz"),
        initrd: done.join("initrd.img"),
    };
    let lock_path = root.join(format!("{GUEST_VERSION}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(FixtureError::io(format!(
            "cannot open {}",
            lock_path.display()
        )))?;
    // SAFETY: flock on a descriptor this function owns; released when `lock` closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(FixtureError::io(format!(
            "cannot lock {}",
            lock_path.display()
        ))(std::io::Error::last_os_error()));
    }
    if done.is_dir() {
        return Ok(images);
    }
    let work = root.join(format!("{GUEST_VERSION}.building"));
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(FixtureError::io(format!(
            "cannot remove {}",
            work.display()
        )))?;
    }
    std::fs::create_dir_all(&work).map_err(FixtureError::io(format!(
        "cannot create {}",
        work.display()
    )))?;
    build(&work)?;
    std::fs::rename(&work, &done).map_err(FixtureError::io(format!(
        "cannot move {} into place",
        work.display()
    )))?;
    Ok(images)
}

/// Builds both images in `work` (leaving only them there).
fn build(work: &Path) -> Result<(), FixtureError> {
    let tree = work.join("tree");
    let mut debootstrap = Command::new("debootstrap");
    debootstrap
        .args([
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            "bookworm",
        ])
        .arg(&tree)
        .arg(debian_mirror());
    run(&mut debootstrap, DEBOOTSTRAP_HINT)?;
    let version = kernel_version(&tree)?;
    slim_modules(&tree, &version)?;
    configure(&tree)?;
    run(
        Command::new("chroot").arg(&tree).args(["depmod", &version]),
        "coreutils (chroot)",
    )?;
    run(
        Command::new("chroot")
            .arg(&tree)
            .args(["update-initramfs", "-u", "-k", &version]),
        "coreutils (chroot)",
    )?;
    for folder in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
        "var/cache/apt",
        "var/lib/apt/lists",
    ] {
        let path = tree.join(folder);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(FixtureError::io(format!(
                "cannot remove {}",
                path.display()
            )))?;
        }
    }
    for (from, to) in [
        (format!("boot/vmlinuz-{version}"), "vmlinuz"),
        (format!("boot/initrd.img-{version}"), "initrd.img"),
    ] {
        std::fs::copy(tree.join(&from), work.join(to))
            .map_err(FixtureError::io(format!("cannot copy {from}")))?;
    }
    write_disk(&tree, &work.join("bootable.raw"))?;

    // The same /boot on an otherwise empty file system.
    let boot_only = work.join("boot-only");
    std::fs::create_dir_all(&boot_only).map_err(FixtureError::io(format!(
        "cannot create {}",
        boot_only.display()
    )))?;
    run(
        Command::new("cp")
            .arg("-a")
            .arg(tree.join("boot"))
            .arg(&boot_only),
        "coreutils",
    )?;
    write_disk(&boot_only, &work.join("no-root.raw"))?;
    for folder in [&tree, &boot_only] {
        std::fs::remove_dir_all(folder).map_err(FixtureError::io(format!(
            "cannot remove {}",
            folder.display()
        )))?;
    }
    Ok(())
}

/// The Debian mirror the machine already uses (first `URIs:` line of
/// `/etc/apt/sources.list.d/debian.sources` that is not the security archive).
fn debian_mirror() -> String {
    std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .ok()
        .and_then(|sources| {
            sources
                .lines()
                .filter_map(|line| line.strip_prefix("URIs:"))
                .flat_map(str::split_whitespace)
                .find(|uri| !uri.contains("security"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// The one kernel version installed in `tree`.
fn kernel_version(tree: &Path) -> Result<String, FixtureError> {
    let modules = tree.join("usr/lib/modules");
    let mut versions: Vec<String> = std::fs::read_dir(&modules)
        .map_err(FixtureError::io(format!(
            "cannot list {}",
            modules.display()
        )))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    versions.pop().ok_or_else(|| {
        FixtureError::io(format!("no kernel in {}", modules.display()))(
            std::io::ErrorKind::NotFound.into(),
        )
    })
}

/// Removes every kernel module a virtio guest does not load (400 MiB → 60 MiB).
fn slim_modules(tree: &Path, version: &str) -> Result<(), FixtureError> {
    let kernel = tree.join("usr/lib/modules").join(version).join("kernel");
    let kept = kernel.with_file_name("kernel.kept");
    for path in KEPT_MODULES {
        let from = kernel.join(path);
        if !from.exists() {
            continue;
        }
        let to = kept.join(path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(FixtureError::io(format!(
                "cannot create {}",
                parent.display()
            )))?;
        }
        std::fs::rename(&from, &to)
            .map_err(FixtureError::io(format!("cannot move {}", from.display())))?;
    }
    std::fs::remove_dir_all(&kernel).map_err(FixtureError::io(format!(
        "cannot remove {}",
        kernel.display()
    )))?;
    std::fs::rename(&kept, &kernel)
        .map_err(FixtureError::io(format!("cannot move {}", kept.display())))
}

/// Host name, fstab, a small initrd, the unit that announces the guest is up, the
/// guest agent's fsfreeze hook, DHCP on a NIC and a listening TCP port.
fn configure(tree: &Path) -> Result<(), FixtureError> {
    let files: &[(&str, String)] = &[
        ("etc/hostname", "haven-guest\n".into()),
        (
            "etc/fstab",
            "/dev/vda1 / ext4 errors=remount-ro 0 1\n".into(),
        ),
        (
            "etc/initramfs-tools/conf.d/haven-test-guest.conf",
            "MODULES=list\n".into(),
        ),
        (
            "etc/initramfs-tools/modules",
            "virtio_pci\nvirtio_blk\next4\n".into(),
        ),
        (
            "etc/systemd/system/haven-ready.service",
            format!(
                "[Unit]\nDescription=Tell the host the guest is up\nAfter=multi-user.target\n\
                 [Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo {READY_MARKER} > /dev/ttyS0'\n\
                 [Install]\nWantedBy=multi-user.target\n"
            ),
        ),
        (
            // Runs every script of fsfreeze-hook.d with the agent's action, as QEMU's
            // sample hook does; written here so the recipe does not depend on whether
            // the package installs one.
            "etc/qemu/fsfreeze-hook",
            "#!/bin/sh\nstatus=0\nfor hook in /etc/qemu/fsfreeze-hook.d/*; do\n  \
             [ -x \"$hook\" ] || continue\n  \"$hook\" \"$@\" || status=$?\ndone\nexit $status\n"
                .into(),
        ),
        (
            "etc/qemu/fsfreeze-hook.d/haven-log",
            format!(
                "#!/bin/sh\necho \"{FSFREEZE_MARKER} $1\" > /dev/ttyS0\n\
                 echo \"{FSFREEZE_MARKER} $1 $(date +%s)\" >> {FSFREEZE_LOG}\nsync {FSFREEZE_LOG}\n"
            ),
        ),
        (
            "etc/systemd/network/20-haven-dhcp.network",
            "[Match]\nName=en* eth*\n[Network]\nDHCP=ipv4\n".into(),
        ),
        (
            "etc/systemd/system/haven-echo.socket",
            format!(
                "[Unit]\nDescription=A TCP port for boot checks\n[Socket]\n\
                 ListenStream={GUEST_TCP_PORT}\nAccept=yes\n[Install]\nWantedBy=sockets.target\n"
            ),
        ),
        (
            "etc/systemd/system/haven-echo@.service",
            "[Unit]\nDescription=Echo one connection\n[Service]\nExecStart=/bin/cat\n\
             StandardInput=socket\n"
                .into(),
        ),
        (
            "etc/systemd/system/qemu-guest-agent.service.d/fsfreeze-hook.conf",
            "[Service]\nExecStart=\nExecStart=/usr/sbin/qemu-ga --fsfreeze-hook=/etc/qemu/fsfreeze-hook\n"
                .into(),
        ),
    ];
    for (path, content) in files {
        let path = tree.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(FixtureError::io(format!(
                "cannot create {}",
                parent.display()
            )))?;
        }
        std::fs::write(&path, content)
            .map_err(FixtureError::io(format!("cannot write {}", path.display())))?;
        if path.starts_with(tree.join("etc/qemu")) {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(FixtureError::io(format!("cannot chmod {}", path.display())))?;
        }
    }
    for (target, unit) in [
        (
            "multi-user.target",
            "/etc/systemd/system/haven-ready.service",
        ),
        (
            "multi-user.target",
            "/lib/systemd/system/systemd-networkd.service",
        ),
        (
            "sockets.target",
            "/lib/systemd/system/systemd-networkd.socket",
        ),
        ("sockets.target", "/etc/systemd/system/haven-echo.socket"),
    ] {
        let wants = tree.join(format!("etc/systemd/system/{target}.wants"));
        std::fs::create_dir_all(&wants).map_err(FixtureError::io(format!(
            "cannot create {}",
            wants.display()
        )))?;
        let name = Path::new(unit).file_name().unwrap_or_default();
        let link = wants.join(name);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(unit, &link)
                .map_err(FixtureError::io(format!("cannot link {}", link.display())))?;
        }
    }
    Ok(())
}

/// A raw GPT disk of [`DISK_SIZE`] at `disk` with one Linux partition holding an ext4
/// file system made from `tree`, without mounting anything.
fn write_disk(tree: &Path, disk: &Path) -> Result<(), FixtureError> {
    let partition = disk.with_extension("part");
    let partition_size = DISK_SIZE - 2 * PARTITION_START;
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "haven-root", "-d"])
            .arg(tree)
            .arg(&partition)
            .arg(format!("{}k", partition_size / 1024)),
        E2FS_HINT,
    )?;
    let file = std::fs::File::create(disk).map_err(FixtureError::io(format!(
        "cannot create {}",
        disk.display()
    )))?;
    file.set_len(DISK_SIZE)
        .map_err(FixtureError::io(format!("cannot size {}", disk.display())))?;
    drop(file);
    let first = PARTITION_START / 512;
    let last = first + partition_size / 512 - 1;
    run(
        Command::new("sgdisk")
            .args([
                "-n",
                &format!("1:{first}:{last}"),
                "-t",
                "1:8300",
                "-c",
                "1:root",
            ])
            .arg(disk),
        GPT_HINT,
    )?;
    copy_sparse(&partition, disk, PARTITION_START)?;
    std::fs::remove_file(&partition).map_err(FixtureError::io(format!(
        "cannot remove {}",
        partition.display()
    )))
}

/// Copies `from` into `to` at `offset`, skipping all-zero blocks (the disk stays sparse).
fn copy_sparse(from: &Path, to: &Path, offset: u64) -> Result<(), FixtureError> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let mut input = std::fs::File::open(from)
        .map_err(FixtureError::io(format!("cannot open {}", from.display())))?;
    let mut output = std::fs::OpenOptions::new()
        .write(true)
        .open(to)
        .map_err(FixtureError::io(format!("cannot open {}", to.display())))?;
    let mut block = vec![0u8; 1024 * 1024];
    let mut position = offset;
    loop {
        let mut filled = 0;
        while filled < block.len() {
            let read = input
                .read(&mut block[filled..])
                .map_err(FixtureError::io(format!("cannot read {}", from.display())))?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        if filled == 0 {
            break;
        }
        if block[..filled].iter().any(|byte| *byte != 0) {
            output
                .write_all_at(&block[..filled], position)
                .map_err(FixtureError::io(format!("cannot write {}", to.display())))?;
        }
        position += filled as u64;
    }
    output
        .flush()
        .and_then(|()| output.sync_all())
        .map_err(FixtureError::io(format!("cannot sync {}", to.display())))
}
