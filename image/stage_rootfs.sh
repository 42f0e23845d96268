#!/usr/bin/env bash
# Put the neopain first-boot step into an L4T rootfs before flashing:
#   image/stage_rootfs.sh ROOTFS DEB
# ROOTFS is Linux_for_Tegra/rootfs (the sample rootfs of the L4T release pinned in image/jetpack.toml, with
# neopain's Depends installed, see image/README.md); DEB is what image/build_deb.sh built. Copies
# image/rootfs-overlay/ over ROOTFS (the first-boot unit, enabled, and its script) and the .deb to
# ROOTFS/var/lib/neopain-firstboot/, where the unit installs it on the device's first boot.
set -euo pipefail

die() { echo "stage_rootfs.sh: $*" >&2; exit 2; }

[ $# -eq 2 ] || die "usage: image/stage_rootfs.sh ROOTFS DEB"
ROOTFS=$1
DEB=$2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

[ -d "$ROOTFS" ] || die "ROOTFS is not a folder: $ROOTFS"
[ -f "$DEB" ] || die "DEB is not a file: $DEB"
case "$(basename "$DEB")" in neopain_*.deb) ;; *) die "DEB must be named neopain_<version>_<arch>.deb: $DEB" ;; esac
dpkg-deb --info "$DEB" >/dev/null || die "not a Debian package: $DEB"

# -a keeps modes and the enable symlink; --no-preserve=ownership: files become root's (the builder's).
cp -a --no-preserve=ownership "$HERE/rootfs-overlay/." "$ROOTFS/"
install -d -m 0700 "$ROOTFS/var/lib/neopain-firstboot"
rm -f "$ROOTFS"/var/lib/neopain-firstboot/neopain_*.deb "$ROOTFS/var/lib/neopain-firstboot/done"
install -m 0600 "$DEB" "$ROOTFS/var/lib/neopain-firstboot/"
echo "$ROOTFS/var/lib/neopain-firstboot/$(basename "$DEB")"
