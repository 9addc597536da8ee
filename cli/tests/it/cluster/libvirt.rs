//! A worker whose host is a libvirt connection (`libvirt = URI` in worker.toml): it
//! reports the running domains as VMs, and a job backs one up through libvirt's backup
//! API with the coordinator's fenced commit; both disks restore byte-identical.
//! Real `libvirtd` (private, started by the harness), a TCG domain, and real
//! `haven coordinator` (embedded store) and `haven worker` processes.

use crate::support::{
    cluster::{OneWorker, one_cluster_at_a_time},
    image::{MIB, assert_same_disk},
    libvirt::{Domain, Libvirt, TARGETS, two_disk_bed},
};

#[test]
fn worker_backs_up_a_libvirt_domain_through_the_coordinator() {
    let _alone = one_cluster_at_a_time();
    let (bed, expected, images) = two_disk_bed(256 * 1024, 32 * MIB, |disk| {
        vec![(disk * 4096, 6 * MIB as usize), (20 * MIB, MIB as usize)]
    });
    let libvirt = Libvirt::start();
    let name = format!("haven-cluster-{}", std::process::id());
    let _domain = Domain::start(&libvirt, &name, &images, bed.dir.path());

    let cluster = OneWorker::start(
        &bed,
        &format!("[[hosts]]\nname = \"kvm\"\nlibvirt = {:?}\n", libvirt.uri),
    );
    let vm = cluster.wait_for_vm(&name);
    assert_eq!(vm["host"], "kvm");
    assert_eq!(vm["disks"].as_array().unwrap().len(), 2, "{vm}");

    let cli = &cluster.cli;
    let run = cli.run(&["job", "run", &name, "--repo", &bed.repo_url(), "--watch"]);
    assert!(
        run.status.success(),
        "job failed: {}{}\nworker log:\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
        cluster.worker_log()
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
