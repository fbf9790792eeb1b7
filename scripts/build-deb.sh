#!/usr/bin/env bash
# Builds wharf's Debian package with dpkg-deb from a staging tree (no
# cargo-deb: nothing more to compile in CI). The package holds
#   /usr/bin/wharf                        the binary (stripped)
#   /etc/wharf/config.toml                a conffile: config.toml with the cache
#                                         left to systemd (/var/lib/wharf)
#   /lib/systemd/system/wharf.service     deploy/systemd/wharf.service
#   /usr/lib/sysusers.d/wharf.conf        the system user "wharf"
#   /usr/share/doc/wharf/                 README, copyright, changelog
#   /usr/share/lintian/overrides/wharf    (no man page: `wharf --help`)
# and the maintainer scripts of deploy/debian/ (nothing is enabled or started
# on install; an upgrade restarts a running service).
#
# Usage: scripts/build-deb.sh [--binary PATH] [--out DIR] [--version V] [--fast]
#   --binary   use this wharf binary (default: cargo build --release)
#   --out      where the .deb goes (default: target/deb)
#   --version  the package version (default: Cargo.toml's, plus +g<revision>
#              in a git checkout)
#   --fast     gzip -1 instead of xz (tests, which build several packages)
# Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/.."

binary="" out="target/deb" version="" fast=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --fast) fast=1; shift ;;
    *) echo "build-deb: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ -z "$version" ]; then
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
  if rev=$(git rev-parse --short=10 HEAD 2>/dev/null); then
    version="$version+g$rev"
  fi
fi
if [ -z "$binary" ]; then
  nice -n 10 cargo build --release --locked --bin wharf >&2
  binary=target/release/wharf
fi
[ -x "$binary" ] || { echo "build-deb: $binary is not an executable" >&2; exit 1; }

arch=$(dpkg --print-architecture)
# Who built it: $DEBFULLNAME <$DEBEMAIL> as dch reads them.
maintainer="${DEBFULLNAME:-wharf maintainers} <${DEBEMAIL:-wharf@example.org}>"
stage=$(mktemp -d "${TMPDIR:-/tmp}/wharf-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
chmod 755 "$stage"
umask 022

install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/etc/wharf" \
  "$stage/lib/systemd/system" "$stage/usr/lib/sysusers.d" "$stage/usr/share/doc/wharf"
install -m 755 "$binary" "$stage/usr/bin/wharf"
strip --strip-unneeded "$stage/usr/bin/wharf"
install -m 644 deploy/systemd/wharf.service "$stage/lib/systemd/system/wharf.service"
install -m 644 deploy/debian/wharf.sysusers "$stage/usr/lib/sysusers.d/wharf.conf"
install -m 644 deploy/debian/copyright "$stage/usr/share/doc/wharf/copyright"
install -d "$stage/usr/share/lintian/overrides"
install -m 644 deploy/debian/lintian-overrides "$stage/usr/share/lintian/overrides/wharf"
gzip -9n < README.md > "$stage/usr/share/doc/wharf/README.md.gz"
# The annotated config.toml, with the cache where systemd's StateDirectory=
# puts it (the repository's copy keeps it beside the file, for trying out).
{
  echo "# wharf's configuration, as installed by the Debian package: a conffile,"
  echo "# kept across upgrades once you change it. Check it with"
  echo "# \`wharf check-config --config /etc/wharf/config.toml\`, then"
  echo "# \`systemctl enable --now wharf\`; \`systemctl reload wharf\` re-reads TLS"
  echo "# certificate files, any other change needs \`systemctl restart wharf\`."
  echo "# Secrets: LoadCredential= in a drop-in (\`systemctl edit wharf\`) and"
  echo "# password_credential below; see /lib/systemd/system/wharf.service."
  echo "#"
  sed -e 's|^dir = "wharf-cache"$|# dir = "/var/lib/wharf"   # default: systemd'"'"'s StateDirectory=|' config.toml
} > "$stage/etc/wharf/config.toml"
grep -q '^# dir = "/var/lib/wharf"' "$stage/etc/wharf/config.toml" \
  || { echo "build-deb: config.toml has no 'dir = \"wharf-cache\"' line to replace" >&2; exit 1; }
chmod 644 "$stage/etc/wharf/config.toml"
{
  echo "wharf ($version) unstable; urgency=medium"
  echo
  echo "  * Built from the wharf repository by scripts/build-deb.sh."
  echo
  echo " -- $maintainer  $(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")"
} | gzip -9n > "$stage/usr/share/doc/wharf/changelog.gz"

for f in postinst prerm postrm; do
  install -m 755 "deploy/debian/$f" "$stage/DEBIAN/$f"
done
install -m 644 deploy/debian/conffiles "$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
  -e "s|@MAINTAINER@|$maintainer|" \
  deploy/debian/control.in > "$stage/DEBIAN/control"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | sort | xargs md5sum) \
  > "$stage/DEBIAN/md5sums"
chmod 644 "$stage/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/wharf_${version}_${arch}.deb"
if [ -n "$fast" ]; then
  dpkg-deb --root-owner-group -Zgzip -z1 --build "$stage" "$deb" >&2
else
  dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >&2
fi
echo "$deb"
