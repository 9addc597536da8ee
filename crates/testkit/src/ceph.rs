//! Ceph RGW (<https://docs.ceph.com/en/pacific/radosgw/>), the S3 gateway of Ceph, as a
//! real S3 implementation other than Haven's own node: a one-host cluster in a
//! temporary directory — one monitor on a loopback port, one OSD on `memstore` (objects
//! in memory: no disk to prepare), pools of size 1, no cephx — and one `radosgw` on
//! another loopback port, with a user whose keys are [`ACCESS_KEY`] and [`SECRET_KEY`].
//! Every daemon runs in the foreground under a [`ChildGuard`], so dropping the fixture
//! kills them before the directory goes.
//!
//! The programs are Debian's (`ceph-mon`, `ceph-osd`, `radosgw`, 16.2), installed by
//! `scripts/install-deps.sh`; `HAVEN_CEPH_BIN` names another directory holding them.
//!
//! Start-up, about 1.5 s on an idle machine, avoids the `ceph` command line: the
//! monitor is created with an OSD map that already holds `osd.0` in the CRUSH tree
//! (`osdmaptool --createsimple 1`), and the OSD is told not to register itself at
//! start. Both matter beyond speed: without cephx a client may send its first monitor
//! command before it has the monitor map, with a zero cluster id, and the monitor
//! refuses it (`wrong fsid`, or `EPERM: problem getting command descriptions` from the
//! `ceph` tool) — the OSD's self-registration failed that way every time here.
//! `radosgw-admin user create` then waits until the OSD serves (it creates RGW's pools
//! and writes to them), bounded by the client timeouts of the configuration.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::FixtureError;
use crate::process::{ChildGuard, free_port, is_listening, run, wait_until};
use crate::s3_account::S3Account;

/// The region in repository URLs: RGW's zonegroup is named `default`, and it takes
/// signatures of any region.
pub const REGION: &str = "default";
/// The access key of the RGW user made at start.
pub const ACCESS_KEY: &str = "haven-ceph-test-key";
/// Its secret.
pub const SECRET_KEY: &str = "haven-ceph-test-secret-0123456789";

const HINT: &str = "run scripts/install-deps.sh (Debian's ceph-mon, ceph-osd and radosgw)";
/// How long a daemon may take to listen, and how long a Ceph client waits for the
/// cluster (`client mount timeout`, `rados mon/osd op timeout`) before failing.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Log lines of each daemon shown when start-up fails.
const LOG_LINES: usize = 12;
/// The daemons, by Ceph name: their logs are `log/NAME.log` in the directory.
const DAEMONS: [&str; 3] = ["mon.a", "osd.0", "client.rgw"];

/// A running one-host Ceph cluster with an RGW.
#[derive(Debug)]
pub struct Ceph {
    rgw_port: u16,
    /// Declared before `dir`, gateway first: the daemons stop before their files go.
    rgw: ChildGuard,
    osd: ChildGuard,
    mon: ChildGuard,
    dir: tempfile::TempDir,
    started_in: Duration,
}

impl Ceph {
    /// Creates and starts the cluster, its gateway and the user. Blocking.
    pub fn start() -> Result<Self, FixtureError> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("haven-ceph-")
            .tempdir()
            .map_err(FixtureError::io("cannot create a directory for ceph"))?;
        let (mon_port, rgw_port) = (free_port()?, free_port()?);
        for sub in ["run", "log", "mon", "osd", "rgw"] {
            let path = dir.path().join(sub);
            std::fs::create_dir(&path).map_err(FixtureError::io(format!(
                "cannot create {}",
                path.display()
            )))?;
        }
        let fsid = uuid(&dir.path().join("fsid"))?;
        let conf = dir.path().join("ceph.conf");
        std::fs::write(&conf, config_text(dir.path(), &fsid, mon_port, rgw_port))
            .map_err(FixtureError::io(format!("cannot write {}", conf.display())))?;
        let ceph = |program: &str| ceph_command(dir.path(), program);

        let (monmap, osdmap) = (dir.path().join("monmap"), dir.path().join("osdmap"));
        let mon_address = format!("[v1:127.0.0.1:{mon_port}]");
        run(
            ceph("monmaptool")
                .args(["--create", "--fsid", &fsid, "--addv", "a", &mon_address])
                .arg(&monmap),
            HINT,
        )?;
        run(
            ceph("osdmaptool")
                .args(["--createsimple", "1", "--clobber"])
                .arg(&osdmap),
            HINT,
        )?;
        run(
            ceph("ceph-mon")
                .args(["--mkfs", "-i", "a", "--monmap"])
                .arg(&monmap)
                .arg("--osdmap")
                .arg(&osdmap),
            HINT,
        )?;
        let mut mon = spawn(
            ceph("ceph-mon").args(["-f", "-i", "a"]),
            dir.path(),
            "mon.a",
        )?;
        wait_listening("ceph-mon", &mut mon, mon_port, dir.path())?;

        let osd_uuid = uuid(&dir.path().join("osd-uuid"))?;
        run(
            ceph("ceph-osd").args(["--mkfs", "-i", "0", "--osd-uuid", &osd_uuid]),
            HINT,
        )?;
        let mut osd = spawn(
            ceph("ceph-osd").args(["-f", "-i", "0"]),
            dir.path(),
            "osd.0",
        )?;

        // Waits for the OSD: RGW's pools are created and written here.
        let user = run(
            ceph("radosgw-admin").args([
                "user",
                "create",
                "--uid",
                "haven",
                "--display-name",
                "Haven tests",
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
            ]),
            HINT,
        );
        if let Err(error) = user {
            let exited: Vec<String> = [osd.exit_status(), mon.exit_status()]
                .into_iter()
                .flatten()
                .collect();
            return Err(FixtureError::NotReady {
                what: "the Ceph cluster".into(),
                seconds: START_TIMEOUT.as_secs(),
                detail: format!("{error}; {}{}", exited.join("; "), logs(dir.path())),
            });
        }

        let mut rgw = spawn(
            ceph("radosgw").args(["-f", "-n", "client.rgw"]),
            dir.path(),
            "client.rgw",
        )?;
        wait_listening("radosgw", &mut rgw, rgw_port, dir.path())?;
        Ok(Self {
            rgw_port,
            rgw,
            osd,
            mon,
            dir,
            started_in: started.elapsed(),
        })
    }

    /// How long [`Ceph::start`] took, for the figures in docs/storage-node.md.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Creates `bucket` owned by the test user, with a signed `PUT /bucket` (`curl
    /// --aws-sigv4`: RGW has no administrative command that creates a bucket).
    pub fn create_bucket(&self, bucket: &str) -> Result<(), FixtureError> {
        // SHA-256 of the empty body: curl 7.88 signs without this header otherwise,
        // which RGW refuses (`SignatureDoesNotMatch`).
        const EMPTY_SHA256: &str =
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let status = run(
            Command::new("curl")
                .args(["--silent", "--show-error", "--request", "PUT"])
                .args(["--aws-sigv4", &format!("aws:amz:{REGION}:s3")])
                .args(["--user", &format!("{ACCESS_KEY}:{SECRET_KEY}")])
                .args(["--header", &format!("x-amz-content-sha256: {EMPTY_SHA256}")])
                .args(["--output", "/dev/null", "--write-out", "%{http_code}"])
                .arg(format!("{}/{bucket}", self.endpoint())),
            "install curl",
        )?;
        if status.trim() != "200" {
            return Err(FixtureError::Io {
                context: format!("cannot create bucket {bucket} on {}", self.endpoint()),
                source: std::io::Error::other(format!(
                    "RGW answered {}{}",
                    status.trim(),
                    logs(self.dir.path())
                )),
            });
        }
        Ok(())
    }

    /// The last lines of each daemon's log, for a failing test's message.
    pub fn logs(&self) -> String {
        logs(self.dir.path())
    }

    /// The process ids of the monitor, the OSD and the gateway while they run.
    pub fn pids(&self) -> Vec<u32> {
        [&self.mon, &self.osd, &self.rgw]
            .into_iter()
            .filter_map(ChildGuard::id)
            .collect()
    }

    /// The cluster's directory (configuration, daemon data and logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `program` (a Ceph tool or daemon) with the cluster's configuration and nothing from
/// the environment's Ceph settings.
fn ceph_command(dir: &Path, program: &str) -> Command {
    let program = match std::env::var_os("HAVEN_CEPH_BIN") {
        Some(bin) => PathBuf::from(bin).join(program),
        None => PathBuf::from(program),
    };
    let mut command = Command::new(program);
    command
        .arg("--conf")
        .arg(dir.join("ceph.conf"))
        .env_remove("CEPH_ARGS")
        .env_remove("CEPH_CONF");
    command
}

/// Starts the daemon `name` (in the foreground), its own output in `NAME.out`.
fn spawn(command: &mut Command, dir: &Path, name: &str) -> Result<ChildGuard, FixtureError> {
    ChildGuard::spawn(command, &dir.join(format!("{name}.out")), HINT)
}

/// Waits until `daemon` accepts connections on `port`; fails with the logs if it
/// exits first or takes longer than [`START_TIMEOUT`].
fn wait_listening(
    daemon: &str,
    child: &mut ChildGuard,
    port: u16,
    dir: &Path,
) -> Result<(), FixtureError> {
    wait_until(daemon, START_TIMEOUT, || match child.exit_status() {
        Some(exit) => Err(exit),
        None => Ok(is_listening(port)),
    })
    .map_err(|error| match error {
        FixtureError::NotReady {
            what,
            seconds,
            detail,
        } => FixtureError::NotReady {
            what,
            seconds,
            detail: format!("{detail}{}", logs(dir)),
        },
        other => other,
    })
}

/// A new random UUID (the kernel's), kept in `path` for a reader of the directory.
fn uuid(path: &Path) -> Result<String, FixtureError> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/uuid").map_err(
        FixtureError::io("cannot read a random UUID from the kernel"),
    )?;
    let text = text.trim().to_owned();
    std::fs::write(path, &text)
        .map_err(FixtureError::io(format!("cannot write {}", path.display())))?;
    Ok(text)
}

/// The last [`LOG_LINES`] of each daemon's log and of its own output, each under a
/// `== FILE` heading.
fn logs(dir: &Path) -> String {
    let mut text = String::new();
    for daemon in DAEMONS {
        for path in [
            dir.join("log").join(format!("{daemon}.log")),
            dir.join(format!("{daemon}.out")),
        ] {
            let Ok(content) = std::fs::read_to_string(&path) else {
                continue;
            };
            let lines: Vec<&str> = content.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_LINES)..];
            text.push_str(&format!("\n== {}\n{}", path.display(), tail.join("\n")));
        }
    }
    text
}

/// The whole cluster on loopback, without authentication (the tests' clients are
/// this process's children), one copy of every object, and the waits of a
/// multi-machine cluster shortened: monitor proposals every 10 ms instead of 1 s.
fn config_text(dir: &Path, fsid: &str, mon_port: u16, rgw_port: u16) -> String {
    let timeout = START_TIMEOUT.as_secs();
    format!(
        r#"[global]
fsid = {fsid}
mon host = v1:127.0.0.1:{mon_port}
public addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = {dir}/run
admin socket = {dir}/run/$cluster-$name.asok
log file = {dir}/log/$name.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
paxos propose interval = 0.01
client mount timeout = {timeout}
rados mon op timeout = {timeout}
rados osd op timeout = {timeout}

[mon.a]
mon data = {dir}/mon

[osd.0]
osd data = {dir}/osd
osd objectstore = memstore
memstore device bytes = 2147483648
osd class update on start = false
osd crush update on start = false

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {dir}/rgw
"#,
        dir = dir.display(),
    )
}

impl S3Account for Ceph {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.rgw_port)
    }

    fn region(&self) -> &'static str {
        REGION
    }

    fn keys(&self) -> (&'static str, &'static str) {
        (ACCESS_KEY, SECRET_KEY)
    }
}
