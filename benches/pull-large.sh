#!/usr/bin/env bash
# Times a skopeo copy of the large test image (64 MiB random layer) three ways,
# interleaved, median of N rounds (default 5):
#   direct  straight from the distribution upstream
#   cold    through wharf with an empty cache (fills from the upstream)
#   warm    through wharf again, with the upstream stopped (cache only)
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

wp=$(free_port)
cat > "$work/wharf.toml" <<TOML
[server]
listen = "127.0.0.1:$wp"
plain_http = true
[cache]
dir = "$work/cache"
[[upstream]]
name = "hub"
url = "http://127.0.0.1:$up"
aliases = ["docker.io"]
default = true
TOML
cat > "$work/registries.conf" <<CONF
[[registry]]
prefix = "docker.io"
location = "127.0.0.1:1"
insecure = true
[[registry.mirror]]
location = "127.0.0.1:$wp"
insecure = true
CONF

copy() { # $1: source reference, $2: extra skopeo args
  rm -rf "$work/out"
  local t0; t0=$(now)
  # shellcheck disable=SC2086
  skopeo $2 copy --quiet --src-tls-verify=false "$1" "dir:$work/out"
  echo "$(now) - $t0" | bc
}

direct=(); cold=(); warm=()
for _ in $(seq "$N"); do
  direct+=("$(copy "docker://127.0.0.1:$up/library/big:1" "")")
  rm -rf "$work/cache"
  target/release/wharf serve --config "$work/wharf.toml" 2>"$work/wharf.log" & w_pid=$!; pids+=("$w_pid")
  wait_port "$wp"
  cold+=("$(copy "docker://docker.io/library/big:1" "--registries-conf $work/registries.conf")")
  kill "$up_pid"; wait "$up_pid" 2>/dev/null || true
  warm+=("$(copy "docker://docker.io/library/big:1" "--registries-conf $work/registries.conf")")
  kill "$w_pid"; wait "$w_pid" 2>/dev/null || true
  start_upstream
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
md=$(median "${direct[@]}"); mc=$(median "${cold[@]}"); mw=$(median "${warm[@]}")
mkdir -p target/bench
{
  echo "skopeo copy of library/big:1 (64 MiB random layer), median of $N, $(date -u +%Y-%m-%d)"
  printf '%-30s %8s %9s\n' "pull" "seconds" "/ direct"
  printf '%-30s %8.3f %9.2f\n' "direct from upstream" "$md" 1
  printf '%-30s %8.3f %9.2f\n' "through wharf, cold" "$mc" "$(echo "$mc / $md" | bc -l)"
  printf '%-30s %8.3f %9.2f\n' "through wharf, warm (up down)" "$mw" "$(echo "$mw / $md" | bc -l)"
} | tee target/bench/pull-large.txt
