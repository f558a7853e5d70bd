#!/usr/bin/env bash
# Make the Dockerfile's default base image available when it cannot be pulled (no Docker Hub access):
# debootstrap a minimal Debian bookworm from the machine's own Debian mirror and `docker import` it.
#   docker/build_base_image.sh [IMAGE_TAG]      (default: debian:bookworm-slim)
# Needs root, docker and debootstrap. Does nothing when the image exists or can be pulled.
set -euo pipefail
tag=${1:-debian:bookworm-slim}
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag present"; exit 0
fi
if timeout 60 docker pull -q "$tag" >/dev/null 2>&1; then
  echo "base image $tag pulled"; exit 0
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
# The first Debian mirror of the machine's apt sources (deb822 or one-line format).
mirror=$(grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
[ -n "$mirror" ] || mirror=$(grep -hoE '^deb +\S+' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
echo "building $tag with debootstrap from $mirror"
debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
[ -d "$root/etc/apt" ] || { echo "error: debootstrap produced no root in '$root'" >&2; exit 1; }
# Slim like debian:bookworm-slim: apt deletes the packages it downloaded (else every `apt-get install`
# layer keeps its .deb files) and dpkg installs no documentation, manuals or translations.
printf '%s\n' \
  'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
  'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
  'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";' > "$root/etc/apt/apt.conf.d/docker-clean"
cp "$(dirname "$0")/dpkg-nodoc.cfg" "$root/etc/dpkg/dpkg.cfg.d/docker"
find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
for dir in usr/share/man usr/share/info usr/share/locale usr/share/groff usr/share/lintian var/lib/apt/lists var/log/apt; do
  find "$root/$dir" -mindepth 1 -delete 2>/dev/null || true
done
rm -f "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
tar -C "$root" -c . | docker import -c 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "base image $tag imported"
