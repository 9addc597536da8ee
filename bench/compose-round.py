#!/usr/bin/env python3
"""A full round of VMs through the compose cluster, next to the same round in the
single-process `haven dev`, and the DR restore time of one VM at site B.

    bench/compose-round.py [HAVEN_BINARY] [--vms 8] [--disk-mib 1024]

1. `deploy/compose.yaml` as shipped (deploy/compose_test.py's set-up: images from
   local files, secrets, the lab hypervisor with VMS disks of DISK_MIB); each disk is
   filled with random data through its guest export, so a full backup reads, and
   stores, every byte;
2. one round of the example policy (backups to site A's two storage nodes, every
   object on both, then replication to site B): wall time from `policy run` to the last backup's end, and
   throughput;
3. once replication has converged, one VM restored from site B's storage node: the
   DR restore time;
4. the compose project torn down (the lab's disks kept), the same disks served by
   `qemu-storage-daemon`s on this host, and `haven dev` (coordinator and worker in one process, its default
   repository a folder) runs the same round.

Prints one table. A benchmark, not a test: nothing is asserted about the figures.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy"))
import compose_test as lab  # noqa: E402


def fill(qmp_dir, vm, mib):
    """Writes `mib` MiB of random data over the whole disk of `vm`, 64 MiB at a time."""
    data = os.path.join(qmp_dir, "..", f"fill-{vm}.bin")
    url = f"nbd+unix:///guest?socket={os.path.join(qmp_dir, f'{vm}.nbd')}"
    for offset in range(0, mib, 64):
        with open(data, "wb") as file:
            file.write(os.urandom(64 << 20))
        lab.run(["qemu-io", "-f", "raw", "-c", f"write -s {data} {offset}M 64M", url])
    os.remove(data)


def round_seconds(cluster, env):
    """One round of the policy `default`: (seconds from the first backup job's creation
    to the last one's end, seconds from `policy run` to the round's last job, which
    with `replicate_to` includes the replication)."""
    started = time.monotonic()
    jobs, _ = lab.policy_round(cluster, env=env)
    seconds = time.monotonic() - started
    lab.assert_backed_up(jobs, lab.VMS, "the benchmark round")
    backups = [job for job in jobs if job["kind"] == "backup"]
    span_ms = (max(job["finished_unix_ms"] for job in backups)
               - min(job["created_unix_ms"] for job in backups))
    return span_ms / 1000, seconds


def rounds(haven):
    """(compose round, DR restore, haven dev round) seconds, on the same disks."""
    with lab.compose_cluster(haven) as cluster:
        qmp_dir = os.path.join(cluster.work, "qmp")
        for vm in lab.VMS:
            fill(qmp_dir, vm, lab.DISK_MIB)
        cluster.haven_run(["repo", "init", "--repo", lab.REPOSITORY], cluster.storage_admin)
        cluster.haven_run(["policy", "apply",
                           os.path.join(lab.DEPLOY, "compose", "policy.toml")], cluster.admin)
        lab.wait_for("the workers reporting every VM",
                     lambda: all(vm in cluster.haven_run(["vm", "list"], cluster.admin)
                                 for vm in lab.VMS), 120)
        seconds = round_seconds(cluster, cluster.admin)

        lab.wait_for("replication to site B", cluster.replicated_to_b, 1800, poll=2)
        restored = os.path.join(cluster.work, "dr-restore.raw")
        started = time.monotonic()
        cluster.haven_run(["restore", f"{lab.VMS[0]}@latest", "--repo", lab.DR_REPOSITORY,
                           "--to", restored], cluster.dr_reader, timeout=1800)
        dr_seconds = time.monotonic() - started
        os.remove(restored)
        # The cluster gone (its volumes too: disk space), the lab's disks stay for
        # `haven dev`.
        cluster.compose("--profile", "lab", "--profile", "dr", "down", "-v", timeout=600)
        dev_seconds = dev_round(haven, os.path.join(cluster.work, "lab"))
        return seconds, dr_seconds, dev_seconds


def dev_round(haven, disks):
    """The same disks, the same round, in `haven dev` (its default repository: a
    folder)."""
    work = tempfile.mkdtemp(prefix="haven-bench-dev-")
    qmp_dir = os.path.join(work, "qmp")
    os.makedirs(qmp_dir)
    daemons = []
    dev = None
    try:
        for vm in lab.VMS:
            daemons.append(subprocess.Popen(
                ["qemu-storage-daemon",
                 "--chardev", f"socket,path={qmp_dir}/{vm}.qmp,server=on,wait=off,id=m",
                 "--monitor", "chardev=m",
                 "--blockdev", f"driver=file,filename={disks}/{vm}.qcow2,node-name=file0",
                 "--blockdev", "driver=qcow2,file=file0,node-name=vda"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        state = os.path.join(work, "state")
        dev = subprocess.Popen(
            [haven, "dev", "--qmp-dir", qmp_dir, "--state-dir", state],
            env={**os.environ, "HAVEN_PASSWORD": "bench"},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lab.wait_for("haven dev's environment", lambda: os.path.exists(f"{state}/env"), 60)
        env = dict(os.environ)
        for line in open(f"{state}/env"):
            if line.startswith("export "):
                name, _, value = line[len("export "):].strip().partition("=")
                env[name] = value.strip("'\"")
        cluster = lab.Cluster.__new__(lab.Cluster)
        cluster.haven = haven
        lab.wait_for("haven dev reporting every VM",
                     lambda: all(vm in lab.run([haven, "vm", "list"], env=env)
                                 for vm in lab.VMS), 120)
        return round_seconds(cluster, env)
    finally:
        if dev:
            dev.terminate()
            dev.wait()
        for daemon in daemons:
            daemon.kill()
            daemon.wait()
        subprocess.run(["rm", "-rf", work])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("haven", nargs="?", default=None)
    parser.add_argument("--vms", type=int, default=8)
    parser.add_argument("--disk-mib", type=int, default=1024)
    args = parser.parse_args()
    sys.argv[1:] = [args.haven] if args.haven else []
    haven = lab.haven_binary()
    lab.VMS = tuple(f"vm{n}" for n in range(1, args.vms + 1))
    lab.DISK_MIB = args.disk_mib
    total_mib = args.vms * args.disk_mib

    (compose_backups, compose_round), dr_seconds, (dev_backups, _) = rounds(haven)
    print(f"\n{args.vms} VMs x {args.disk_mib} MiB of random data, one full round")
    print(f"{'setup':<44} {'wall':>8} {'MiB/s':>8}")
    for name, seconds in [("compose: backups (2 workers, storage node)", compose_backups),
                          ("compose: round with replication to B", compose_round),
                          ("haven dev: backups (one process, folder)", dev_backups)]:
        print(f"{name:<44} {seconds:>7.1f}s {total_mib / seconds:>8.0f}")
    print(f"{'DR restore of one VM at site B':<44} {dr_seconds:>7.1f}s "
          f"{args.disk_mib / dr_seconds:>8.0f}")


if __name__ == "__main__":
    main()
