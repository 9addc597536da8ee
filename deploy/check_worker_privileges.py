"""The qmp-mode worker's privileges are enough, for deploy/check.py: a real backup of
a running qemu-storage-daemon through its QMP socket, full then incremental, by
`haven` as root with only the capabilities the chart's worker container keeps (none),
no new privileges, the socket's folder and the scratch folder root's and 0700 — what
the worker meets on a hypervisor node.
"""

import os
import shutil
import subprocess
import sys
import time

TOOLS = ("qemu-storage-daemon", "qemu-img", "setpriv")


def run_checked(command, what, env=None):
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    if result.returncode != 0:
        sys.exit(f"FAILED: {what}: {' '.join(command)}\n{result.stdout}{result.stderr}")
    return result.stdout


def check_backup_with(haven, capabilities, workdir):
    """Backs up a qemu-storage-daemon's disk twice as root holding only
    `capabilities`. Without root or the QEMU tools it says so and checks nothing."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        print(f"SKIPPED  the worker's capabilities: needs root and {', '.join(missing) or 'nothing else'}")
        return
    base = os.path.join(workdir, "worker-privileges")
    qmp_dir, scratch = os.path.join(base, "qmp"), os.path.join(base, "scratch")
    for folder in (qmp_dir, scratch):
        os.makedirs(folder, mode=0o700)
    disk, socket = os.path.join(base, "disk.qcow2"), os.path.join(qmp_dir, "vm1.qmp")
    run_checked(["qemu-img", "create", "-q", "-f", "qcow2", disk, "64M"], "a test disk")
    daemon = subprocess.Popen(
        ["qemu-storage-daemon",
         "--blockdev", f"driver=file,node-name=file0,filename={disk}",
         "--blockdev", "driver=qcow2,node-name=vda,file=file0",
         "--chardev", f"socket,id=qmp,path={socket},server=on,wait=off",
         "--monitor", "chardev=qmp"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.exists(socket):
                break
            time.sleep(0.05)
        env = {"PATH": os.environ["PATH"], "HAVEN_PASSWORD": "worker-privileges"}
        repo = f"file://{base}/repo"
        run_checked([haven, "repo", "init", "--repo", repo], "a repository", env)
        keep = ",".join(["-all", *(f"+{cap.lower()}" for cap in capabilities)])
        confined = ["setpriv", f"--inh-caps={keep}", f"--bounding-set={keep}", "--no-new-privs", "--"]
        for kind in ("full", "incremental"):
            out = run_checked([*confined, haven, "backup", "qemu", "--qmp", socket, "--vm", "vm1",
                               "--repo", repo, "--scratch-dir", scratch],
                              f"a {kind} QMP backup as root with capabilities {capabilities or 'none'}", env)
            if kind not in out:
                sys.exit(f"FAILED: expected a {kind} backup, got: {out}")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    print(f"ok  the worker's capabilities ({', '.join(capabilities) or 'none'}, root, no new "
          "privileges): full and incremental backups of a running qemu-storage-daemon over QMP")
