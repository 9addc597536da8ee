#!/bin/sh
# A lab hypervisor for the compose cluster (service `hypervisor`, profile `lab`): one
# `qemu-storage-daemon` per VM, standing in for the QEMUs of a real KVM host, so the
# cluster can be tried and tested with no host set up.
#
# For each VM named in HAVEN_LAB_VMS (space-separated):
#   - its disk is /var/lib/haven/vms/VM.qcow2; a missing disk is made with
#     HAVEN_LAB_DISK_MIB MiB and three areas of data distinct per VM, an existing one
#     (a disk restored after a failback, say) is used as it is;
#   - QMP at $QMP_DIR/VM.qmp, where the workers look (worker.toml's qmp_dir);
#   - the daemon's NBD server at $QMP_DIR/VM.nbd, which the workers find beside the
#     QMP socket and add their exports to, and an export `guest` on it, writable:
#     the "guest", through which a test writes into the running VM's disk.
#
# The scratch folder (/var/lib/haven/scratch) must be mounted at the same path here
# and in the workers: the workers name fleecing overlays there that QEMU creates.
# The script runs until stopped; SIGTERM stops every daemon.
set -eu

vms=${HAVEN_LAB_VMS:?name the VMs in HAVEN_LAB_VMS}
size=${HAVEN_LAB_DISK_MIB:-512}
disks=/var/lib/haven/vms
qmp_dir=${QMP_DIR:-/run/haven/qmp}
mkdir -p "$disks" "$qmp_dir"

pids=
stop() {
    # The daemons' own handler closes their exports and sockets cleanly.
    [ -z "$pids" ] || kill $pids 2>/dev/null || true
    wait
    exit "${1:-0}"
}
trap stop TERM INT

seed=0
for vm in $vms; do
    disk="$disks/$vm.qcow2"
    if [ ! -e "$disk" ]; then
        qemu-img create -q -f qcow2 "$disk" "${size}M"
        for area in "0 17" "5 34" "40 51"; do
            set -- $area
            qemu-io -f qcow2 -c "write -P $(($2 + seed)) $(($1 << 20)) 3M" "$disk" >/dev/null
        done
    fi
    rm -f "$qmp_dir/$vm.qmp" "$qmp_dir/$vm.nbd"
    qemu-storage-daemon \
        --chardev "socket,path=$qmp_dir/$vm.qmp,server=on,wait=off,id=m" \
        --monitor chardev=m \
        --blockdev "driver=file,filename=$disk,node-name=file0" \
        --blockdev driver=qcow2,file=file0,node-name=vda \
        --nbd-server "addr.type=unix,addr.path=$qmp_dir/$vm.nbd" \
        --export type=nbd,id=guest,node-name=vda,name=guest,writable=on &
    pids="$pids $!"
    seed=$((seed + 1))
    echo "lab hypervisor: $vm running ($disk)"
done

# Any daemon that exits ends the lab: a VM that died must not look alive.
while :; do
    for pid in $pids; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "lab hypervisor: a qemu-storage-daemon exited" >&2
            stop 1
        fi
    done
    sleep 2
done
