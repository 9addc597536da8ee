//! Garbage collection racing backups in cluster mode: a real etcd (with TLS and auth,
//! `Etcd::start_secured`), a coordinator and two workers; VMs whose disks change
//! between rounds; GC jobs (with the coordinator's pins from etcd plus the
//! repository's leases, margin 0) started again and again while policy rounds back up,
//! prune and replicate nothing else. Afterwards every snapshot verifies and restores
//! byte-identical to the disk at its round, and no unreferenced chunk or index is left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    cluster::{Cli, guest_copy, guest_io, init_repo, one_cluster_at_a_time, start_vm_with_nbd},
    etcd::Etcd,
    haven::{PASSWORD, haven},
    pki::Pki,
    process::{Guard, free_port, spawn_logged},
};

const VMS: usize = 3;
const ROUNDS: usize = 4;

struct Bed {
    cli: Cli,
    repo: String,
}

impl Bed {
    /// Runs a garbage collection job on the repository, without a margin, and waits
    /// for it to succeed.
    fn collect_garbage(&self) {
        let gc = self.cli.run(&[
            "job",
            "gc",
            "--repo",
            &self.repo,
            "--margin-seconds",
            "0",
            "--watch",
        ]);
        assert!(
            gc.status.success(),
            "gc job: {}{}",
            String::from_utf8_lossy(&gc.stdout),
            String::from_utf8_lossy(&gc.stderr)
        );
    }
}

fn image(dir: &Path, vm: usize) -> PathBuf {
    let path = dir.join(format!("vm{vm}.qcow2"));
    haven_testkit::image::create_qcow2(&path, 48 << 20).unwrap();
    path
}

#[test]
fn gc_jobs_racing_cluster_backups_lose_nothing() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // etcd as production runs it (TLS, auth, a role on /haven/ only): the whole
    // workload's jobs, leases, ownerships and catalog go through the secured store.
    let etcd = Etcd::start_secured(1).expect("start a secured etcd");
    let repo = dir.join("repo");
    init_repo(&repo, &["--chunk-size", "262144"]);

    let mut vms: Vec<Guard> = Vec::new();
    let mut nbds = Vec::new();
    let mut vm_config = String::new();
    for vm in 0..VMS {
        let qmp = dir.join(format!("vm{vm}.qmp"));
        let nbd = dir.join(format!("vm{vm}.nbd"));
        vms.push(start_vm_with_nbd(
            &qmp,
            &nbd,
            &image(dir, vm),
            &dir.join(format!("vm{vm}.log")),
        ));
        vm_config.push_str(&format!(
            "{{ name = \"vm{vm}\", qmp = {:?}, nbd_server = {:?} }},",
            qmp.to_str().unwrap(),
            nbd.to_str().unwrap()
        ));
        nbds.push(nbd);
    }

    let port = free_port();
    let pki = Pki::new(dir);
    let config = dir.join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nworker_lease_seconds = 4\ntick_ms = 200\n\
             allowed_repositories = [{:?}]\netcd = {:?}\n{}{}",
            format!("{}*", dir.to_str().unwrap()),
            etcd.endpoints(),
            etcd.credentials().expect("secured etcd").coordinator_toml(),
            pki.coordinator_toml()
        ),
    )
    .unwrap();
    let _coordinator = spawn_logged(
        &mut haven(&["coordinator", "--config", config.to_str().unwrap()]),
        &dir.join("coordinator.log"),
    );
    let url = format!("https://127.0.0.1:{port}");
    let mut workers = Vec::new();
    for w in 0..2 {
        let path = dir.join(format!("w{w}.toml"));
        std::fs::write(
            &path,
            format!(
                "id = \"w{w}\"\ncoordinators = [{url:?}]\nmax_jobs = 3\nscratch_dir = {:?}\n\
                 inventory_interval_seconds = 2\n[[hosts]]\nname = \"h0\"\nvms = [{vm_config}]\n{}",
                dir.to_str().unwrap(),
                pki.worker_toml(&format!("w{w}"))
            ),
        )
        .unwrap();
        workers.push(spawn_logged(
            haven(&["worker", "--config", path.to_str().unwrap()]).env("HAVEN_PASSWORD", PASSWORD),
            &dir.join(format!("w{w}.log")),
        ));
    }
    let bed = Bed {
        cli: pki.admin(&url),
        repo: repo.to_str().unwrap().to_string(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = bed.cli.run(&["vm", "list", "--json"]);
        if out.status.success() {
            let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
            if list.len() == VMS
                && list
                    .iter()
                    .all(|vm| vm["workers"].as_array().unwrap().len() == 2)
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "workers did not report the VMs");
        std::thread::sleep(Duration::from_millis(300));
    }
    bed.cli.apply_policy(
        &dir.join("policy.toml"),
        &format!(
            "[[policy]]\nname = \"all\"\nschedule = \"0 0 1 1 *\"\nrepository = {:?}\n\
         max_per_host = 3\nretention = {{ keep_last = 2 }}\n",
            bed.repo
        ),
    );

    // Each round: the guests write new data (some of it replacing the last round's,
    // so old chunks become garbage once pruned), a copy of every disk is kept, the
    // round is backed up, and GC jobs with margin 0 run back to back until the
    // round's backups and prunes have all ended.
    let mut expected: Vec<Vec<PathBuf>> = vec![Vec::new(); VMS];
    for round in 0..ROUNDS {
        for (vm, nbd) in nbds.iter().enumerate() {
            let pattern = 0x10 + (round * VMS + vm) as u8;
            guest_io(
                nbd,
                &[
                    format!("write -P {pattern} 0 4M"),
                    format!("write -P {} {}M 1M", pattern ^ 0xff, 8 + round * 2),
                ],
            );
            let copy = dir.join(format!("expected-vm{vm}-{round}.raw"));
            guest_copy(nbd, &copy);
            expected[vm].push(copy);
        }
        bed.cli.ok(&["policy", "run", "all"]);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut collections = 0;
        loop {
            bed.collect_garbage();
            collections += 1;
            let jobs = bed.cli.jobs();
            let failed: Vec<&Value> = jobs.iter().filter(|j| j["state"] == "failed").collect();
            assert!(failed.is_empty(), "failed jobs: {failed:#?}");
            let busy = jobs
                .iter()
                .any(|j| j["state"] != "succeeded" && j["kind"] != "gc");
            let backups_done = jobs
                .iter()
                .filter(|j| j["kind"] == "backup" && j["state"] == "succeeded")
                .count();
            if !busy && backups_done == VMS * (round + 1) && collections >= 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round} did not finish: {jobs:#?}"
            );
        }
    }

    // Retention kept the last two rounds; each restores exactly, and all verify.
    bed.cli.ok(&["verify", "--repo", &bed.repo]);
    for (vm, copies) in expected.iter().enumerate() {
        let list: Vec<Value> = serde_json::from_str(&bed.cli.ok(&[
            "snapshots",
            "--repo",
            &bed.repo,
            "--vm",
            &format!("vm{vm}"),
            "--json",
        ]))
        .unwrap();
        assert_eq!(list.len(), 2, "vm{vm}: {list:#?}");
        for (snapshot, copy) in list.iter().zip(&copies[ROUNDS - 2..]) {
            let name = snapshot["snapshot"].as_str().unwrap();
            let restored = dir.join(format!("restored-{vm}.raw"));
            let _ = std::fs::remove_file(&restored);
            bed.cli.ok(&[
                "restore",
                name,
                "--repo",
                &bed.repo,
                "--to",
                restored.to_str().unwrap(),
            ]);
            assert!(
                std::fs::read(&restored).unwrap() == std::fs::read(copy).unwrap(),
                "{name} differs from the disk at its round"
            );
        }
    }

    // A last collection; then nothing unreferenced is left.
    bed.collect_garbage();
    let report: Value = serde_json::from_str(&bed.cli.ok(&[
        "gc",
        "--repo",
        &bed.repo,
        "--margin",
        "0s",
        "--dry-run",
        "--json",
    ]))
    .unwrap();
    assert_eq!(report["chunks_removed"], 0, "{report:#}");
    assert_eq!(report["indexes_removed"], 0, "{report:#}");
    assert!(report["chunks_referenced"].as_u64().unwrap() > 0);
    drop(workers);
}
