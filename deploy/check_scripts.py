"""The chart's shell scripts run for real, for deploy/check.py: the etcd snapshot
CronJob's script against a real etcd with auth on (set up by etcd-auth-init.sh, as
in the chart), its snapshot restored into a second etcd; the repo-init hook's script
twice against a real repository with the real `haven`.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request

SNAPSHOT_NAME = "etcd-"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sh(script, env, args=(), expect_ok=True, what=""):
    result = subprocess.run(["sh", script, *args], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], **env}, timeout=180)
    if (result.returncode == 0) != expect_ok:
        sys.exit(f"FAILED: {what}: sh {script} {' '.join(args)} exited {result.returncode}\n"
                 f"{result.stdout}{result.stderr}")
    return result


class Etcd:
    """One etcd member on loopback ports, stopped by `stop`."""

    def __init__(self, data_dir, peer=None):
        self.client = f"http://127.0.0.1:{free_port()}"
        peer = peer or f"http://127.0.0.1:{free_port()}"
        self.log = open(f"{data_dir}.log", "w")
        self.process = subprocess.Popen(
            ["etcd", "--name", "check", "--data-dir", data_dir,
             "--listen-client-urls", self.client, "--advertise-client-urls", self.client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"check={peer}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"{self.client}/health", timeout=2) as answer:
                    if b'"true"' in answer.read():
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        sys.exit(f"FAILED: etcd did not start (log: {data_dir}.log)")

    def etcdctl(self, *args, user=None):
        command = ["etcdctl", "--endpoints", self.client]
        if user:
            command += ["--user", user]
        return subprocess.run([*command, *args], capture_output=True, text=True, timeout=30)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def check_etcd_snapshot(init_script, snapshot_script, workdir):
    """Auth on as in the chart; three snapshots with KEEP=2 through a dead first
    endpoint leave the newest two; a wrong root password fails; the newest snapshot
    restores into a new etcd holding Haven's key."""
    run_dir = os.path.join(workdir, "etcd-snapshot-check")
    os.makedirs(os.path.join(run_dir, "snapshots"))
    passwords = {}
    for user in ("root", "haven", "wrong"):
        passwords[user] = os.path.join(run_dir, f"{user}-password")
        with open(passwords[user], "w") as file:
            file.write(f"{user}-secret\n")
    etcd = Etcd(os.path.join(run_dir, "data"))
    try:
        sh(init_script, {"ETCDCTL_ENDPOINTS": etcd.client, "ROOT_PASSWORD_FILE": passwords["root"],
                         "HAVEN_PASSWORD_FILE": passwords["haven"]}, what="etcd-auth-init.sh")
        put = etcd.etcdctl("put", "/haven/check", "kept", user="haven:haven-secret")
        if put.returncode != 0:
            sys.exit(f"FAILED: etcd put as haven: {put.stderr}")
        snapshots = os.path.join(run_dir, "snapshots")
        env = {"ETCDCTL_ENDPOINTS": f"http://127.0.0.1:{free_port()},{etcd.client}",
               "ROOT_PASSWORD_FILE": passwords["root"], "SNAPSHOT_DIR": snapshots, "KEEP": "2"}
        for attempt in range(3):
            if attempt:
                time.sleep(1.1)  # the names have a resolution of one second
            sh(snapshot_script, env, what="etcd-snapshot.sh")
        kept = sorted(os.listdir(snapshots))
        if len(kept) != 2 or not all(name.startswith(SNAPSHOT_NAME) for name in kept):
            sys.exit(f"FAILED: etcd-snapshot.sh with KEEP=2 left {kept}")
        sh(snapshot_script, {**env, "ROOT_PASSWORD_FILE": passwords["wrong"]}, expect_ok=False,
           what="etcd-snapshot.sh with a wrong root password")
    finally:
        etcd.stop()
    restored_dir = os.path.join(run_dir, "restored")
    peer = f"http://127.0.0.1:{free_port()}"
    restore = subprocess.run(["etcdctl", "snapshot", "restore", os.path.join(snapshots, kept[-1]),
                              "--data-dir", restored_dir, "--name", "check",
                              "--initial-cluster", f"check={peer}",
                              "--initial-advertise-peer-urls", peer],
                             capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"})
    if restore.returncode != 0:
        sys.exit(f"FAILED: etcdctl snapshot restore: {restore.stderr}")
    restored = Etcd(restored_dir, peer)
    try:
        got = restored.etcdctl("get", "/haven/check", "--print-value-only", user="haven:haven-secret")
        if got.stdout.strip() != "kept":
            sys.exit(f"FAILED: the restored snapshot lacks /haven/check: {got.stdout}{got.stderr}")
    finally:
        restored.stop()
    print(f"ok  etcd-snapshot.sh: a real etcd with auth, snapshots {kept} kept (KEEP=2), "
          "a wrong root password refused, the newest restores Haven's keys")


def check_repo_init(script, haven, workdir):
    """repo-init.sh creates a repository, accepts it on a second run with the same
    password, and fails with a wrong password or an unusable URL."""
    url = f"file://{workdir}/repo-init-check"
    env = {"HAVEN": haven, "HAVEN_PASSWORD": "repo-init-password"}
    first = sh(script, env, [url], what="repo-init.sh, first run")
    if "created repository" not in first.stdout:
        sys.exit(f"FAILED: repo-init.sh did not create {url}: {first.stdout}")
    again = sh(script, env, [url], what="repo-init.sh, second run")
    if "already exists and the password opens it" not in again.stdout:
        sys.exit(f"FAILED: repo-init.sh on an existing repository: {again.stdout}")
    sh(script, {**env, "HAVEN_PASSWORD": "another"}, [url], expect_ok=False,
       what="repo-init.sh with another password")
    sh(script, env, ["bogus://x"], expect_ok=False, what="repo-init.sh with a bad URL")
    print("ok  repo-init.sh: creates, accepts an existing repository its password opens, "
          "refuses another password and a bad URL")
