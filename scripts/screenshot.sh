#!/usr/bin/env bash
# Makes docs/status-overview.png, the README's picture of the status page:
# a CNCF distribution upstream with the test images, wharf (release build) in
# front of it with its admin listener, a few pulls through wharf (misses,
# hits, an upstream 404), 30 s for the traffic chart's samples, then headless
# Chromium at 1280x1150. Loopback only; everything started here is stopped on
# exit. It runs scripts/install-deps.sh itself (root, for missing packages),
# builds the release binary (minutes on 2 cores), takes about a minute after
# that, and overwrites OUT.png (default docs/status-overview.png).
#
#   scripts/screenshot.sh [OUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/status-overview.png}"
bash scripts/install-deps.sh
cargo build --release --quiet
bash tests/fixtures/build-images.sh target/test-images

work=$(mktemp -d /tmp/wharf-screenshot.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 100); do curl -fsS -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

up=$(port); main=$(port); admin=$(port)
cat > "$work/up.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/up}}
http: {addr: 127.0.0.1:$up}
YML
docker-registry serve "$work/up.yml" 2>/dev/null & pids+=($!)
wait_for "http://127.0.0.1:$up/v2/"
for t in small large ev1 ev2 ev3 multi; do
  skopeo copy --quiet --all --dest-tls-verify=false "oci:target/test-images/oci:$t" "docker://127.0.0.1:$up/library/$t:1"
done

cat > "$work/wharf.toml" <<TOML
[server]
listen = "127.0.0.1:$main"
plain_http = true
admin_listen = "127.0.0.1:$admin"
[cache]
dir = "$work/cache"
max_size = "200MiB"
[[upstream]]
name = "hub"
url = "http://127.0.0.1:$up"
aliases = ["docker.io"]
default = true
TOML
target/release/wharf serve --config "$work/wharf.toml" 2>"$work/wharf.log" & pids+=($!)
wait_for "http://127.0.0.1:$admin/readyz"

pull() { skopeo copy --quiet --all --src-tls-verify=false "docker://127.0.0.1:$main/library/$1" "dir:$work/pulled-$RANDOM"; }
for t in small:1 large:1 ev1:1 multi:1; do pull "$t"; done
sleep 12
for t in small:1 ev1:1 ev2:1 ev1:1 ev3:1 large:1; do pull "$t"; done
curl -s -o /dev/null "http://127.0.0.1:$main/v2/library/nope/manifests/1" || true
sleep 20

mkdir -p "$(dirname "$out")"
chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --force-device-scale-factor=1 --blink-settings=preferredColorScheme=1 \
  --user-data-dir="$work/chromium" --window-size=1280,1150 --virtual-time-budget=3000 \
  --screenshot="$out" "http://127.0.0.1:$admin/" 2>/dev/null
echo "wrote $out"
