#!/usr/bin/env bash
# TLS handshakes per second against wharf (auto CA), with openssl s_time: new
# sessions (full handshakes) and resumed sessions, TLS 1.3 and TLS 1.2, each for
# SECS seconds (default 5), each connection carrying one GET /v2/ (so TLS 1.3
# tickets, sent after the handshake, are received). One s_time client: it measures what one client that
# reconnects per request (dockerd, podman, skopeo) gets, on 2 shared cores.
# Writes target/bench/tls-handshakes.txt. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-5}
cargo build --release --locked --quiet
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/w.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[server.tls]
names = ["localhost"]
[cache]
dir = "$work/cache"
[[upstream]]
name = "hub"
url = "http://127.0.0.1:1"
default = true
TOML
target/release/wharf serve --config "$work/w.toml" 2>/dev/null & pid=$!
for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
rate() { # s_time prints "N connections in T real seconds"
  openssl s_time -connect "127.0.0.1:$port" -CAfile "$work/cache/tls/ca.crt" -time "$SECS" -www /v2/ "$@" 2>/dev/null \
    | awk '/connections in .* real seconds/ {printf "%.0f", $1/$4; exit}'
}
mkdir -p target/bench
{
  echo "wharf TLS handshakes per second (openssl s_time, 1 client, ${SECS}s each, $(date -u +%Y-%m-%d))"
  printf '%-10s %12s %12s\n' "" "new" "resumed"
  printf '%-10s %12s %12s\n' "TLS 1.3" "$(rate -new -tls1_3)" "$(rate -reuse -tls1_3)"
  printf '%-10s %12s %12s\n' "TLS 1.2" "$(rate -new -tls1_2)" "$(rate -reuse -tls1_2)"
} | tee target/bench/tls-handshakes.txt
