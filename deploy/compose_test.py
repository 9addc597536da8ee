#!/usr/bin/env python3
"""Runs `deploy/compose.yaml` as shipped on the local Docker engine: two sites, faults,
and the disaster-recovery drill, the way deploy/README.md and docs/dr.md tell an
operator to.

What it does, in order:
1. builds the images from local files (`deploy/images/build.sh`: no registry);
2. makes the installation's secrets as deploy/README.md says: etcd's CA, certificates
   and passwords (openssl), the control plane's certificates (`haven pki`), one file
   per storage key;
3. `docker-compose up` with only environment variables set (image names among them:
   the compose file is not changed): site A (3 etcd members, 2 coordinators, 2
   workers, two storage nodes holding every object twice, and in the profile `lab`
   the `hypervisor` container running two "VMs", `qemu-storage-daemon`s whose QMP
   sockets the workers reach) and site B's storage node;
4. (the step numbers below follow the order of the run)
5. as an admin, over the coordinators' mutual TLS: initialises the repository, applies
   `deploy/compose/policy.toml` and runs a round, restored byte-identical from the
   primary and found replicated at site B;
6. a round each with `docker kill` of a worker, of the leading coordinator, of an etcd
   member and of one of site A's two storage nodes mid-round: every VM still gets its
   snapshot (writes need both nodes: backups retry until it is back; a listing
   while it is down still answers);
7. site B cut off the WAN (`docker network disconnect`) during a round: backups go on,
   the replication lag grows on the coordinator's /metrics, and after reconnection
   replication converges with nothing missing;
8. a rolling restart of every coordinator and worker mid-round, with no failed job;
9. every snapshot verifies with one of site A's storage nodes stopped, and each VM's
   newest restores byte-identical with the other one stopped: either node alone
   holds everything;
10. site A destroyed (containers, volumes and VMs): site B's coordinator and worker
   (profile `dr`) rebuild the catalog from the replica, restore each VM by name,
   start it under `qemu-system-x86_64` (TCG) and back it up again into site B;
11. failback (docs/dr.md): site A rebuilt from site B's copy (two new storage nodes
   filled by `haven replicate`, new etcd members and coordinators whose catalog is
   rebuilt from it), each VM restored by name at A and run by A's hypervisor again,
   and a round at A backs them up and replicates them to B.

Each step prints its figures (time to recover, replication lag, DR restore time).
Everything it started (containers, volumes, networks, QEMUs, files) is removed at the
end, passed or failed; on a failure the containers' logs are printed first. Usage:
`deploy/compose_test.py [HAVEN_BINARY]`. Needs docker with docker-compose (v1 or the
v2 plugin), debootstrap, openssl, qemu-img, qemu-io and qemu-system-x86_64.
"""

import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

DEPLOY = os.path.dirname(os.path.abspath(__file__))
PROJECT = "haven-compose-test"
TAG = "composetest"
ADMIN_PORTS = (7700, 7710)
# The coordinators' /metrics and /healthz, published per replica.
HTTP_PORTS = {"coordinator-1": 7701, "coordinator-2": 7711}
DR_PORT = 7720
# Site A's two storage nodes, as published on the host, and their compose services.
PRIMARY_NODES = {"storage-primary": "http://127.0.0.1:9000",
                 "storage-primary-2": "http://127.0.0.1:9001"}
SECONDARY = "http://127.0.0.1:9010"
# Site A's repository as the host reaches it: both nodes, every object on both
# (compose/policy.toml names them by their compose names). Another spelling of the
# members gives another rank order, but with 2 replicas over 2 nodes the same copies:
# the host only reads, or writes while nothing else does (docs/storage-node.md).
REPOSITORY = ("s3://haven/cluster?"
              + "&".join(f"endpoint={url}" for url in PRIMARY_NODES.values()) + "&replicas=2")
DR_REPOSITORY = "s3://haven/cluster?endpoint=" + SECONDARY
VMS = ("vm1", "vm2")
DISK_MIB = 512
# What the guests write before each round with a fault: enough that the round's
# backups are still reading when the fault strikes.
WRITE_MIB = 320
# Site A's services: what a lost site A takes with it (docs/dr.md).
SITE_A = ["etcd-1", "etcd-2", "etcd-3", "etcd-init", "coordinator-1", "coordinator-2",
          "worker-1", "worker-2", "storage-primary", "storage-primary-2", "hypervisor"]
# Site A's control plane, rebuilt in a failback before its workers and hypervisor.
CONTROL_PLANE_A = ["etcd-1", "etcd-2", "etcd-3", "etcd-init", "coordinator-1",
                   "coordinator-2"]
# The uid Haven's image runs coordinators and storage nodes as (deploy/Dockerfile).
HAVEN_UID = 10001


def run(args, env=None, cwd=None, timeout=600):
    """Runs `args`; its standard output, or exits naming the command and its stderr."""
    result = subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise SystemExit(
            f"FAILED: {' '.join(args)} (exit {result.returncode}):\n{result.stderr}{result.stdout}"
        )
    return result.stdout


def compose_command():
    """`docker compose` (v2 plugin) where it exists, else `docker-compose` (v1)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise SystemExit("FAILED: neither `docker compose` nor `docker-compose` is installed")


def make_etcd_secrets(folder):
    """deploy/README.md, "etcd"."""
    os.makedirs(folder)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args):
        run(["openssl", *args], cwd=folder)

    openssl("req", "-x509", *key, "-days", "2", "-subj", "/CN=haven etcd CA",
            "-keyout", "ca-key.pem", "-out", "ca.pem")
    for name, subject, extensions in [
        ("server", "/CN=etcd", ["subjectAltName=DNS:etcd-1,DNS:etcd-2,DNS:etcd-3,"
                                "DNS:localhost,IP:127.0.0.1",
                                "extendedKeyUsage=serverAuth,clientAuth"]),
        ("client", "/CN=haven-coordinator", ["extendedKeyUsage=clientAuth"]),
    ]:
        added = [arg for extension in extensions for arg in ("-addext", extension)]
        openssl("req", "-new", *key, "-subj", subject, "-keyout", f"{name}-key.pem",
                "-out", f"{name}.csr", *added)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-copy_extensions", "copyall", "-days", "2",
                "-out", f"{name}.pem")
    for name in ["haven-password", "root-password"]:
        with open(os.path.join(folder, name), "w") as file:
            file.write(os.urandom(18).hex() + "\n")
    for name in ["client-key.pem", "haven-password", "root-password"]:
        os.chown(os.path.join(folder, name), HAVEN_UID, -1)
    for name in ["client-key.pem", "haven-password", "root-password", "server-key.pem"]:
        os.chmod(os.path.join(folder, name), 0o400)


def make_pki(haven, folder):
    """deploy/README.md, "The control plane's certificates"."""
    run([haven, "pki", "init", "--dir", folder])
    run([haven, "pki", "issue", "server", "coordinator", "--dir", folder,
         "--dns", "coordinator-1", "--dns", "coordinator-2", "--dns", "coordinator-dr",
         "--dns", "localhost", "--ip", "127.0.0.1"])
    for worker in ["worker-1", "worker-2", "worker-dr"]:
        run([haven, "pki", "issue", "worker", worker, "--dir", folder])
    run([haven, "pki", "issue", "admin", "admin", "--dir", folder])
    # The coordinators run as uid 10001 and read their key from the mounted folder.
    os.chown(os.path.join(folder, "coordinator-key.pem"), HAVEN_UID, -1)


def make_storage_secrets(folder):
    """deploy/README.md, "Storage keys": the access key id names the key."""
    os.makedirs(folder)
    keys = {}
    for key in ["primary-append", "primary-delete", "dr-append", "dr-delete"]:
        secret = os.urandom(20).hex()
        keys[key] = secret
        path = os.path.join(folder, f"{key}.toml")
        with open(path, "w") as file:
            file.write(f'access_key_id = "{key}"\nsecret_access_key = "{secret}"\n')
        os.chmod(path, 0o444)
    return keys


def wait_for_vms(qmp_dir, lab_dir):
    """The lab hypervisor's VMs (compose's `hypervisor`, compose/lab-hypervisor.sh):
    waits for their QMP and NBD sockets; returns {VM: its qcow2 disk on this host}."""
    def sockets():
        return all(os.path.exists(os.path.join(qmp_dir, f"{vm}.{kind}"))
                   for vm in VMS for kind in ("qmp", "nbd"))
    wait_for("the lab hypervisor's VMs", sockets, 60)
    return {vm: os.path.join(lab_dir, f"{vm}.qcow2") for vm in VMS}


def guest_write(qmp_dir, vm):
    """The guest of `vm` writes `WRITE_MIB` of fresh random data at a random place, so
    the next backup has that much to read."""
    data = os.path.join(qmp_dir, "..", "guest-write.bin")
    with open(data, "wb") as file:
        file.write(os.urandom(WRITE_MIB << 20))
    offset = random.randrange(0, DISK_MIB - WRITE_MIB) << 20
    run(["qemu-io", "-f", "raw", "-c", f"write -s {data} {offset} {WRITE_MIB}M",
         f"nbd+unix:///guest?socket={os.path.join(qmp_dir, f'{vm}.nbd')}"])
    os.remove(data)


def boot_vm(qmp_dir, vm, disk):
    """The restored `disk` attached to a paused qemu-system-x86_64 (TCG) as a virtio
    disk, its QMP at VM.qmp: site B's hypervisor after a failover."""
    qmp = os.path.join(qmp_dir, f"{vm}.qmp")
    process = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-nodefaults", "-display", "none",
         "-S", "-m", "64", "-qmp", f"unix:{qmp},server=on,wait=off",
         "-blockdev", f"driver=file,filename={disk},node-name=file0",
         "-blockdev", "driver=qcow2,file=file0,node-name=vda",
         "-device", "virtio-blk-pci,drive=vda,id=vda"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    wait_for(f"{vm}'s QEMU at site B", lambda: os.path.exists(qmp), 20)
    return process


def wait_for(what, ready, seconds, poll=1.0):
    """Polls `ready` until it returns a true value (returned) or `seconds` pass."""
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            value = ready()
            if value:
                return value
        except (subprocess.SubprocessError, SystemExit, OSError, ValueError) as error:
            last = error
        time.sleep(poll)
    raise SystemExit(f"FAILED: {what} not within {seconds} s" + (f": {last}" if last else ""))


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def haven_binary():
    """The `haven` binary named on the command line, else the development build."""
    return os.path.abspath(
        sys.argv[1] if len(sys.argv) > 1
        else os.path.join(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/haven-target"),
                          "debug", "haven")
    )


@contextlib.contextmanager
def compose_cluster(haven):
    """Builds the images, makes the installation's secrets and runs `compose.yaml` as
    shipped with the lab hypervisor's `VMS` of `DISK_MIB` each; yields the
    [`Cluster`] once its VMs run. On the way out every container, volume, network,
    image, process and file it made is removed, and the containers' logs printed
    first if the block failed."""
    compose = compose_command()
    images = run([os.path.join(DEPLOY, "images", "build.sh"), haven],
                 env={**os.environ, "HAVEN_IMAGE_TAG": TAG})
    print(images, end="")

    work = tempfile.mkdtemp(prefix="haven-compose-")
    os.chmod(work, 0o755)
    qmp_dir = os.path.join(work, "qmp")
    os.makedirs(qmp_dir)
    lab_dir = os.path.join(work, "lab")
    os.makedirs(lab_dir)
    password = os.urandom(16).hex()
    admin_key = ("admin", os.urandom(20).hex())
    make_etcd_secrets(os.path.join(work, "etcd-secrets"))
    pki = os.path.join(work, "pki")
    make_pki(haven, pki)
    keys = make_storage_secrets(os.path.join(work, "storage-secrets"))

    env = {
        **os.environ,
        "HAVEN_IMAGE": f"haven:{TAG}",
        "HAVEN_ETCD_IMAGE": f"haven-etcd:{TAG}",
        "HAVEN_LAB_IMAGE": f"haven-lab:{TAG}",
        "HAVEN_PASSWORD": password,
        "HAVEN_STORAGE_ACCESS_KEY": admin_key[0],
        "HAVEN_STORAGE_SECRET_KEY": admin_key[1],
        "HAVEN_APPEND_ACCESS_KEY": "primary-append",
        "HAVEN_APPEND_SECRET_KEY": keys["primary-append"],
        "HAVEN_DR_APPEND_ACCESS_KEY": "dr-append",
        "HAVEN_DR_APPEND_SECRET_KEY": keys["dr-append"],
        "HAVEN_STORAGE_SECRETS": os.path.join(work, "storage-secrets"),
        "HAVEN_ETCD_SECRETS": os.path.join(work, "etcd-secrets"),
        "HAVEN_PKI_DIR": pki,
        "HAVEN_QMP_DIR": qmp_dir,
        "HAVEN_LAB_DIR": lab_dir,
        "HAVEN_LAB_VMS": " ".join(VMS),
        "HAVEN_LAB_DISK_MIB": str(DISK_MIB),
    }
    project = [*compose, "-p", PROJECT, "-f", os.path.join(DEPLOY, "compose.yaml")]
    cluster = Cluster(haven, project, env, pki, keys, work)
    try:
        run([*project, "--profile", "lab", "up", "-d", "--no-build"], env=env, timeout=300)
        cluster.vms = wait_for_vms(qmp_dir, lab_dir)
        yield cluster
    except BaseException:
        logs = subprocess.run([*project, "--profile", "dr", "--profile", "lab", "logs",
                               "--no-color", "--tail", "40"],
                              env=env, capture_output=True, text=True)
        print(logs.stdout[-20000:], file=sys.stderr)
        raise
    finally:
        subprocess.run([*project, "--profile", "dr", "--profile", "lab", "down", "-v",
                        "--remove-orphans", "--timeout", "5"], env=env, capture_output=True)
        for process in cluster.processes:
            process.kill()
            process.wait()
        for image in [f"haven:{TAG}", f"haven-etcd:{TAG}", f"haven-lab:{TAG}"]:
            subprocess.run(["docker", "image", "rm", image], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def main():
    with compose_cluster(haven_binary()) as cluster:
        qmp_dir = os.path.join(cluster.work, "qmp")
        lab_dir = os.path.join(cluster.work, "lab")
        check_site_a(cluster, cluster.vms)
        restored = check_disaster_recovery(cluster, cluster.vms, qmp_dir)
        check_failback(cluster, restored, qmp_dir, lab_dir)
        print("compose_test: PASSED")


class Cluster:
    """The compose project and the `haven` CLI as its admin and as storage clients."""

    def __init__(self, haven, project, env, pki, keys, work):
        self.haven = haven
        self.project = project
        self.env = env
        self.pki = pki
        self.work = work
        self.processes = []
        # The lab hypervisor's VMs: {VM: its qcow2 disk on this host}.
        self.vms = {}
        tls = {
            "HAVEN_CA_FILE": os.path.join(pki, "ca.pem"),
            "HAVEN_CERT_FILE": os.path.join(pki, "admin.pem"),
            "HAVEN_KEY_FILE": os.path.join(pki, "admin-key.pem"),
        }
        # Both replicas' published ports: the leader's advertised URL
        # (https://coordinator-N:7700) resolves only inside the compose network, so a
        # client on the host finds the leader among the URLs it was given.
        self.admin = {**env, **tls, "HAVEN_COORDINATOR": ",".join(
            f"https://127.0.0.1:{port}" for port in ADMIN_PORTS)}
        self.dr_admin = {**env, **tls, "HAVEN_COORDINATOR": f"https://127.0.0.1:{DR_PORT}"}

        def signing(access, secret):
            return {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
                    "AWS_REGION": "us-east-1"}

        self.storage_admin = {**env, **signing(*admin_key_of(env))}
        # Reads are allowed to the append keys: restores and verification use them.
        self.primary_reader = {**env, **signing("primary-append", keys["primary-append"])}
        self.dr_reader = {**env, **signing("dr-append", keys["dr-append"])}
        # A failback's copy: reads site B with B's key, writes site A with A's.
        self.back_to_a = {**self.dr_reader,
                          "HAVEN_SECONDARY_AWS_ACCESS_KEY_ID": "primary-append",
                          "HAVEN_SECONDARY_AWS_SECRET_ACCESS_KEY": keys["primary-append"]}

    def haven_run(self, args, env, timeout=600):
        return run([self.haven, *args], env=env, timeout=timeout)

    def compose(self, *args, timeout=300):
        return run([*self.project, *args], env=self.env, timeout=timeout)

    def container(self, service):
        return self.compose("ps", "-q", service).strip()

    def docker(self, *args):
        return run(["docker", *args], timeout=300)

    def jobs(self, env=None):
        return json.loads(self.haven_run(["job", "list", "--limit", "0", "--json"],
                                         env or self.admin, timeout=60))

    def replicated_to_b(self):
        """Whether site B holds every snapshot of site A (`replicate status`)."""
        status = json.loads(self.haven_run(
            ["replicate", "status", "--from", REPOSITORY, "--to", DR_REPOSITORY, "--json"],
            self.storage_admin))
        return all(vm["missing_snapshots"] == 0 for vm in status)

    def leader(self):
        """The coordinator service whose /metrics says it leads."""
        for service, port in HTTP_PORTS.items():
            metrics = subprocess.run(
                ["curl", "-sS", "--fail", "--cacert", self.admin["HAVEN_CA_FILE"],
                 "--cert", self.admin["HAVEN_CERT_FILE"], "--key", self.admin["HAVEN_KEY_FILE"],
                 f"https://127.0.0.1:{port}/metrics"],
                capture_output=True, text=True, timeout=30)
            # The sample's line exactly: the `# HELP` line of every replica also
            # begins with "haven_coordinator_is_leader 1" ("1 if this replica leads").
            if "haven_coordinator_is_leader 1" in metrics.stdout.splitlines():
                return service
        return None

    def metric(self, name, vm):
        """`name{vm="VM",...}` on the leading coordinator's /metrics, or None (the
        lines naming `name` are printed then)."""
        port = HTTP_PORTS[self.leader()]
        metrics = run(["curl", "-sS", "--fail", "--cacert", self.admin["HAVEN_CA_FILE"],
                       "--cert", self.admin["HAVEN_CERT_FILE"],
                       "--key", self.admin["HAVEN_KEY_FILE"],
                       f"https://127.0.0.1:{port}/metrics"])
        for line in metrics.splitlines():
            if line.startswith(name + "{") and f'vm="{vm}"' in line:
                return float(line.rsplit(" ", 1)[1])
        print("\n".join(line for line in metrics.splitlines() if name in line), file=sys.stderr)
        return None


def admin_key_of(env):
    return env["HAVEN_STORAGE_ACCESS_KEY"], env["HAVEN_STORAGE_SECRET_KEY"]


def policy_round(cluster, fault=None, env=None, policy="default"):
    """Runs a round of `policy`; `fault` (if any) is called once a backup of the round
    runs. Waits until every job has ended; returns (this round's jobs, seconds from
    the fault to the last backup's end)."""
    env = env or cluster.admin
    if fault:
        for vm in VMS:
            guest_write(os.path.join(cluster.work, "qmp"), vm)
    before = {job["job_id"] for job in cluster.jobs(env)}
    cluster.haven_run(["policy", "run", policy], env)

    def ours():
        return [job for job in cluster.jobs(env) if job["job_id"] not in before]

    faulted = None
    if fault:
        running = wait_for("a backup of the round running",
                           lambda: [job for job in ours()
                                    if job["kind"] == "backup" and job["state"] == "running"],
                           120, poll=0.1)
        faulted = time.monotonic()
        fault(running)

    def ended():
        jobs = ours()
        backups = [job for job in jobs if job["kind"] == "backup"]
        done = all(job["state"] in ("succeeded", "failed") for job in jobs)
        return jobs if backups and done else None

    jobs = wait_for("the round's jobs to end", ended, 600)
    recovered = time.monotonic() - faulted if faulted else 0.0
    return jobs, recovered


def assert_backed_up(jobs, vms, what):
    """Every VM of `vms` has a succeeded backup among `jobs`."""
    done = {job["vm"] for job in jobs if job["kind"] == "backup" and job["state"] == "succeeded"}
    missing = [vm for vm in vms if vm not in done]
    if missing:
        raise SystemExit(f"FAILED: {what}: no snapshot of {missing}: {json.dumps(jobs, indent=1)}")


def assert_restores(cluster, env, repository, vm, disk, coordinator=None):
    """VM@latest restored from `repository` (or by name through `coordinator`) equals
    `disk` byte for byte; returns the restore's seconds."""
    restored = os.path.join(cluster.work, f"restored-{vm}.raw")
    source = ["--coordinator", coordinator] if coordinator else ["--repo", repository]
    started = time.monotonic()
    cluster.haven_run(["restore", f"{vm}@latest", *source, "--to", restored, "--force"], env)
    seconds = time.monotonic() - started
    original = os.path.join(cluster.work, f"original-{vm}.raw")
    run(["qemu-img", "convert", "-U", "-O", "raw", disk, original])
    if sha256(restored) != sha256(original):
        raise SystemExit(f"FAILED: {vm} restored from {repository} differs from its disk")
    os.remove(restored)
    os.remove(original)
    return seconds


def check_site_a(cluster, vms):
    admin = cluster.admin
    # A leader elected through etcd (TLS, auth, 3 members) answers over mutual TLS.
    wait_for("a coordinator leader", lambda: cluster.haven_run(["vm", "list"], admin) is not None, 180)
    health = run(["curl", "-sS", "--fail", "--cacert", admin["HAVEN_CA_FILE"],
                  f"https://127.0.0.1:{HTTP_PORTS['coordinator-1']}/healthz"])
    print(f"coordinator /healthz: {health.strip()}")
    wait_for("site A's storage nodes",
             lambda: cluster.haven_run(["repo", "init", "--repo", REPOSITORY],
                                       cluster.storage_admin), 60)
    cluster.haven_run(["policy", "apply", os.path.join(DEPLOY, "compose", "policy.toml")], admin)
    wait_for("the workers reporting every VM",
             lambda: all(vm in cluster.haven_run(["vm", "list"], admin) for vm in VMS), 120)

    started = time.monotonic()
    jobs, _ = policy_round(cluster)
    assert_backed_up(jobs, VMS, "the first round")
    print(f"round of {len(VMS)} VMs through compose: {time.monotonic() - started:.1f} s")
    for vm, disk in vms.items():
        assert_restores(cluster, cluster.primary_reader, REPOSITORY, vm, disk)
    print("restore from site A's storage nodes: byte-identical")

    def replicated():
        listing = json.loads(cluster.haven_run(["snapshots", "--repo", DR_REPOSITORY, "--json"],
                                               cluster.dr_reader))
        return all(any(vm == snapshot["vm"] for snapshot in listing) for vm in VMS)

    wait_for("the snapshots on the secondary storage node", replicated, 180)
    lag = cluster.metric("haven_vm_replication_lag_seconds", VMS[0])
    if lag is None:
        raise SystemExit("FAILED: the leader exports no replication lag for a replicated VM")
    print(f"replicated to site B: listed with the DR site's key; coordinator's lag {lag} s")

    # docker kill of each role mid-round: every VM still gets its snapshot.
    killed = []

    def kill(choose, back_after=None):
        def fault(running):
            service = choose(running)
            killed.append(service)
            cluster.docker("kill", cluster.container(service))
            if back_after is not None:
                time.sleep(back_after)
                cluster.compose("start", service)
        return fault

    def kill_storage_node(_running):
        """One of site A's two nodes, back after 5 s. Meanwhile writes fail (they need
        both nodes) and the repository still lists every VM's snapshots."""
        service = "storage-primary"
        killed.append(service)
        cluster.docker("kill", cluster.container(service))
        down = time.monotonic()
        listing = json.loads(cluster.haven_run(["snapshots", "--repo", REPOSITORY, "--json"],
                                               cluster.primary_reader))
        unlisted = [vm for vm in VMS if not any(s["vm"] == vm for s in listing)]
        if unlisted:
            raise SystemExit(f"FAILED: {service} down: no snapshot of {unlisted} listed")
        print(f"{service} down: {len(listing)} snapshots listed from the other node "
              f"({time.monotonic() - down:.1f} s)")
        time.sleep(max(0.0, 5 - (time.monotonic() - down)))
        cluster.compose("start", service)

    for what, fault in [
        ("the worker running a backup", kill(lambda running: running[0]["worker"])),
        ("the leading coordinator", kill(lambda _: cluster.leader())),
        ("etcd member etcd-2", kill(lambda _: "etcd-2")),
        ("one of site A's two storage nodes (back after 5 s)", kill_storage_node),
    ]:
        jobs, recovered = policy_round(cluster, fault)
        assert_backed_up(jobs, VMS, f"docker kill of {what}")
        retried = sum(1 for job in jobs if len(job["attempts"]) > 1)
        print(f"docker kill of {what} ({killed[-1]}) mid-round: every VM backed up, "
              f"{retried} job(s) retried, {recovered:.1f} s from the kill to the round's end")
        failed = [attempt["outcome"] for job in jobs for attempt in job["attempts"][:-1]]
        if failed:
            print(f"  {len(failed)} failed attempt(s), the first: {failed[0][:300]}")
        cluster.compose("start", killed[-1])

    check_wan_cut(cluster)

    # A rolling restart of every coordinator and worker mid-round: no failed job.
    def rolling_restart(_running):
        for service in ["coordinator-1", "coordinator-2", "worker-1", "worker-2"]:
            cluster.compose("restart", "-t", "150", service, timeout=400)
            wait_for("a leader after the restart",
                     lambda: cluster.haven_run(["vm", "list"], admin) is not None, 120)

    jobs, recovered = policy_round(cluster, rolling_restart)
    failed = [job for job in jobs if job["state"] == "failed"]
    if failed:
        raise SystemExit(f"FAILED: a rolling restart failed jobs: {json.dumps(failed, indent=1)}")
    assert_backed_up(jobs, VMS, "the rolling restart")
    print(f"rolling restart of 2 coordinators and 2 workers mid-round: no failed job "
          f"({recovered:.1f} s from the first restart to the round's end)")

    # Nothing lost, and held twice: every snapshot verifies from storage-primary alone,
    # each VM's newest restores exactly from storage-primary-2 alone. (Verify cannot
    # store its verdicts meanwhile, a write: it warns.)
    with service_stopped(cluster, "storage-primary-2"):
        cluster.haven_run(["verify", "--repo", REPOSITORY], cluster.primary_reader, timeout=900)
    with service_stopped(cluster, "storage-primary"):
        for vm, disk in vms.items():
            assert_restores(cluster, cluster.primary_reader, REPOSITORY, vm, disk)
    print("after the faults: every snapshot verifies with storage-primary-2 stopped, each VM "
          "restores byte-identical with storage-primary stopped")


@contextlib.contextmanager
def service_stopped(cluster, service):
    """`service` stopped for the block, started again after it."""
    cluster.compose("stop", service)
    try:
        yield
    finally:
        cluster.compose("start", service)


def check_wan_cut(cluster):
    """Site B off the WAN during a round: backups go on, the lag grows and is
    reported, and replication converges after reconnection."""
    secondary = cluster.container("storage-secondary")
    attached = run(["docker", "inspect", "--format",
                    "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}",
                    secondary]).split()
    network = next(name for name in attached if name.endswith("_wan"))
    cluster.docker("network", "disconnect", network, secondary)
    try:
        cut = time.monotonic()
        jobs, _ = policy_round(cluster)
        assert_backed_up(jobs, VMS, "the round with site B cut off")
        def status():
            return json.loads(cluster.haven_run(
                ["replicate", "status", "--from", REPOSITORY, "--to", DR_REPOSITORY, "--json"],
                cluster.storage_admin))

        first = status()
        time.sleep(2)
        second = status()
        missing = sum(vm["missing_snapshots"] for vm in second)
        stuck = [vm["oldest_missing_age_seconds"] for vm in second]
        if missing == 0 or not all(
                b["oldest_missing_age_seconds"] > a["oldest_missing_age_seconds"]
                for a, b in zip(first, second) if b["missing_snapshots"]):
            raise SystemExit(f"FAILED: site B cut off, yet the lag does not grow: "
                             f"{first} then {second}")
        # The coordinator exports the lag too (seconds since the newest snapshot at B).
        later = cluster.metric("haven_vm_replication_lag_seconds", VMS[0])
        if later is None or later <= 0:
            raise SystemExit(f"FAILED: site B cut off, yet the leader's replication lag is "
                             f"{later}")
        print(f"site B cut off: backups went on, {missing} snapshots not yet at B, oldest "
              f"missing {max(stuck)} s old and growing; coordinator's lag (RPO at B): "
              f"{later:.0f} s")
    finally:
        # Back under its service name, as compose attached it.
        cluster.docker("network", "connect", "--alias", "storage-secondary", network, secondary)
    # Reconnected: the next round's replication brings B up to date.
    jobs, _ = policy_round(cluster)
    assert_backed_up(jobs, VMS, "the round after reconnection")
    wait_for("replication to converge after reconnection", cluster.replicated_to_b, 300)
    print(f"site B reconnected: replication converged, nothing missing "
          f"({time.monotonic() - cut:.1f} s after the cut)")


def check_disaster_recovery(cluster, vms, qmp_dir):
    """docs/dr.md, "Failover", step by step."""
    # Site A is lost: its containers, volumes and hypervisor with its VMs' disks.
    cluster.compose("--profile", "lab", "rm", "-f", "-s", "-v", *SITE_A)
    for name in ["etcd-1", "etcd-2", "etcd-3", "storage-primary", "storage-primary-2"]:
        cluster.docker("volume", "rm", f"{PROJECT}_{name}")
    expected = {}
    for vm, disk in vms.items():
        expected[vm] = os.path.join(cluster.work, f"{vm}-as-lost.qcow2")
        os.rename(disk, expected[vm])
        for socket in [f"{vm}.qmp", f"{vm}.nbd"]:
            if os.path.exists(os.path.join(qmp_dir, socket)):
                os.remove(os.path.join(qmp_dir, socket))
    print("site A destroyed: containers, volumes and VMs")

    # Site B takes over: a coordinator whose catalog comes from the replica.
    started = time.monotonic()
    cluster.compose("--profile", "dr", "up", "-d", "--no-build", "coordinator-dr")
    dr_url = f"https://127.0.0.1:{DR_PORT}"
    # No VM is known there yet: an empty list (and exit 0) is the answer.
    wait_for("site B's coordinator",
             lambda: cluster.haven_run(["vm", "list"], cluster.dr_admin) is not None, 120)
    rebuilt = cluster.haven_run(["catalog", "rebuild", "--repo", DR_REPOSITORY,
                                 "--coordinator", dr_url], {**cluster.dr_admin, **cluster.dr_reader})
    print(f"site B: {rebuilt.strip()}")
    restored = {}
    for vm in VMS:
        restored[vm] = os.path.join(cluster.work, f"{vm}-site-b.qcow2")
        cluster.haven_run(["restore", f"{vm}@latest", "--coordinator", dr_url,
                           "--format", "qcow2", "--to", restored[vm]],
                          {**cluster.dr_admin, **cluster.dr_reader})
        run(["qemu-img", "compare", "-U", restored[vm], expected[vm]])
    print(f"site B: every VM restored by name, byte-identical, "
          f"{time.monotonic() - started:.1f} s from site B's coordinator start")

    # The restored VMs run at B under QEMU (TCG), and B's worker backs them up there.
    for vm in VMS:
        cluster.processes.append(boot_vm(qmp_dir, vm, restored[vm]))
    cluster.compose("--profile", "dr", "up", "-d", "--no-build", "worker-dr")
    cluster.haven_run(["policy", "apply", os.path.join(DEPLOY, "compose", "policy-dr.toml")],
                      cluster.dr_admin)
    wait_for("site B's worker reporting every VM",
             lambda: all(vm in cluster.haven_run(["vm", "list"], cluster.dr_admin)
                         for vm in VMS), 120)
    def newest():
        listing = json.loads(cluster.haven_run(["snapshots", "--repo", DR_REPOSITORY, "--json"],
                                               cluster.dr_reader))
        return {vm: max(s["timestamp"] for s in listing if s["vm"] == vm) for vm in VMS}

    before = newest()
    jobs, _ = policy_round(cluster, env=cluster.dr_admin)
    assert_backed_up(jobs, VMS, "site B's first round")
    after = newest()
    # (Its retention then prunes the older ones: the count may shrink.)
    stale = [vm for vm in VMS if after[vm] <= before[vm]]
    if stale:
        raise SystemExit(f"FAILED: site B's round made no newer snapshot of {stale}")
    for vm in VMS:
        assert_restores(cluster, cluster.dr_reader, DR_REPOSITORY, vm, restored[vm])
    print("site B: VMs booted under QEMU (TCG) from the restored disks and backed up into "
          "site B, each restoring byte-identical")
    return restored


def check_failback(cluster, running_at_b, qmp_dir, lab_dir):
    """docs/dr.md, "Failback", step by step: site A rebuilt from site B's copy."""
    started = time.monotonic()
    # 1. A's new, empty storage nodes receive everything B holds (each object on
    # both); then backups at B stop, and a last copy takes what they wrote meanwhile.
    cluster.compose("up", "-d", "--no-build", *PRIMARY_NODES)
    copy = ["replicate", "--from", DR_REPOSITORY, "--to", REPOSITORY]
    wait_for("the copy of site B to site A's new storage nodes",
             lambda: cluster.haven_run(copy, cluster.back_to_a, timeout=900), 120)
    cluster.compose("--profile", "dr", "stop", "worker-dr", "coordinator-dr")
    cluster.haven_run(copy, cluster.back_to_a, timeout=900)
    status = json.loads(cluster.haven_run(
        ["replicate", "status", "--from", DR_REPOSITORY, "--to", REPOSITORY, "--json"],
        cluster.back_to_a))
    if any(vm["missing_snapshots"] for vm in status):
        raise SystemExit(f"FAILED: failback copy incomplete: {status}")
    copied = time.monotonic() - started

    # 2. A's control plane, new, and its catalog rebuilt from A's repository.
    cluster.compose("up", "-d", "--no-build", *CONTROL_PLANE_A)
    wait_for("site A's new coordinators",
             lambda: cluster.haven_run(["vm", "list"], cluster.admin) is not None, 180)
    rebuilt = cluster.haven_run(["catalog", "rebuild", "--repo", REPOSITORY],
                                {**cluster.admin, **cluster.primary_reader})
    print(f"failback: site A's catalog: {rebuilt.strip()}")

    # 3. The VMs move back: restored by name at A, as B last backed them up, and run by
    # A's hypervisor; A's workers and original policy take over.
    for process in cluster.processes:
        process.kill()
        process.wait()
    cluster.processes.clear()
    for vm in VMS:
        for socket in [f"{vm}.qmp", f"{vm}.nbd"]:
            if os.path.exists(os.path.join(qmp_dir, socket)):
                os.remove(os.path.join(qmp_dir, socket))
        disk = os.path.join(lab_dir, f"{vm}.qcow2")
        cluster.haven_run(["restore", f"{vm}@latest", "--coordinator",
                           cluster.admin["HAVEN_COORDINATOR"], "--format", "qcow2",
                           "--to", disk], {**cluster.admin, **cluster.primary_reader})
        run(["qemu-img", "compare", "-U", disk, running_at_b[vm]])
    print(f"failback: every VM restored by name at site A, byte-identical to site B's "
          f"({copied:.1f} s to copy B to A, {time.monotonic() - started:.1f} s in all)")
    cluster.compose("--profile", "lab", "up", "-d", "--no-build", "hypervisor",
                    "worker-1", "worker-2")
    vms = wait_for_vms(qmp_dir, lab_dir)
    cluster.haven_run(["policy", "apply", os.path.join(DEPLOY, "compose", "policy.toml")],
                      cluster.admin)
    wait_for("site A's workers reporting every VM",
             lambda: all(vm in cluster.haven_run(["vm", "list"], cluster.admin)
                         for vm in VMS), 120)
    jobs, _ = policy_round(cluster)
    assert_backed_up(jobs, VMS, "site A's first round after the failback")
    for vm, disk in vms.items():
        assert_restores(cluster, cluster.primary_reader, REPOSITORY, vm, disk)
    wait_for("site A's snapshots replicated to B after the failback",
             cluster.replicated_to_b, 300)
    print("failback: site A runs the VMs again, backs them up and replicates them to B")


if __name__ == "__main__":
    main()
