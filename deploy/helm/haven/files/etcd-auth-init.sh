#!/bin/sh
# Turns on etcd auth for Haven, once: a `root` user (etcd requires it), a role that may
# read and write Haven's prefix and nothing else, and Haven's user holding that role.
# Run by the compose file's `etcd-init` service and the chart's etcd-init Job; safe to
# run again (steps already done are skipped).
#
# Environment: ETCDCTL_ENDPOINTS, ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY (read by
# etcdctl itself), ROOT_PASSWORD_FILE, HAVEN_PASSWORD_FILE, and optionally
# HAVEN_ETCD_USER (haven) and HAVEN_ETCD_PREFIX (/haven/, Haven's only prefix).
set -eu
: "${ETCDCTL_ENDPOINTS:?}" "${ROOT_PASSWORD_FILE:?}" "${HAVEN_PASSWORD_FILE:?}"
user="${HAVEN_ETCD_USER:-haven}"
prefix="${HAVEN_ETCD_PREFIX:-/haven/}"
root_password=$(head -n 1 "$ROOT_PASSWORD_FILE")
haven_password=$(head -n 1 "$HAVEN_PASSWORD_FILE")
[ -n "$root_password" ] && [ -n "$haven_password" ] || { echo "empty password file" >&2; exit 1; }

# etcd counts "permission denied" as healthy, so this also waits on a cluster with auth.
tries=0
until etcdctl endpoint health >/dev/null 2>&1; do
  tries=$((tries + 1))
  [ "$tries" -lt 120 ] || { echo "etcd at $ETCDCTL_ENDPOINTS is not healthy" >&2; exit 1; }
  sleep 1
done
# With auth on, a client that is no user (the certificate's common name is none) may
# not list users: then every step runs as root, and steps already done are skipped.
if ! etcdctl user list >/dev/null 2>&1; then
  export ETCDCTL_USER="root:$root_password"
fi

# Runs etcdctl ARGS (the password, if any, on standard input: never in `ps`); an
# "already exists"/"already granted" refusal is a step done by an earlier run.
step() {
  password="$1"; shift
  if ! out=$(printf '%s\n' "$password" | etcdctl "$@" 2>&1); then
    case "$out" in
      *"already exists"* | *"already granted"*) ;;
      *) echo "etcdctl $*: $out" >&2; exit 1 ;;
    esac
  fi
}
step "" role add root
step "$root_password" user add root --interactive=false
step "" user grant-role root root
step "" role add "$user"
step "" role grant-permission "$user" --prefix=true readwrite "$prefix"
step "$haven_password" user add "$user" --interactive=false
step "" user grant-role "$user" "$user"
etcdctl auth enable
echo "etcd auth enabled: user $user may read and write $prefix only"
