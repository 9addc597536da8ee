//! Harness shared by the libvirt tests: a private `virtlogd` + `libvirtd` (config, pid
//! files and client sockets in a temporary folder) and TCG domains with qcow2 disks,
//! all stopped, destroyed and undefined again by `Drop` guards.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::bed::Bed;
use super::image::to_qcow2;
use super::process::run;

/// Target names of the test domains' disks, in order.
pub const TARGETS: [&str; 2] = ["vda", "vdb"];

/// Stops a daemon by the pid in its pid file: SIGTERM, then SIGKILL after 5 s.
pub fn stop_by_pid_file(pid_file: &Path) {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<libc::pid_t>() else {
        return;
    };
    let alive = || Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid);
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive() {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn is_zombie(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// `virtlogd` and `libvirtd` started for this test. libvirtd's config, pid files and
/// client sockets are private (`unix_sock_dir`), so it never answers (or conflicts
/// with) a system libvirtd's clients; a privileged libvirtd still keeps its domain
/// state under /run/libvirt and /var/lib/libvirt, which the domain guard cleans.
/// `/dev/kvm` is made group-accessible while it runs (libvirtd probes it for 12–24 s
/// otherwise) and put back afterwards.
///
/// One at a time in the whole test binary: see [`ONE_LIBVIRT_AT_A_TIME`].
pub struct Libvirt {
    /// Config, pid files and client sockets.
    pub dir: tempfile::TempDir,
    /// `qemu:///system` through this daemon's private socket.
    pub uri: String,
    kvm_mode: Option<(u32, u32)>,
    /// Held until the daemons are stopped (fields drop after `Drop::drop`).
    _alone: MutexGuard<'static, ()>,
}

/// Serialises the tests that start a libvirtd. Each has private sockets and pid files,
/// but a privileged libvirtd and virtlogd still share what is global to the machine:
/// virtlogd's socket and the domain state under /run/libvirt and /var/lib/libvirt, and
/// [`Libvirt`] changes /dev/kvm's mode and puts it back when it stops, which would undo
/// another instance's change under it. When the tests were separate binaries they
/// never overlapped; in one binary they wait for each other here.
static ONE_LIBVIRT_AT_A_TIME: Mutex<()> = Mutex::new(());

impl Libvirt {
    /// Starts virtlogd and libvirtd, once no other test's are running.
    pub fn start() -> Self {
        // A test that failed while holding it leaves nothing behind (its guards ran).
        let alone = ONE_LIBVIRT_AT_A_TIME
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let dir = tempfile::Builder::new()
            .prefix("haven-libvirt-")
            .tempdir()
            .unwrap();
        let kvm_mode = std::fs::metadata("/dev/kvm").ok().map(|meta| {
            let original = (meta.mode() & 0o7777, meta.gid());
            let _ = Command::new("chgrp").args(["kvm", "/dev/kvm"]).status();
            let _ = std::fs::set_permissions("/dev/kvm", std::fs::Permissions::from_mode(0o660));
            original
        });
        let path = dir.path();
        let config = path.join("libvirtd.conf");
        std::fs::write(
            &config,
            format!(
                "unix_sock_dir = \"{}\"\nunix_sock_group = \"root\"\nunix_sock_rw_perms = \"0700\"\n\
                 auth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n",
                path.display()
            ),
        )
        .unwrap();
        let libvirt = Self {
            uri: format!(
                "qemu:///system?socket={}",
                path.join("libvirt-sock").display()
            ),
            dir,
            kvm_mode,
            _alone: alone,
        };
        let path = libvirt.dir.path().to_path_buf();
        let virtlogd_pid = path.join("virtlogd.pid");
        run(
            "virtlogd",
            &["--daemon", "--pid-file", virtlogd_pid.to_str().unwrap()],
        );
        let libvirtd_pid = path.join("libvirtd.pid");
        let started = Instant::now();
        run(
            "libvirtd",
            &[
                "--daemon",
                "--config",
                config.to_str().unwrap(),
                "--pid-file",
                libvirtd_pid.to_str().unwrap(),
            ],
        );
        // Ready when it answers.
        loop {
            let answer = Command::new("virsh")
                .args(["--connect", &libvirt.uri, "--quiet", "version"])
                .output()
                .unwrap();
            if answer.status.success() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "libvirtd does not answer: {}",
                String::from_utf8_lossy(&answer.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("libvirtd ready in {:?}", started.elapsed());
        libvirt
    }

    /// `virsh --connect URI --quiet ARGS`, which must succeed; returns stdout.
    pub fn virsh(&self, args: &[&str]) -> String {
        let mut all = vec!["--connect", self.uri.as_str(), "--quiet"];
        all.extend_from_slice(args);
        run("virsh", &all)
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        stop_by_pid_file(&self.dir.path().join("libvirtd.pid"));
        stop_by_pid_file(&self.dir.path().join("virtlogd.pid"));
        if let Some((mode, gid)) = self.kvm_mode {
            let _ = std::os::unix::fs::chown("/dev/kvm", None, Some(gid));
            let _ = std::fs::set_permissions("/dev/kvm", std::fs::Permissions::from_mode(mode));
        }
    }
}

/// A defined and started domain; destroyed and undefined (with its checkpoints'
/// metadata) on drop.
pub struct Domain<'a> {
    /// The daemon it runs under.
    pub libvirt: &'a Libvirt,
    /// The domain's name.
    pub name: String,
}

impl<'a> Domain<'a> {
    /// Defines and starts a TCG domain on `disks` (qcow2), its XML written in `dir`.
    pub fn start(libvirt: &'a Libvirt, name: &str, disks: &[PathBuf], dir: &Path) -> Self {
        let disk_xml: String = disks
            .iter()
            .zip(TARGETS)
            .map(|(path, target)| {
                format!(
                    "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
                     <source file='{}'/><target dev='{target}' bus='virtio'/></disk>",
                    path.display()
                )
            })
            .collect();
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='q35'>hvm</type></os>\
             <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{disk_xml}\
             <video><model type='none'/></video><memballoon model='none'/></devices></domain>"
        );
        let file = dir.join("domain.xml");
        std::fs::write(&file, xml).unwrap();
        // A domain left by an earlier, killed run of this test.
        let _ = Command::new("virsh")
            .args(["--connect", &libvirt.uri, "destroy", name])
            .output();
        let _ = Command::new("virsh")
            .args([
                "--connect",
                &libvirt.uri,
                "undefine",
                name,
                "--checkpoints-metadata",
            ])
            .output();
        libvirt.virsh(&["define", file.to_str().unwrap()]);
        let domain = Self {
            libvirt,
            name: name.to_string(),
        };
        let started = Instant::now();
        libvirt.virsh(&["start", name]);
        eprintln!("domain started in {:?}", started.elapsed());
        domain
    }

    /// Guest writes through the QEMU monitor's qemu-io on the virtio device.
    pub fn write(&self, disk: usize, pattern: u8, offset: u64, len: u64) {
        let command = format!(
            "qemu-io -d virtio-disk{disk}/virtio-backend \"write -P {pattern:#x} {offset} {len}\""
        );
        let out = self
            .libvirt
            .virsh(&["qemu-monitor-command", "--hmp", &self.name, &command]);
        assert!(
            !out.to_lowercase().contains("error") && !out.contains("failed"),
            "qemu-io: {out}"
        );
    }

    /// Names of the domain's checkpoints.
    pub fn checkpoints(&self) -> Vec<String> {
        self.libvirt
            .virsh(&["checkpoint-list", &self.name, "--name"])
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl<'a> Domain<'a> {
    /// Takes charge of a domain defined some other way (for example by `haven restore
    /// --libvirt-define`): destroyed and undefined on drop like the others.
    pub fn adopt(libvirt: &'a Libvirt, name: &str) -> Self {
        Self {
            libvirt,
            name: name.to_string(),
        }
    }
}

impl Drop for Domain<'_> {
    fn drop(&mut self) {
        for args in [
            vec!["destroy", self.name.as_str()],
            vec!["undefine", self.name.as_str(), "--checkpoints-metadata"],
        ] {
            let _ = Command::new("virsh")
                .args(["--connect", &self.libvirt.uri, "--quiet"])
                .args(&args)
                .output();
        }
    }
}

/// A test folder that QEMU (running as libvirt-qemu) can reach, holding a repository
/// with `chunk`-byte chunks, a `scratch` folder, and two disks of `disk_size` bytes
/// whose data is `extents(disk)`: returns the raw copies (what restores must equal)
/// and the qcow2 images the domain runs on.
pub fn two_disk_bed(
    chunk: u64,
    disk_size: u64,
    extents: impl Fn(u64) -> Vec<(u64, usize)>,
) -> (Bed, Vec<PathBuf>, Vec<PathBuf>) {
    let bed = Bed::new();
    std::fs::set_permissions(bed.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    bed.ok(&["repo", "init", "--chunk-size", &chunk.to_string()]);
    std::fs::create_dir(bed.path("scratch")).unwrap();
    let mut raws = Vec::new();
    let mut images = Vec::new();
    for disk in 0..2u64 {
        let raw = bed.raw_image(&format!("expected-{disk}.raw"), disk_size, &extents(disk));
        let qcow2 = bed.path(&format!("d{disk}.qcow2"));
        to_qcow2(&raw, &qcow2);
        raws.push(raw);
        images.push(qcow2);
    }
    (bed, raws, images)
}
