#!/usr/bin/env bash
# Builds wharf's container image offline, from the repository alone: no base
# image is downloaded. A minimal linux/amd64 OCI image with one layer holding
#   /usr/bin/wharf                         the binary (dynamic, glibc)
#   /usr/lib/x86_64-linux-gnu/...          the shared libraries `ldd` names
#   /lib, /lib64                           merged-/usr symlinks (the loader path)
#   /etc/ssl/certs/ca-certificates.crt     Debian's CA bundle
#   /etc/passwd, /etc/group                root and wharf (uid/gid 65532)
#   /etc/nsswitch.conf                     files, then DNS
#   /etc/wharf/config.toml                 deploy/image/config.toml
#   /var/lib/wharf/                        the cache, owned by 65532, mode 0700
# and nothing else (no shell, no package manager). The config runs wharf as
# 65532:65532 with Entrypoint ["/usr/bin/wharf"], Cmd ["serve", "--config",
# "/etc/wharf/config.toml"], ports 5000 (registry) and 9090 (admin), and the
# OCI annotations (and labels) org.opencontainers.image.source, version,
# revision and created.
#
# Why dynamic glibc and not a static binary: wharf resolves upstream names
# with getaddrinfo (tokio's lookup_host behind reqwest's resolver), which a
# `crt-static` glibc build breaks (NSS). glibc >= 2.34 has the files and dns
# NSS modules inside libc.so.6, so the libraries ldd lists are all it needs.
#
# Reproducible: every timestamp is SOURCE_DATE_EPOCH (default: the commit's
# time), the layer is a sorted tar with numeric owners and no atime/ctime, so
# two builds of the same commit with the same binary (and the same Debian
# libraries and CA bundle) give the same image digest.
#
# Usage: scripts/build-image.sh [--binary PATH] [--out DIR] [--name REF]
#                               [--source URL] [--keep-debug]
#                               [--push docker://REF [-- SKOPEO-ARGS...]]
#   --binary PATH   use this wharf binary instead of `cargo build --release`
#                   (the test suite passes its debug build)
#   --out DIR       output directory (default target/image): DIR/oci is the
#                   OCI layout (tag = the crate's version), DIR/wharf.oci.tar
#                   the same as an OCI archive for `ctr images import`,
#                   DIR/digest the manifest digest
#   --name REF      the name `ctr images import` gives it (annotation
#                   io.containerd.image.name; default localhost/wharf:VERSION)
#   --source URL    org.opencontainers.image.source (default: git remote
#                   origin's URL)
#   --keep-debug    keep the binary's debug sections. By default they are
#                   dropped (objcopy --strip-debug): the release profile's
#                   line tables make the binary 96 MB instead of 23 MB (28.7
#                   instead of 9.9 MB compressed); symbols stay, so a panic's
#                   backtrace still names its functions, without file:line.
#   --push REF      then copy the image there with skopeo (arguments after
#                   `--` go to skopeo copy, e.g. --dest-creds, --dest-tls-verify)
# Needs (Debian): umoci, python3, binutils (objcopy), skopeo (push); root.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

binary= out=target/image name= source= strip=true push= skopeo_args=()
while [ $# -gt 0 ]; do
  case $1 in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --source) source=$2; shift 2 ;;
    --keep-debug) strip=false; shift ;;
    --push) push=$2; shift 2 ;;
    --) shift; skopeo_args=("$@"); break ;;
    *) echo "build-image: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "build-image: run as root (the layer's owners)" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
revision=$(git rev-parse HEAD)
git diff --quiet HEAD -- 2>/dev/null || revision="$revision-dirty"
: "${SOURCE_DATE_EPOCH:=$(git log -1 --format=%ct)}"
export SOURCE_DATE_EPOCH
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
[ -n "$source" ] || source=$(git remote get-url origin 2>/dev/null || echo unknown)
[ -n "$name" ] || name="localhost/wharf:$version"

if [ -z "$binary" ]; then
  nice -n 10 cargo build --release --locked --bin wharf
  binary=target/release/wharf
fi
[ -x "$binary" ] || { echo "build-image: no executable at $binary" >&2; exit 1; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"

# The binary and its libraries, where the loader looks for them. A library is
# copied to the real directory of the path ldd gives (merged /usr: /lib is
# usr/lib), a symlink is kept as a symlink and its target copied too.
install -D -m 0755 "$binary" "$root/usr/bin/wharf"
if $strip; then
  objcopy --strip-debug "$root/usr/bin/wharf"
fi
for top in /lib /lib64; do
  if [ -L "$top" ]; then
    ln -s "$(readlink "$top")" "$root$top"
  fi
done
add_lib() {
  local dir base target
  dir=$(readlink -f "$(dirname "$1")")
  base=$(basename "$1")
  [ -e "$root$dir/$base" ] || [ -L "$root$dir/$base" ] && return 0
  mkdir -p "$root$dir"
  if [ -L "$dir/$base" ]; then
    target=$(readlink "$dir/$base")
    ln -s "$target" "$root$dir/$base"
    case $target in
      /*) add_lib "$target" ;;
      *) add_lib "$dir/$target" ;;
    esac
  else
    cp --preserve=mode "$dir/$base" "$root$dir/$base"
  fi
}
ldd_out=$(ldd "$binary")
if grep -q "not found" <<<"$ldd_out"; then
  echo "build-image: unresolved libraries:" >&2
  echo "$ldd_out" >&2
  exit 1
fi
for lib in $(grep -o '/[^ ]*' <<<"$ldd_out"); do
  add_lib "$lib"
done

install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
install -D -m 0644 deploy/image/passwd "$root/etc/passwd"
install -D -m 0644 deploy/image/group "$root/etc/group"
install -D -m 0644 deploy/image/nsswitch.conf "$root/etc/nsswitch.conf"
install -D -m 0644 deploy/image/config.toml "$root/etc/wharf/config.toml"
install -d -m 0700 -o 65532 -g 65532 "$root/var/lib/wharf"
chmod 0755 "$root"

# One layer, byte for byte the same from the same inputs.
tar --create --file "$work/layer.tar" --directory "$root" \
  --sort=name --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
  --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  .

rm -rf "$out/oci"
umoci init --layout "$out/oci"
umoci new --image "$out/oci:$version"
umoci raw add-layer --image "$out/oci:$version" \
  --history.created "$created" \
  --history.created_by "scripts/build-image.sh (wharf $version, $revision)" \
  "$work/layer.tar"
annotations=(
  "org.opencontainers.image.source=$source"
  "org.opencontainers.image.version=$version"
  "org.opencontainers.image.revision=$revision"
  "org.opencontainers.image.created=$created"
  "org.opencontainers.image.title=wharf"
  "org.opencontainers.image.description=A pull-through caching mirror for container registries"
  "org.opencontainers.image.licenses=Apache-2.0"
)
cfg=(--no-history --created "$created" --architecture amd64 --os linux
  --config.user 65532:65532
  --config.entrypoint /usr/bin/wharf
  --config.cmd serve --config.cmd=--config --config.cmd /etc/wharf/config.toml
  --config.exposedports 5000/tcp --config.exposedports 9090/tcp
  --config.volume /var/lib/wharf
  --config.workingdir /
  --config.env PATH=/usr/local/bin:/usr/bin)
for a in "${annotations[@]}"; do
  cfg+=(--config.label "$a" --manifest.annotation "$a")
done
umoci config --image "$out/oci:$version" "${cfg[@]}"
umoci gc --layout "$out/oci"

# The index entry also carries the name `ctr images import` should give it;
# that annotation is outside the manifest, so it leaves the digest alone.
python3 - "$out/oci/index.json" "$name" "$out/digest" <<'PY'
import json, sys
path, name, digest_file = sys.argv[1:]
idx = json.load(open(path))
(entry,) = idx["manifests"]
entry.setdefault("annotations", {})["io.containerd.image.name"] = name
json.dump(idx, open(path, "w"), separators=(",", ":"), sort_keys=True)
open(digest_file, "w").write(entry["digest"] + "\n")
PY
find "$out/oci" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
tar --create --file "$out/wharf.oci.tar" --directory "$out/oci" \
  --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
  --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  oci-layout index.json blobs

digest=$(cat "$out/digest")
layer=$(python3 -c 'import json,sys; l=json.load(open(sys.argv[1])); m=json.load(open(sys.argv[2]+"/blobs/sha256/"+l["manifests"][0]["digest"].split(":")[1])); print(sum(x["size"] for x in m["layers"]))' "$out/oci/index.json" "$out/oci")
echo "build-image: $name ($version, $revision, created $created)"
echo "build-image: manifest $digest; layer $layer bytes compressed, $(stat -c %s "$work/layer.tar") bytes as tar"
echo "build-image: OCI layout $out/oci (tag $version), archive $out/wharf.oci.tar"

if [ -n "$push" ]; then
  skopeo copy "${skopeo_args[@]}" "oci:$out/oci:$version" "$push"
fi
