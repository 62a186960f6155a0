#!/usr/bin/env bash
# check-boot.sh IMAGE [bios|uefi|both]: boot-check an image made by
# build-debian.sh (IMAGE is debian-12.raw.zst or an uncompressed .raw).
# By hand, not in CI: it takes a few minutes under TCG.
#
# For each firmware it writes the image at the start of a 2 GiB sparse disk,
# appends a NoCloud seed partition the way Kiln's machine agent does (GPT
# backup moved to the disk's end, a 16 MiB FAT partition labelled CIDATA in
# the first free entry, starting at the image's end rounded up to 1 MiB)
# holding meta-data (local-hostname lab-test), user-data (runcmd: echo
# KILN-MARKER-42) and network-config (version 2, 192.0.2.10/24 on the NIC
# matched by MAC, renamed eth0), then boots it with
# qemu-system-x86_64 -accel tcg, SeaBIOS or OVMF, a virtio disk, virtio-rng
# and a virtio NIC on a tap inside a private network namespace (no route
# anywhere; the namespace side is 192.0.2.1/24). It passes when the serial
# log shows the root filesystem mounted from the disk, cloud-init finished
# from the NoCloud seed, the line KILN-MARKER-42, "lab-test login:", and
# the guest answers on its static address (a refused TCP connection from
# its MAC: no ping needed).
#
# Env: TIMEOUT (seconds per boot, default 900), KEEP=DIR keeps the serial
# logs (and disks) in DIR.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
	echo "usage: $0 IMAGE [bios|uefi|both]" >&2
	exit 2
fi
image=$1
which=${2:-both}
timeout=${TIMEOUT:-900}
case $which in
bios) fws=(bios) ;;
uefi) fws=(uefi) ;;
both) fws=(bios uefi) ;;
*)
	echo "$0: firmware must be bios, uefi or both" >&2
	exit 2
	;;
esac
[ "$(id -u)" = 0 ] || {
	echo "$0: must run as root (network namespace, tap)" >&2
	exit 1
}
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
export MTOOLS_SKIP_CHECK=1

tmp=$(mktemp -d /var/tmp/kiln-check-boot.XXXXXX)
ns=kiln-chkboot-$$
qpid=
cleanup() {
	if [ -n "$qpid" ]; then
		kill "$qpid" 2>/dev/null || true
		wait "$qpid" 2>/dev/null || true
	fi
	ip netns del "$ns" 2>/dev/null || true
	if [ -n "${KEEP:-}" ]; then
		mkdir -p "$KEEP" && cp -a "$tmp"/. "$KEEP"/ && echo "kept files in $KEEP" >&2
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

case $image in
*.zst) zstd -q -d -o "$tmp/image.raw" "$image" ;;
*) cp --sparse=always "$image" "$tmp/image.raw" ;;
esac
img_size=$(stat -c %s "$tmp/image.raw")
seed_start=$(((img_size + 1048575) / 1048576 * 1048576))
mac=52:54:00:4b:49:4c

# The NoCloud seed.
mkdir "$tmp/seed"
cat >"$tmp/seed/meta-data" <<EOF
instance-id: kiln-check-boot-$$
local-hostname: lab-test
EOF
cat >"$tmp/seed/user-data" <<'EOF'
#cloud-config
hostname: lab-test
runcmd:
  - [ "echo", "KILN-MARKER-42" ]
EOF
cat >"$tmp/seed/network-config" <<EOF
network:
  version: 2
  ethernets:
    eth0:
      match:
        macaddress: "$mac"
      set-name: eth0
      addresses:
      - 192.0.2.10/24
EOF
truncate -s 16M "$tmp/seed.img"
mkfs.vfat -F 16 -n CIDATA "$tmp/seed.img" >/dev/null
mcopy -i "$tmp/seed.img" "$tmp/seed/meta-data" "$tmp/seed/user-data" "$tmp/seed/network-config" ::/

# A network namespace with the tap; nothing in it routes anywhere.
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" tuntap add dev ktap0 mode tap
ip -n "$ns" addr add 192.0.2.1/24 dev ktap0
ip -n "$ns" link set ktap0 up

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
clean() { tr -d '\r' <"$1" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g'; }
fail=0
for fw in "${fws[@]}"; do
	disk=$tmp/disk-$fw.raw
	log=$tmp/serial-$fw.log
	cp --sparse=always "$tmp/image.raw" "$disk"
	truncate -s 2G "$disk"
	sgdisk -e "$disk" >/dev/null 2>&1 # (not -q: sgdisk 1.0.9 then saves nothing)
	sgdisk -n "0:$((seed_start / 512)):+16M" -t 0:0700 -c 0:CIDATA "$disk" >/dev/null
	sgdisk -i 3 "$disk" | grep -q "Partition name: 'CIDATA'" || {
		echo "$0: adding the CIDATA partition failed" >&2
		exit 1
	}
	dd if="$tmp/seed.img" of="$disk" bs=1M seek=$((seed_start / 1048576)) conv=notrunc status=none
	fwargs=()
	if [ "$fw" = uefi ]; then
		cp "$OVMF_VARS" "$tmp/vars.fd"
		fwargs=(-drive "if=pflash,format=raw,readonly=on,file=$OVMF_CODE" -drive "if=pflash,format=raw,file=$tmp/vars.fd")
	fi
	: >"$log"
	t0=$(date +%s.%N)
	ip netns exec "$ns" qemu-system-x86_64 -accel tcg -m 1024 -smp 1 \
		-display none -monitor none -serial "file:$log" -no-reboot \
		"${fwargs[@]}" \
		-drive "file=$disk,format=raw,if=none,id=d0,cache=unsafe" -device virtio-blk-pci,drive=d0,bootindex=0 \
		-device virtio-rng-pci \
		-netdev tap,id=n0,ifname=ktap0,script=no,downscript=no -device "virtio-net-pci,netdev=n0,mac=$mac,romfile=" 2>"$tmp/qemu-$fw.err" &
	qpid=$!
	login_at= final_at=
	deadline=$(($(date +%s) + timeout))
	while [ "$(date +%s)" -lt "$deadline" ] && kill -0 "$qpid" 2>/dev/null; do
		if [ -z "$login_at" ] && grep -q 'login:' "$log"; then
			login_at=$(date +%s.%N)
		fi
		if [ -z "$final_at" ] && grep -q 'Cloud-init v\. .* finished' "$log"; then
			final_at=$(date +%s.%N)
		fi
		[ -n "$login_at" ] && [ -n "$final_at" ] && break
		sleep 0.5
	done
	# The guest has no listening port: a TCP connection refused by the
	# guest's MAC (no ping on a minimal host) proves its static address.
	net_ok=no
	if [ -n "$final_at" ]; then
		out=$(ip netns exec "$ns" timeout 5 bash -c 'exec 3<>/dev/tcp/192.0.2.10/9' 2>&1 || true)
		if [[ $out == *"Connection refused"* ]] && ip -n "$ns" neigh show 192.0.2.10 | grep -qi "lladdr $mac"; then
			net_ok=yes
		fi
	fi
	kill "$qpid" 2>/dev/null || true
	wait "$qpid" 2>/dev/null || true
	qpid=
	echo "== $fw"
	ok=1
	clean "$log" >"$log.txt"
	check() { # description, extended regexp on the cleaned log
		local line
		if line=$(grep -a -E -m1 -- "$2" "$log.txt"); then
			printf '  ok   %-34s %s\n' "$1" "$line"
		else
			printf '  FAIL %-34s (no line matching %s)\n' "$1" "$2"
			ok=0
		fi
	}
	check "kernel started" '^\[ *[0-9.]+\] Linux version'
	check "root ext4 mounted from the disk" 'EXT4-fs \(vda2\): mounted filesystem'
	check "cloud-init found the CIDATA seed" 'Cloud-init v\. .* finished.*NoCloud.*seed=/dev/vda3'
	check "runcmd output" '(^|\]: )KILN-MARKER-42$'
	check "login prompt with the hostname" '^lab-test login:'
	if [ "$net_ok" = yes ]; then
		echo "  ok   guest answers on 192.0.2.10 from $mac (static address from network-config)"
	else
		echo "  FAIL guest does not answer on 192.0.2.10"
		ok=0
	fi
	if [ -n "$login_at" ]; then
		echo "  power-on to \"login:\": $(secs "$t0" "$login_at") s"
	fi
	if [ -n "$final_at" ]; then
		echo "  power-on to cloud-init finished: $(secs "$t0" "$final_at") s"
	fi
	if [ "$ok" = 1 ]; then
		echo "  PASS"
	else
		echo "  FAILED; last lines of the serial log:"
		tail -25 "$log.txt" | sed 's/^/    /'
		fail=1
	fi
done
exit $fail
