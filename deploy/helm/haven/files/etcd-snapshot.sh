#!/bin/sh
# Saves a snapshot of etcd's keyspace in $SNAPSHOT_DIR (etcd-UTCTIME.db) and keeps the
# newest $KEEP. Run by the chart's etcd-snapshot CronJob; deploy/check.py runs it
# against a real etcd. etcd keeps its maintenance API (snapshots) to its root user,
# so this signs in as root, like etcd-auth-init.sh.
#
# Environment: ETCDCTL_ENDPOINTS (comma-separated: the first member that answers is
# saved), ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY (read by etcdctl itself),
# ROOT_PASSWORD_FILE, SNAPSHOT_DIR, and optionally KEEP (8).
set -eu
: "${ETCDCTL_ENDPOINTS:?}" "${ROOT_PASSWORD_FILE:?}" "${SNAPSHOT_DIR:?}"
keep="${KEEP:-8}"
case "$keep" in '' | *[!0-9]* | 0) echo "KEEP must be a positive number, got $keep" >&2; exit 1 ;; esac
root_password=$(head -n 1 "$ROOT_PASSWORD_FILE")
[ -n "$root_password" ] || { echo "empty password file $ROOT_PASSWORD_FILE" >&2; exit 1; }
# In the environment, never in `ps`.
export ETCDCTL_USER="root:$root_password"

# `snapshot save` takes one endpoint, given as a flag (etcdctl refuses the variable too).
endpoints=$(echo "$ETCDCTL_ENDPOINTS" | tr ',' ' ')
unset ETCDCTL_ENDPOINTS
file="$SNAPSHOT_DIR/etcd-$(date -u +%Y%m%dT%H%M%SZ).db"
saved=""
for endpoint in $endpoints; do
  # etcdctl writes FILE.part and renames it once the snapshot's checksum matched.
  if out=$(etcdctl --endpoints="$endpoint" snapshot save "$file" 2>&1); then
    saved="$endpoint"
    break
  fi
  echo "etcd snapshot from $endpoint failed: $out" >&2
  rm -f "$file.part"
done
[ -n "$saved" ] || { echo "no etcd member of $endpoints saved a snapshot" >&2; exit 1; }
echo "saved $file ($(wc -c < "$file") bytes) from $saved"

# The names sort by time: remove all but the newest $keep.
ls -1 "$SNAPSHOT_DIR" | grep -E '^etcd-[0-9]{8}T[0-9]{6}Z\.db$' | sort -r | tail -n +"$((keep + 1))" |
  while read -r old; do
    rm -f "$SNAPSHOT_DIR/$old"
    echo "removed $old (keeping $keep)"
  done
