#!/usr/bin/env bash
# What TLS costs `haven serve-nbd`: nbdcopy throughput of one snapshot over plain NBD
# and over NBD with STARTTLS (mutual TLS, QEMU's x509 layout), same server settings,
# interleaved rounds, medians.
#
#   bench/serve-nbd-tls.sh [SIZE_MIB=1024] [ROUNDS=5]
#
# The image is random data (no holes, incompressible), so every byte crosses the
# connection. Both servers listen on loopback with a chunk cache larger than the image
# and are warmed by one read, so rounds measure the transport (NBD framing, TLS
# records), not chunk fetching and decryption. nbdcopy writes to null:. For reference,
# qemu-nbd serves the same image from the page cache, plain and with the same TLS
# credentials: its TLS/plain ratio is what QEMU's own server pays.
# PROFILE=dev uses the debug build (dependencies at opt-level 2) instead of release;
# HAVEN_BIN=PATH uses that binary as is.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
rounds=${2:-5}
profile=${PROFILE:-release}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/haven-target}"
command -v nbdcopy >/dev/null || { echo "nbdcopy (libnbd-bin) is required" >&2; exit 1; }
command -v openssl >/dev/null || { echo "openssl is required" >&2; exit 1; }
if [ -n "${HAVEN_BIN:-}" ]; then
  built=$HAVEN_BIN; profile="given ($HAVEN_BIN)"
elif [ "$profile" = release ]; then
  cargo build --release --locked -p haven-cli >/dev/null 2>&1
  built="$CARGO_TARGET_DIR/release/haven"
else
  cargo build --locked -p haven-cli >/dev/null 2>&1
  built="$CARGO_TARGET_DIR/debug/haven"
fi

work=${BENCH_DIR:-/var/tmp/haven-bench-serve-nbd-tls}
rm -rf "$work"; mkdir -p "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
cp "$built" "$work/haven-bin"
haven="$work/haven-bin"

# Credentials in QEMU's layout: a CA, the server's directory, a client's directory.
pki="$work/pki"; mkdir -p "$pki/server" "$pki/client"
issue() { # issue NAME EXTENSIONS
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "/CN=$1" \
    -keyout "$pki/$1-key.pem" -out "$pki/$1.csr" 2>/dev/null
  printf '%b' "$2" > "$pki/$1.ext"
  openssl x509 -req -days 2 -in "$pki/$1.csr" -CA "$pki/ca-cert.pem" -CAkey "$pki/ca-key.pem" \
    -CAcreateserial -CAserial "$pki/serial" -extfile "$pki/$1.ext" -out "$pki/$1-cert.pem" 2>/dev/null
}
openssl req -x509 -nodes -days 2 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj /CN=bench-ca \
  -keyout "$pki/ca-key.pem" -out "$pki/ca-cert.pem" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
usage='basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n'
issue server "${usage}extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
issue client "${usage}extendedKeyUsage=clientAuth\n"
for side in server client; do
  cp "$pki/ca-cert.pem" "$pki/$side-cert.pem" "$pki/$side-key.pem" "$pki/$side/"
done

image="$work/disk.img"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom > "$image"
export HAVEN_PASSWORD=bench HAVEN_REPO="$work/repo"
"$haven" repo init >/dev/null
"$haven" backup image "$image" --format raw --vm bench >/dev/null

cache_mib=$((size_mib + size_mib / 2))
serve() { # serve PORT [ARGS...]: starts a server and waits until it listens
  local port=$1; shift
  "$haven" serve-nbd bench@latest --listen "tcp:127.0.0.1:$port" --cache-mib "$cache_mib" "$@" \
    > "$work/serve-$port.log" 2>&1 &
  pids+=($!)
  until grep -qs '^serving ' "$work/serve-$port.log"; do sleep 0.05; done
}
plain_port=$((20000 + RANDOM % 5000)); tls_port=$((plain_port + 1))
serve "$plain_port"
serve "$tls_port" --tls-creds "$pki/server"
plain_uri="nbd://127.0.0.1:$plain_port/vda"
tls_uri="nbds://127.0.0.1:$tls_port/vda?tls-certificates=$pki/client"
qemu_plain_port=$((tls_port + 1)); qemu_tls_port=$((tls_port + 2))
qemu-nbd -f raw -r -t -e 8 -x vda -b 127.0.0.1 -p "$qemu_plain_port" "$image" 2>/dev/null &
pids+=($!)
qemu-nbd -f raw -r -t -e 8 -x vda -b 127.0.0.1 -p "$qemu_tls_port" "$image" \
  --object "tls-creds-x509,id=tls0,dir=$pki/server,endpoint=server" --tls-creds tls0 2>/dev/null &
pids+=($!)
until nbdinfo --size "nbd://127.0.0.1:$qemu_plain_port/vda" >/dev/null 2>&1; do sleep 0.05; done
qemu_plain_uri="nbd://127.0.0.1:$qemu_plain_port/vda"
qemu_tls_uri="nbds://127.0.0.1:$qemu_tls_port/vda?tls-certificates=$pki/client"

# seconds URI: wall-clock seconds of one nbdcopy of the whole export to null:.
seconds() {
  local start end
  start=$(date +%s.%N)
  nbdcopy "$1" null: || exit 1
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}
seconds "$plain_uri" >/dev/null   # warm both caches
seconds "$tls_uri" >/dev/null
seconds "$qemu_plain_uri" >/dev/null

# cpu PID: seconds of CPU the process has used so far (user + system).
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }
plain_cpu_before=$(cpu "${pids[0]}"); tls_cpu_before=$(cpu "${pids[1]}")
plain_times=(); tls_times=(); qemu_plain_times=(); qemu_tls_times=()
echo "image: $size_mib MiB random; $(nproc) cores; $rounds rounds; $profile build"
for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then
    plain_times+=("$(seconds "$plain_uri")"); tls_times+=("$(seconds "$tls_uri")")
  else
    tls_times+=("$(seconds "$tls_uri")"); plain_times+=("$(seconds "$plain_uri")")
  fi
  qemu_plain_times+=("$(seconds "$qemu_plain_uri")"); qemu_tls_times+=("$(seconds "$qemu_tls_uri")")
  printf 'round %d: plain %.2f s, tls %.2f s; qemu-nbd plain %.2f s, tls %.2f s\n' "$round" \
    "${plain_times[-1]}" "${tls_times[-1]}" "${qemu_plain_times[-1]}" "${qemu_tls_times[-1]}"
done
plain_cpu=$(echo "($(cpu "${pids[0]}") - $plain_cpu_before) / $rounds" | bc -l)
tls_cpu=$(echo "($(cpu "${pids[1]}") - $tls_cpu_before) / $rounds" | bc -l)
printf 'serve-nbd CPU per copy: plain %.2f s, tls %.2f s\n' "$plain_cpu" "$tls_cpu"
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
plain=$(median "${plain_times[@]}"); tls=$(median "${tls_times[@]}")
printf 'nbdcopy median: plain %.2f s (%.0f MiB/s), tls %.2f s (%.0f MiB/s); tls/plain throughput %.2f\n' \
  "$plain" "$(echo "$size_mib / $plain" | bc -l)" "$tls" "$(echo "$size_mib / $tls" | bc -l)" \
  "$(echo "$plain / $tls" | bc -l)"
qemu_plain=$(median "${qemu_plain_times[@]}"); qemu_tls=$(median "${qemu_tls_times[@]}")
printf 'qemu-nbd reference: plain %.2f s, tls %.2f s; tls/plain throughput %.2f\n' \
  "$qemu_plain" "$qemu_tls" "$(echo "$qemu_plain / $qemu_tls" | bc -l)"
