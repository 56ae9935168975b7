#!/usr/bin/env bash
# Builds the two tiny guests that tests/boot.rs exports and boots: OUT/bios.img (MBR,
# syslinux on FAT) and OUT/uefi.img (GPT, an EFI system partition with systemd-boot), each
# 64 MiB, both starting Debian's cloud kernel with a busybox initramfs. The initramfs loads
# virtio_blk, reads the marker at sector 40 of every virtio disk in device order, prints
#   AZURE2KVM-BOOT-OK <marker of vda> <marker of vdb> ...
# on the serial console and powers off. The OS disks' marker is "os"; tests/boot.rs writes
# the data disks' ("lun0", "lun3"). Sector 40 is free on both layouts (after the GPT's
# entries, before the first partition at 1 MiB).
#
# Needs (installed by the test): busybox-static, syslinux, syslinux-common, mtools,
# dosfstools, fdisk, cpio, and apt access to bookworm for linux-image-cloud-amd64 and
# systemd-boot-efi, which are downloaded and unpacked here, never installed on the host.
# The guests come from a hash of this file: change it and they are built again.
# Both kernels get no_timer_check: under TCG on a loaded host the emulated timer can be slow
# enough for the kernel's IO-APIC timer check to fail ("IO-APIC + timer doesn't work") and
# panic; the check proves nothing about the exported domain.
set -euo pipefail

out=${1:?usage: build-guests.sh OUT_DIR}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# The packages: bookworm's cloud kernel (virtio as modules, small) and systemd-boot.
kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
apt-get download -q "$kpkg" systemd-boot-efi 2>&1 | grep -v "^W: Download is performed unsandboxed" || true
ls linux-image-*.deb systemd-boot-efi_*.deb >/dev/null
dpkg-deb -x linux-image-*.deb kernel
dpkg-deb -x systemd-boot-efi_*.deb sdboot
kver=$(ls kernel/lib/modules)
cp "kernel/boot/vmlinuz-$kver" vmlinuz

# The initramfs: static busybox, the virtio modules and /init.
mkdir -p root/bin root/dev root/proc root/sys "root/lib/modules/$kver"
if ldd /bin/busybox >/dev/null 2>&1; then
  echo "/bin/busybox is dynamically linked: the guest needs busybox-static" >&2
  exit 1
fi
cp /bin/busybox root/bin/busybox
for m in virtio virtio_ring virtio_pci virtio_pci_modern_dev virtio_pci_legacy_dev virtio_blk; do
  cp "$(find "kernel/lib/modules/$kver" -name "$m.ko")" "root/lib/modules/$kver/"
done
busybox depmod -b root "$kver"
cat >root/init <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
modprobe virtio_pci
modprobe virtio_blk
# Disks appear as the driver probes them; wait until their number stops changing.
last=-1
for _ in $(seq 50); do
  n=$(ls /sys/block | grep -c '^vd')
  [ "$n" -gt 0 ] && [ "$n" = "$last" ] && break
  last=$n
  sleep 0.1
done
line=AZURE2KVM-BOOT-OK
for d in /sys/block/vd*; do
  dev=/dev/${d##*/}
  m=$(dd if="$dev" bs=512 skip=40 count=1 2>/dev/null | tr -d '\000' | head -n 1)
  case "$m" in
    AZ2K-MARKER:*) line="$line ${m#AZ2K-MARKER:}" ;;
    *) line="$line no-marker-on-${d##*/}" ;;
  esac
done
echo "$line"
poweroff -f
EOF
chmod +x root/init
(cd root && find . | cpio -o -H newc --quiet) >initrd

marker() { printf 'AZ2K-MARKER:%s\n' "$2" | dd of="$1" bs=512 seek=40 conv=notrunc status=none; }

# A FAT file system image for a partition starting at sector 2048 of SIZE_KIB.
fat() { mkfs.fat -C -h 2048 -n "$2" "$1" "$3" >/dev/null; }

# BIOS: MBR with syslinux's boot code, one active FAT16 partition with syslinux.
truncate -s 64M bios.img
printf 'label: dos\nstart=2048, type=e, bootable\n' | sfdisk -q bios.img
fat part.img BOOT 64512
syslinux --install part.img
printf 'DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL /vmlinuz\n  INITRD /initrd\n  APPEND console=ttyS0 quiet no_timer_check\n' >syslinux.cfg
mcopy -i part.img vmlinuz initrd syslinux.cfg ::/
dd if=part.img of=bios.img bs=1M seek=1 conv=notrunc status=none
dd if=/usr/lib/syslinux/mbr/mbr.bin of=bios.img bs=440 count=1 conv=notrunc status=none
marker bios.img os
rm part.img

# UEFI: GPT with an EFI system partition; systemd-boot as the removable-media loader.
truncate -s 64M uefi.img
printf 'label: gpt\nstart=2048, size=126976, type=U\n' | sfdisk -q uefi.img
fat part.img ESP 63488
mmd -i part.img ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i part.img sdboot/usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/BOOT/BOOTX64.EFI
printf 'default azure2kvm.conf\ntimeout 0\n' >loader.conf
printf 'title azure2kvm boot test\nlinux /vmlinuz\ninitrd /initrd\noptions console=ttyS0 quiet no_timer_check\n' >azure2kvm.conf
mcopy -i part.img loader.conf ::/loader/
mcopy -i part.img azure2kvm.conf ::/loader/entries/
mcopy -i part.img vmlinuz initrd ::/
dd if=part.img of=uefi.img bs=1M seek=1 conv=notrunc status=none
marker uefi.img os

mv bios.img uefi.img "$out/"
echo "built $out/bios.img and $out/uefi.img with $kpkg"
