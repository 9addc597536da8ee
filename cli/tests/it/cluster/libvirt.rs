//! A worker whose host is a libvirt connection (`libvirt = URI` in worker.toml): it
//! reports the running domains as VMs, and a job backs one up through libvirt's backup
//! API with the coordinator's fenced commit; both disks restore byte-identical.
//! Real `libvirtd` (private, started by the harness), a TCG domain, and real
//! `haven coordinator` (embedded store) and `haven worker` processes.

use std::time::{Duration, Instant};

use crate::support::{
    bed::Bed,
    cluster::one_cluster_at_a_time,
    haven::{PASSWORD, haven},
    image::{MIB, assert_same_disk},
    libvirt::{Domain, Libvirt, TARGETS, two_disk_bed},
    pki::Pki,
    process::{Guard, free_port, spawn_logged},
};

/// `haven ARGS` with the password, its output appended to `log` in the bed.
fn spawn(bed: &Bed, args: &[&str], log: &str) -> Guard {
    spawn_logged(haven(args).env("HAVEN_PASSWORD", PASSWORD), &bed.path(log))
}

#[test]
fn worker_backs_up_a_libvirt_domain_through_the_coordinator() {
    let _alone = one_cluster_at_a_time();
    let (bed, expected, images) = two_disk_bed(256 * 1024, 32 * MIB, |disk| {
        vec![(disk * 4096, 6 * MIB as usize), (20 * MIB, MIB as usize)]
    });
    let libvirt = Libvirt::start();
    let name = format!("haven-cluster-{}", std::process::id());
    let _domain = Domain::start(&libvirt, &name, &images, bed.dir.path());

    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let pki = Pki::new(bed.dir.path());
    let cli = pki.admin(&url);
    let coordinator_config = bed.path("coordinator.toml");
    std::fs::write(
        &coordinator_config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate_path = {:?}\nworker_lease_seconds = 5\n\
             allowed_repositories = [{:?}]\n{}",
            bed.path("state.redb").to_str().unwrap(),
            bed.repo_url(),
            pki.coordinator_toml()
        ),
    )
    .unwrap();
    let worker_config = bed.path("worker.toml");
    std::fs::write(
        &worker_config,
        format!(
            "id = \"w1\"\ncoordinators = [{url:?}]\nscratch_dir = {:?}\ninventory_interval_seconds = 2\n\
             [[hosts]]\nname = \"kvm\"\nlibvirt = {:?}\n{}",
            bed.path("scratch").to_str().unwrap(),
            libvirt.uri,
            pki.worker_toml("w1")
        ),
    )
    .unwrap();
    let _coordinator = spawn(
        &bed,
        &[
            "coordinator",
            "--config",
            coordinator_config.to_str().unwrap(),
        ],
        "coordinator.log",
    );
    let _worker = spawn(
        &bed,
        &["worker", "--config", worker_config.to_str().unwrap()],
        "worker.log",
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cli.run(&["vm", "list", "--json"]);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&name) {
            let vms: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let vm = vms
                .as_array()
                .unwrap()
                .iter()
                .find(|vm| vm["name"] == name.as_str())
                .unwrap();
            assert_eq!(vm["host"], "kvm");
            assert_eq!(vm["disks"].as_array().unwrap().len(), 2, "{vm}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not report the domain: {}",
            std::fs::read_to_string(bed.path("worker.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let run = cli.run(&["job", "run", &name, "--repo", &bed.repo_url(), "--watch"]);
    assert!(
        run.status.success(),
        "job failed: {}{}\nworker log:\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
        std::fs::read_to_string(bed.path("worker.log")).unwrap_or_default()
    );
    for (target, expected) in TARGETS.iter().zip(&expected) {
        let restored = bed.path(&format!("restored-{target}.raw"));
        bed.ok(&[
            "restore",
            &format!("{name}@latest"),
            "--disk",
            target,
            "--to",
            restored.to_str().unwrap(),
        ]);
        assert_same_disk(&restored, expected);
    }
}
