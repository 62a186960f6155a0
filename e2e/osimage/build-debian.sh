#!/usr/bin/env bash
# build-debian.sh OUTDIR: build the minimal Debian 12 (bookworm) OS image
# that Kiln deploys onto VMs in the end-to-end tests.
#
# Output in OUTDIR:
#   debian-12.raw.zst  the disk image, zstd-compressed (what Kiln serves)
#   SHA256SUMS         sha256 of debian-12.raw.zst (`sha256sum -c` checks
#                      it); a comment line records the raw size and sha256
#   image.env          SHA256, SIZE (of the .zst), RAW_SIZE, RAW_SHA256,
#                      KERNEL, ROOT_PARTUUID ... as shell assignments
#
# What is in it: `mmdebstrap --variant=minbase` from the machine's own apt
# sources, plus systemd, udev, dbus, cloud-init, the cloud kernel
# (linux-image-cloud-amd64), ifupdown, isc-dhcp-client, iproute2; no docs,
# man pages or locales. cloud-init only looks at NoCloud (a partition
# labelled CIDATA, which Kiln's machine agent appends after deploying) and
# never grows the root filesystem. No root password: the serial console
# shows "<hostname> login:". The kernel command line has
# console=ttyS0,115200, so kernel, systemd and cloud-init output and the
# login prompt appear on the first serial port.
#
# Disk layout (GPT, 128 entries, only 2 used, so Kiln can add CIDATA as a
# third partition after the last one; total size a multiple of 1 MiB):
#   MBR   syslinux gptmbr.bin (BIOS boot code) + protective MBR
#   p1    ESP, FAT16, label KILN-ESP, "legacy BIOS bootable" attribute.
#         /vmlinuz, /initrd.img           the kernel and initramfs
#         /EFI/BOOT/BOOTX64.EFI           grub-mkstandalone x86_64-efi, its
#                                         grub.cfg built in (UEFI fallback
#                                         path: no boot entry needed)
#         /syslinux/ldlinux.sys, syslinux.cfg   syslinux for BIOS
#   p2    root, ext4, label kiln-root, ~100 MiB free; found by PARTUUID
#         (kernel command line and /etc/fstab)
# BIOS (SeaBIOS): MBR code -> the partition with the legacy-bootable
# attribute -> syslinux -> /vmlinuz. UEFI (OVMF): \EFI\BOOT\BOOTX64.EFI ->
# GRUB -> /vmlinuz on the same ESP. Both read only the ESP; the root's
# /boot keeps no copy of the kernel and initramfs (an update-initramfs in
# the running image does not change what boots: this is a test image).
#
# Nothing is mounted: the ESP is made with mkfs.vfat on an image file and
# filled with mtools (mcopy, and `syslinux --install`, which uses mtools),
# the root with `mke2fs -d DIR`, and both are dd'ed into a disk image
# partitioned with sgdisk. (mmdebstrap bind-mounts /proc, /sys and /dev
# into its chroot while it installs, in a private mount namespace.)
#
# Needs root and the Debian packages mmdebstrap, dosfstools, mtools,
# syslinux, syslinux-common, grub-efi-amd64-bin, gdisk, e2fsprogs, zstd.
# Takes 3 to 9 minutes on 2 cores (mostly mmdebstrap; zstd -15 about
# 25-40 s; ZSTD_LEVEL=19 makes the file 10% smaller for 85 s more). About
# 470 MB raw, 95 MB compressed. The e2e tests call it through
# netlab.DebianImage, which caches the result in /var/cache/kiln-e2e.
#
# Boot check (by hand, not in CI): check-boot.sh OUTDIR/debian-12.raw.zst
# writes the image onto a 2 GiB disk, appends a CIDATA partition the way
# Kiln's agent does (NoCloud files: hostname lab-test, a runcmd printing
# KILN-MARKER-42, a static address on the NIC matched by MAC), and boots it
# under QEMU (TCG) with SeaBIOS and with OVMF, the NIC on a tap in a
# private network namespace, checking the serial log for the marker and
# "lab-test login:".
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
if [ "$(id -u)" != 0 ]; then
	echo "$0: must run as root (mmdebstrap --mode=root)" >&2
	exit 1
fi
for tool in mmdebstrap mkfs.vfat mcopy mmd syslinux grub-mkstandalone sgdisk mke2fs zstd sha256sum; do
	if ! command -v "$tool" >/dev/null; then
		echo "$0: $tool is not installed" >&2
		exit 1
	fi
done
GPTMBR=/usr/lib/SYSLINUX/gptmbr.bin
[ -r "$GPTMBR" ] || GPTMBR=/usr/lib/syslinux/mbr/gptmbr.bin
if [ ! -r "$GPTMBR" ]; then
	echo "$0: gptmbr.bin not found (apt-get install syslinux-common)" >&2
	exit 1
fi
if [ ! -d /usr/lib/grub/x86_64-efi ]; then
	echo "$0: /usr/lib/grub/x86_64-efi not found (apt-get install grub-efi-amd64-bin)" >&2
	exit 1
fi

start=$(date +%s)
mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd)
work=$(mktemp -d "$OUTDIR/.work.XXXXXX")
chmod 755 "$work" # apt downloads as _apt
trap 'rm -rf --one-file-system "$work"' EXIT
root=$work/root
export MTOOLS_SKIP_CHECK=1 LC_ALL=C.UTF-8

log() { echo "build-debian: $(date +%T) $*" >&2; }

uuid() { cat /proc/sys/kernel/random/uuid; }
DISK_GUID=$(uuid)
ESP_PARTUUID=$(uuid)
ROOT_PARTUUID=$(uuid)
ROOT_FSUUID=$(uuid)
ESP_VOLID=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
CMDLINE="root=PARTUUID=$ROOT_PARTUUID ro console=tty0 console=ttyS0,115200n8"

# 1. The root filesystem, from the machine's apt sources. mmdebstrap's
# merged-usr hook makes /usr merged itself and installs usr-is-merged;
# without it apt satisfies init-system-helpers' "usrmerge | usr-is-merged"
# with usrmerge, which brings perl (50 MB). mmdebstrap runs in a mount
# namespace of its own: its bind mounts of /dev, /proc and /sys into the
# chroot vanish with it, even when it is killed, and removing the work
# directory can never reach the host's /dev through them.
log "mmdebstrap bookworm into $root"
unshare --mount --propagation private -- \
	mmdebstrap --mode=root --format=directory --variant=minbase \
	--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
	--aptopt='APT::Install-Recommends "false"' \
	--include=systemd-sysv,udev,dbus,kmod,linux-image-cloud-amd64,initramfs-tools,zstd \
	--include=cloud-init,ifupdown,isc-dhcp-client,iproute2,netbase,util-linux,e2fsprogs,ifenslave,vlan \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-include=/usr/share/locale/locale.alias' \
	--dpkgopt='path-exclude=/usr/share/i18n/*' \
	--dpkgopt='path-exclude=/usr/share/lintian/*' \
	--dpkgopt='path-exclude=/usr/share/bug/*' \
	--customize-hook='chroot "$1" systemctl enable serial-getty@ttyS0.service' \
	--customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer' \
	bookworm "$root" >&2

# 2. Configuration.
log "configuring"
cat >"$root/etc/cloud/cloud.cfg.d/90_kiln.cfg" <<'EOF'
# Kiln: the seed is the NoCloud partition (label CIDATA) that Kiln's agent
# writes after the image; never probe a network datasource.
datasource_list: [ NoCloud, None ]
# The root filesystem is as small as it can be and the seed follows it:
# do not grow either.
growpart:
  mode: "off"
resize_rootfs: false
# No locale data in the image: C.UTF-8 is built into glibc and needs no
# locale-gen. (No ssh either: cc_ssh warns that it cannot make host keys.)
locale: C.UTF-8
EOF
cat >"$root/etc/fstab" <<EOF
PARTUUID=$ROOT_PARTUUID	/	ext4	errors=remount-ro	0	1
EOF
echo localhost >"$root/etc/hostname"
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOF
if [ ! -e "$root/etc/network/interfaces" ]; then
	printf 'source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n' >"$root/etc/network/interfaces"
fi
rm -f "$root/etc/resolv.conf" "$root/var/lib/dbus/machine-id"
: >"$root/etc/resolv.conf"
: >"$root/etc/machine-id" # systemd makes one at first boot
rm -rf "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* "$root"/tmp/* "$root"/var/tmp/*
find "$root/var/log" -type f -exec truncate -s 0 {} +

kver=$(basename "$(ls -d "$root"/lib/modules/* | sort -V | tail -1)")
[ -s "$root/boot/vmlinuz-$kver" ] && [ -s "$root/boot/initrd.img-$kver" ] || {
	echo "$0: no kernel or initramfs for $kver in $root/boot" >&2
	exit 1
}
log "kernel $kver"

# 3. The ESP (FAT, no mount): kernel, initramfs, GRUB EFI, syslinux.
log "building the ESP"
cat >"$work/grub.cfg" <<EOF
set timeout=0
set default=0
# The ESP is the partition this GRUB was loaded from.
if regexp --set=1:esp '^(\([^)]+\))' "\$cmdpath"; then
	set root=\$esp
else
	search --no-floppy --fs-uuid --set=root ${ESP_VOLID:0:4}-${ESP_VOLID:4:4}
fi
insmod all_video
menuentry "Debian 12 (Kiln e2e)" {
	linux /vmlinuz $CMDLINE
	initrd /initrd.img
}
EOF
mkdir -p "$work/efi"
grub-mkstandalone -O x86_64-efi -o "$work/efi/BOOTX64.EFI" \
	--install-modules="linux normal boot configfile part_gpt part_msdos fat search search_fs_uuid regexp test echo all_video efi_gop gzio" \
	--modules="part_gpt fat" --locales= --fonts= --themes= \
	"boot/grub/grub.cfg=$work/grub.cfg"
cat >"$work/syslinux.cfg" <<EOF
SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT debian
LABEL debian
	LINUX /vmlinuz
	INITRD /initrd.img
	APPEND $CMDLINE
EOF
kb() { du -k --apparent-size "$@" | awk '{s += $1} END {print s}'; }
content=$(kb "$root/boot/vmlinuz-$kver" "$root/boot/initrd.img-$kver" "$work/efi/BOOTX64.EFI")
esp_mib=$(((content * 11 / 10 + 1023) / 1024 + 4)) # +10% and 4 MiB for FAT and syslinux
truncate -s "${esp_mib}M" "$work/esp.img"
mkfs.vfat -F 16 -n KILN-ESP -i "$ESP_VOLID" "$work/esp.img" >/dev/null
mmd -i "$work/esp.img" ::/syslinux ::/EFI ::/EFI/BOOT
syslinux --install --directory /syslinux "$work/esp.img"
mcopy -i "$work/esp.img" "$work/syslinux.cfg" ::/syslinux/syslinux.cfg
mcopy -i "$work/esp.img" "$work/efi/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$work/esp.img" "$root/boot/vmlinuz-$kver" ::/vmlinuz
mcopy -i "$work/esp.img" "$root/boot/initrd.img-$kver" ::/initrd.img
# The ESP is where both loaders read them: no second copy in the root.
rm "$root/boot/vmlinuz-$kver" "$root/boot/initrd.img-$kver"

# 4. The root filesystem image (ext4 from the directory, no mount).
used_kib=$(du -sxk "$root" | cut -f1)
root_mib=$(((used_kib * 110 / 100 + 1023) / 1024 + 100)) # +10% metadata, ~100 MiB free
log "root: ${used_kib} KiB of files, ${root_mib} MiB filesystem"
mke2fs -q -F -t ext4 -L kiln-root -U "$ROOT_FSUUID" -m 1 \
	-E lazy_itable_init=0,lazy_journal_init=0 \
	-d "$root" "$work/root.img" "${root_mib}M"
free_mib=$(dumpe2fs -h "$work/root.img" 2>/dev/null | awk -F: '/^Free blocks/{f=$2} /^Block size/{b=$2} END {printf "%d", f*b/1048576}')
log "root: ${free_mib} MiB free"

# 5. The disk: 1 MiB (MBR, GPT) + ESP + root + 1 MiB (backup GPT).
disk=$work/debian-12.raw
total_mib=$((1 + esp_mib + root_mib + 1))
truncate -s "${total_mib}M" "$disk"
# (Not sgdisk -q: with it, sgdisk 1.0.9 does not save a new table.)
sgdisk -a 2048 -U "$DISK_GUID" \
	-n "1:1M:+${esp_mib}M" -t 1:ef00 -c 1:ESP -u "1:$ESP_PARTUUID" -A 1:set:2 \
	-n "2:0:+${root_mib}M" -t 2:8300 -c 2:root -u "2:$ROOT_PARTUUID" \
	"$disk" >/dev/null
if ! sgdisk -i 2 "$disk" | grep -qi "$ROOT_PARTUUID"; then
	echo "$0: sgdisk did not write the partition table" >&2
	exit 1
fi
dd if="$GPTMBR" of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$work/esp.img" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$disk" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse status=none
raw_size=$(stat -c %s "$disk")
raw_sha=$(sha256sum "$disk" | cut -d' ' -f1)

# 6. Compress and describe.
log "compressing ${raw_size} bytes"
zstd -q -T0 -${ZSTD_LEVEL:-15} --rm -o "$work/debian-12.raw.zst" "$disk"
zst_size=$(stat -c %s "$work/debian-12.raw.zst")
zst_sha=$(sha256sum "$work/debian-12.raw.zst" | cut -d' ' -f1)
mv "$work/debian-12.raw.zst" "$OUTDIR/debian-12.raw.zst"
{
	echo "$zst_sha  debian-12.raw.zst"
	echo "# debian-12.raw (uncompressed): size $raw_size sha256 $raw_sha"
} >"$OUTDIR/SHA256SUMS"
end=$(date +%s)
cat >"$OUTDIR/image.env" <<EOF
IMAGE=debian-12.raw.zst
FORMAT=raw.zst
SHA256=$zst_sha
SIZE=$zst_size
RAW_SIZE=$raw_size
RAW_SHA256=$raw_sha
KERNEL=$kver
ROOT_PARTUUID=$ROOT_PARTUUID
ROOT_FREE_MIB=$free_mib
BUILD_SECONDS=$((end - start))
EOF
log "done in $((end - start)) s: raw $raw_size bytes, zst $zst_size bytes, sha256 $zst_sha"
