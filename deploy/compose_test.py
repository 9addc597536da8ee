#!/usr/bin/env python3
"""Runs `deploy/compose.yaml` as shipped on the local Docker engine and backs a VM up
through it, the way deploy/README.md tells an operator to.

What it does, in order:
1. builds the images from local files (`deploy/images/build.sh`: no registry);
2. makes the installation's secrets as deploy/README.md says: etcd's CA, certificates
   and passwords (openssl), the control plane's certificates (`haven pki`), one file
   per storage key;
3. starts a "VM" on this host: `qemu-storage-daemon` with a qcow2 disk and its QMP
   socket in the folder the worker container mounts (`HAVEN_QMP_DIR`);
4. `docker-compose up` with only environment variables set (image names among them:
   the compose file is not changed);
5. as an admin, over the coordinators' mutual TLS: initialises the repository on the
   primary storage node, applies `deploy/compose/policy.toml` and runs a backup job;
6. restores the snapshot from the primary storage node on the host and compares it
   byte for byte with the VM's disk; waits for the coordinator's follow-up replicate
   job to put the snapshot on the secondary storage node (read with the DR site's key).

Everything it started (containers, volumes, network, qemu-storage-daemon, files) is
removed at the end, passed or failed. Usage: `deploy/compose_test.py [HAVEN_BINARY]`.
Needs docker with docker-compose (v1 or the v2 plugin), debootstrap, openssl,
qemu-img, qemu-storage-daemon.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

DEPLOY = os.path.dirname(os.path.abspath(__file__))
PROJECT = "haven-compose-test"
TAG = "composetest"
ADMIN_PORTS = (7700, 7710)
HTTP_PORT = 7701
PRIMARY = "http://127.0.0.1:9000"
SECONDARY = "http://127.0.0.1:9010"
REPOSITORY = "s3://haven/cluster?endpoint=" + PRIMARY
DR_REPOSITORY = "s3://haven/cluster?endpoint=" + SECONDARY
VM = "vm1"
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
        ("server", "/CN=etcd", ["subjectAltName=DNS:etcd,DNS:localhost,IP:127.0.0.1",
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
         "--dns", "coordinator-1", "--dns", "coordinator-2", "--dns", "localhost",
         "--ip", "127.0.0.1"])
    run([haven, "pki", "issue", "worker", "worker-1", "--dir", folder])
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


def start_vm(folder, qmp_dir):
    """A qcow2 disk with distinct data served by qemu-storage-daemon, QMP at VM.qmp."""
    disk = os.path.join(folder, f"{VM}.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "64M"])
    for offset, pattern in [(0, "0x11"), (5 << 20, "0x22"), (40 << 20, "0x33")]:
        run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} 3M", disk])
    qmp = os.path.join(qmp_dir, f"{VM}.qmp")
    daemon = subprocess.Popen(
        ["qemu-storage-daemon",
         "--chardev", f"socket,path={qmp},server=on,wait=off,id=m",
         "--monitor", "chardev=m",
         "--blockdev", f"driver=file,filename={disk},node-name=file0",
         "--blockdev", "driver=qcow2,file=file0,node-name=vda"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    wait_for("the VM's QMP socket", lambda: os.path.exists(qmp), 20)
    return daemon, disk


def wait_for(what, ready, seconds):
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
        time.sleep(1)
    raise SystemExit(f"FAILED: {what} not within {seconds} s" + (f": {last}" if last else ""))


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main():
    haven = os.path.abspath(
        sys.argv[1] if len(sys.argv) > 1
        else os.path.join(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/haven-target"),
                          "debug", "haven")
    )
    compose = compose_command()
    images = run([os.path.join(DEPLOY, "images", "build.sh"), haven],
                 env={**os.environ, "HAVEN_IMAGE_TAG": TAG})
    print(images, end="")

    work = tempfile.mkdtemp(prefix="haven-compose-")
    os.chmod(work, 0o755)
    qmp_dir = os.path.join(work, "qmp")
    os.makedirs(qmp_dir)
    password = os.urandom(16).hex()
    admin_key = ("admin", os.urandom(20).hex())
    make_etcd_secrets(os.path.join(work, "etcd-secrets"))
    pki = os.path.join(work, "pki")
    make_pki(haven, pki)
    keys = make_storage_secrets(os.path.join(work, "storage-secrets"))
    daemon, disk = start_vm(work, qmp_dir)

    env = {
        **os.environ,
        "HAVEN_IMAGE": f"haven:{TAG}",
        "HAVEN_ETCD_IMAGE": f"haven-etcd:{TAG}",
        "HAVEN_PASSWORD": password,
        "HAVEN_STORAGE_ACCESS_KEY": admin_key[0],
        "HAVEN_STORAGE_SECRET_KEY": admin_key[1],
        "HAVEN_APPEND_ACCESS_KEY": "primary-append",
        "HAVEN_APPEND_SECRET_KEY": keys["primary-append"],
        "HAVEN_STORAGE_SECRETS": os.path.join(work, "storage-secrets"),
        "HAVEN_ETCD_SECRETS": os.path.join(work, "etcd-secrets"),
        "HAVEN_PKI_DIR": pki,
        "HAVEN_QMP_DIR": qmp_dir,
    }
    project = [*compose, "-p", PROJECT, "-f", os.path.join(DEPLOY, "compose.yaml")]
    try:
        run([*project, "up", "-d", "--no-build"], env=env, timeout=300)
        check_cluster(haven, env, pki, disk, work, keys)
        print("compose_test: PASSED")
    except BaseException:
        logs = subprocess.run([*project, "logs", "--no-color", "--tail", "40"], env=env,
                              capture_output=True, text=True)
        print(logs.stdout[-12000:], file=sys.stderr)
        raise
    finally:
        subprocess.run([*project, "down", "-v", "--remove-orphans", "--timeout", "5"],
                       env=env, capture_output=True)
        daemon.kill()
        daemon.wait()
        for image in [f"haven:{TAG}", f"haven-etcd:{TAG}"]:
            subprocess.run(["docker", "image", "rm", image], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def check_cluster(haven, env, pki, disk, work, keys):
    admin = {
        **env,
        # Both replicas' published ports: the leader's advertised URL
        # (https://coordinator-N:7700) resolves only inside the compose network, so a
        # client on the host finds the leader among the URLs it was given.
        "HAVEN_COORDINATOR": ",".join(f"https://127.0.0.1:{port}" for port in ADMIN_PORTS),
        "HAVEN_CA_FILE": os.path.join(pki, "ca.pem"),
        "HAVEN_CERT_FILE": os.path.join(pki, "admin.pem"),
        "HAVEN_KEY_FILE": os.path.join(pki, "admin-key.pem"),
    }
    # A leader elected through etcd (TLS, auth) answers the admin over mutual TLS.
    wait_for("a coordinator leader", lambda: run([haven, "vm", "list"], env=admin) is not None, 120)
    health = run(["curl", "-sS", "--fail", "--cacert", admin["HAVEN_CA_FILE"],
                  f"https://127.0.0.1:{HTTP_PORT}/healthz"])
    print(f"coordinator /healthz: {health.strip()}")
    # The admin key of the storage nodes initialises the repository.
    storage_admin = {**env, "AWS_ACCESS_KEY_ID": env["HAVEN_STORAGE_ACCESS_KEY"],
                     "AWS_SECRET_ACCESS_KEY": env["HAVEN_STORAGE_SECRET_KEY"],
                     "AWS_REGION": "us-east-1"}
    wait_for("the primary storage node",
             lambda: run([haven, "repo", "init", "--repo", REPOSITORY], env=storage_admin), 60)
    run([haven, "policy", "apply", os.path.join(DEPLOY, "compose", "policy.toml")], env=admin)
    wait_for(f"the worker reporting {VM}",
             lambda: VM in run([haven, "vm", "list"], env=admin), 120)
    started = time.monotonic()
    job = run([haven, "job", "run", VM, "--watch"], env=admin, timeout=600)
    print(f"backup job through compose: {time.monotonic() - started:.1f} s\n{job.strip()}")

    # Restore on the host from the primary, with the append key (reads are allowed).
    reader = {**env, "AWS_ACCESS_KEY_ID": "primary-append",
              "AWS_SECRET_ACCESS_KEY": keys["primary-append"], "AWS_REGION": "us-east-1"}
    restored = os.path.join(work, "restored.raw")
    run([haven, "restore", f"{VM}@latest", "--repo", REPOSITORY, "--to", restored], env=reader)
    original = os.path.join(work, "original.raw")
    run(["qemu-img", "convert", "-U", "-O", "raw", disk, original])
    if sha256(restored) != sha256(original):
        raise SystemExit("FAILED: the restored disk differs from the VM's")
    print("restore from the primary storage node: byte-identical")

    # The policy's replicate_to: the coordinator's follow-up job copies the snapshot to
    # the secondary node, which the DR site's key reads.
    dr = {**env, "AWS_ACCESS_KEY_ID": "dr-append", "AWS_SECRET_ACCESS_KEY": keys["dr-append"],
          "AWS_REGION": "us-east-1"}

    def replicated():
        listing = json.loads(run([haven, "snapshots", "--repo", DR_REPOSITORY, "--json"], env=dr))
        return any(VM in json.dumps(snapshot) for snapshot in listing)

    wait_for("the snapshot on the secondary storage node", replicated, 180)
    print("replicated to the secondary storage node: listed with the DR key")


if __name__ == "__main__":
    main()
