#!/usr/bin/env bash
# Times a skopeo copy of the large test image (64 MiB random layer), interleaved,
# median of N rounds (default 5):
#   direct            straight from the distribution upstream
#   plain cold/warm   through wharf over plain HTTP: empty cache, then again
#                     with the upstream stopped (cache only)
#   tls cold/warm     the same through wharf over TLS (auto CA, --src-cert-dir)
# Prints a table with ratios to the direct pull and writes it to
# target/bench/pull-large.txt. Loopback only. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5}
bash scripts/install-deps.sh
cargo build --release --locked --quiet
images=target/test-images
bash tests/fixtures/build-images.sh "$images"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
now() { date +%s.%N; }

up=$(free_port)
cat > "$work/reg.yml" <<YML
version: 0.1
log: { level: error, accesslog: { disabled: true } }
storage: { filesystem: { rootdirectory: $work/up } }
http: { addr: 127.0.0.1:$up }
YML
start_upstream() { docker-registry serve "$work/reg.yml" >/dev/null 2>&1 & up_pid=$!; pids+=("$up_pid"); wait_port "$up"; }
start_upstream
skopeo copy --quiet --dest-tls-verify=false "oci:$images/oci:large" "docker://127.0.0.1:$up/library/big:1"

# One wharf over plain HTTP, one over TLS; each its own cache.
for mode in plain tls; do
  port=$(free_port)
  eval "port_$mode=$port"
  if [ "$mode" = plain ]; then server="plain_http = true"; insecure="insecure = true"; else server=""; insecure=""; fi
  cat > "$work/wharf-$mode.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
$server
[cache]
dir = "$work/cache-$mode"
[[upstream]]
name = "hub"
url = "http://127.0.0.1:$up"
aliases = ["docker.io"]
default = true
TOML
  cat > "$work/registries-$mode.conf" <<CONF
[[registry]]
prefix = "docker.io"
location = "127.0.0.1:1"
insecure = true
[[registry.mirror]]
location = "localhost:$port"
$insecure
CONF
done

copy() { # $1: source reference, then extra skopeo global args / copy args
  local src=$1; shift
  rm -rf "$work/out"
  local t0; t0=$(now)
  skopeo "$@" --quiet "$src" "dir:$work/out"
  echo "$(now) - $t0" | bc
}
start_wharf() { # $1: mode
  rm -rf "$work/cache-$1"
  target/release/wharf serve --config "$work/wharf-$1.toml" 2>>"$work/wharf-$1.log" &
  eval "pid_$1=$!"; pids+=("$!")
  wait_port "$(eval echo "\$port_$1")"
}

direct=(); plain_cold=(); plain_warm=(); tls_cold=(); tls_warm=()
for _ in $(seq "$N"); do
  direct+=("$(copy "docker://127.0.0.1:$up/library/big:1" copy --src-tls-verify=false)")
  start_wharf plain; start_wharf tls
  mkdir -p "$work/certs"; cp "$work/cache-tls/tls/ca.crt" "$work/certs/ca.crt"
  plain=(--registries-conf "$work/registries-plain.conf" copy)
  tls=(--registries-conf "$work/registries-tls.conf" copy --src-cert-dir "$work/certs")
  plain_cold+=("$(copy docker://docker.io/library/big:1 "${plain[@]}")")
  tls_cold+=("$(copy docker://docker.io/library/big:1 "${tls[@]}")")
  kill "$up_pid"; wait "$up_pid" 2>/dev/null || true
  plain_warm+=("$(copy docker://docker.io/library/big:1 "${plain[@]}")")
  tls_warm+=("$(copy docker://docker.io/library/big:1 "${tls[@]}")")
  kill "$pid_plain" "$pid_tls"; wait "$pid_plain" "$pid_tls" 2>/dev/null || true
  start_upstream
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
md=$(median "${direct[@]}")
row() { local m; m=$(median "${@:2}"); printf '%-34s %8.3f %9.2f\n' "$1" "$m" "$(echo "$m / $md" | bc -l)"; }
mkdir -p target/bench
{
  echo "skopeo copy of library/big:1 (64 MiB random layer), median of $N, $(date -u +%Y-%m-%d)"
  printf '%-34s %8s %9s\n' "pull" "seconds" "/ direct"
  row "direct from upstream" "${direct[@]}"
  row "wharf plain HTTP, cold" "${plain_cold[@]}"
  row "wharf plain HTTP, warm (up down)" "${plain_warm[@]}"
  row "wharf TLS, cold" "${tls_cold[@]}"
  row "wharf TLS, warm (up down)" "${tls_warm[@]}"
} | tee target/bench/pull-large.txt
