#!/usr/bin/env bash
# The PyPI packages the tests drive, in a venv under target/ (kept between
# runs on one machine, made on a fresh one): kubernetes-validate, which ships
# the Kubernetes JSON schemas (1.25 to 1.37) and PyYAML. Needs Debian's
# python3-venv (scripts/install-deps.sh). Idempotent and quiet when present.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv
want=(kubernetes-validate==1.37.0)
stamp="$venv/.wharf-py-deps"
mkdir -p target
exec 9>target/.py-deps.lock
flock 9   # tests may call this at once (tests/it/kubernetes.rs)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${want[*]}" ] && [ -x "$venv/bin/kubernetes-validate" ]; then
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "${want[@]}"
echo "${want[*]}" > "$stamp"
