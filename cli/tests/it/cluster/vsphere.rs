//! A worker whose host is a vCenter (`vcenter = URL` in worker.toml): it reports the
//! simulator's VMs with their disks, and a policy backs one up through the vSphere API
//! with the coordinator's fenced commit, twice (the second an incremental from the
//! first's changeId); each snapshot restores byte-identical and no vSphere snapshot is
//! left. govmomi's simulator (`haven_testkit::vcsim`), real `haven coordinator`
//! (embedded store) and `haven worker` processes.

use std::time::Duration;

use crate::support::{
    bed::Bed,
    cluster::{OneWorker, one_cluster_at_a_time},
    image::{MIB, assert_same_disk, noise, write_at},
    vsphere::{VM, Vsphere, keep_copy},
};

/// Disk size of the simulated VMs, in MiB.
const DISK_MIB: u64 = 16;

#[test]
fn a_policy_backs_up_a_vsphere_vm_through_a_vcenter_worker() {
    let _alone = one_cluster_at_a_time();
    let bed = Bed::initialised();
    let vsphere = Vsphere::start(&bed, DISK_MIB);
    let flat = vsphere.flat_file();
    write_at(&flat, 0, &noise(1, 300 << 10));
    write_at(&flat, 9 * MIB, &noise(2, MIB as usize));

    let cluster = OneWorker::start(&bed, &vsphere.host_toml("vc"));
    let vm = cluster.wait_for_vm(VM);
    assert_eq!(vm["host"], "vc");
    assert_eq!(
        vm["disks"],
        serde_json::json!([{ "name": "disk1", "size_bytes": DISK_MIB * MIB }]),
        "{vm}"
    );
    cluster.cli.apply_policy(
        &bed.path("policy.toml"),
        &format!(
            "[[policy]]\nname = \"vmware\"\nschedule = \"0 0 1 1 *\"\nrepository = {:?}\n\
             select = {{ names = [{VM:?}] }}\n",
            bed.repo_url()
        ),
    );

    let mut expected = Vec::new();
    for round in 1..=2 {
        if round == 2 {
            write_at(&flat, 4 * MIB + 11, &noise(3, 20 << 10));
            std::thread::sleep(Duration::from_secs(1)); // distinct snapshot timestamps
        }
        expected.push(keep_copy(&flat, &bed.path(&format!("round-{round}.raw"))));
        cluster.cli.ok(&["policy", "run", "vmware"]);
        let jobs = cluster
            .cli
            .wait_for("backup", round, Duration::from_secs(120));
        assert!(jobs.iter().all(|job| job["vm"] == VM), "{jobs:#?}");
        assert!(
            vsphere.snapshot_names().is_empty(),
            "the vSphere snapshot must be removed: {}",
            cluster.worker_log()
        );
    }

    let snapshots = cluster.cli.snapshots(&bed.repo_dir());
    assert_eq!(snapshots.len(), 2, "{snapshots:#?}");
    for (snapshot, expected) in snapshots.iter().zip(&expected) {
        let name = snapshot["snapshot"].as_str().unwrap();
        let restored = bed.path(&format!("restored-{}.raw", name.replace([':', '@'], "_")));
        bed.ok(&["restore", name, "--to", restored.to_str().unwrap()]);
        assert_same_disk(&restored, expected);
    }
    // The second backup read from the first one's changeId.
    let second = bed.manifest(snapshots[1]["snapshot"].as_str().unwrap());
    assert_eq!(second.source.kind, "vsphere");
    assert!(second.disks[0].chain.contains_key("change-id"));
}
