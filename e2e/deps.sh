#!/usr/bin/env bash
# e2e/deps.sh: install what the end-to-end suite and `make demo` need, from
# Debian's packages (root, Debian 12): QEMU, iPXE and OVMF for the VMs, the
# independent peers the tests drive (ipmitool, redfishtool, dhclient,
# dnsmasq, Kea, ...), mmdebstrap and the disk tools that build the lab's
# Debian OS image, and a Debian kernel package for the ephemeral image,
# downloaded (not installed) into /var/cache/kiln-e2e. Installs only what
# is missing; safe to run again.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
	echo "$0: run as root (apt-get install)" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
need=()
# git for the git source; ipmitool, openipmi (ipmi_sim), redfishtool and
# QEMU are the independent peers the power tests drive; openssl checks the
# certificates of kiln certs. mmdebstrap and the
# disk tools build the lab's Debian OS image (e2e/osimage); chromium
# (headless) drives the web view's test; prometheus (and its promtool)
# checks the alert rules and scrapes a running Kiln.
for p in git make ca-certificates ipmitool openipmi redfishtool qemu-system-x86 ipxe-qemu ovmf iproute2 isc-dhcp-client busybox-static dnsmasq-base kea-dhcp4-server kea-admin isc-dhcp-relay tcpdump nginx curl tftp-hpa tftpd-hpa ipxe cloud-init openssl \
	chromium fonts-liberation prometheus mmdebstrap dosfstools mtools syslinux syslinux-common grub-efi-amd64-bin gdisk e2fsprogs zstd; do
	dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
updated=
if [ ${#need[@]} -gt 0 ]; then
	apt-get update -qq && updated=1
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# A Debian kernel for the network-boot tests, unpacked, not installed:
# vmlinuz for the busybox boots; the package itself and its unpacked tree
# (linux/lib/modules/<release>) for kiln image build-ephemeral.
k=/var/cache/kiln-e2e
if [ ! -s $k/vmlinuz ] || [ ! -s $k/linux-image.deb ] || [ ! -d $k/linux/lib/modules ]; then
	[ -n "$updated" ] || apt-get update -qq
	pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
	tmp=$(mktemp -d) && chmod 755 "$tmp"
	(cd "$tmp" && apt-get download -qq "$pkg" && dpkg -x ./*.deb x)
	mkdir -p $k
	rm -rf $k/linux
	cp "$tmp"/x/boot/vmlinuz-* $k/vmlinuz
	cp "$tmp"/*.deb $k/linux-image.deb
	mv "$tmp"/x $k/linux
	rm -rf "$tmp"
fi
