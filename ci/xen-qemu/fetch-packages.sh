#!/bin/bash
# fetch-packages.sh [WORK] - install the host tools and fetch Debian's Xen,
# kernel and busybox packages (never installed on the host: only unpacked).
# Output: WORK/root (all .debs unpacked), WORK/xen (uncompressed hypervisor),
# WORK/vmlinuz (dom0 and domU kernel), WORK/versions.txt.
# Needs root on Debian 12 (bookworm) with its apt repositories reachable.
# SKIP_HOST_INSTALL=1 skips the apt-get install of the host tools.
set -euo pipefail
WORK=$(realpath -m "${1:-${XENQEMU_WORK:-./target/xen-qemu}}")
mkdir -p "$WORK/debs"
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
if [ "${SKIP_HOST_INSTALL:-0}" != 1 ]; then
    # qemu runs the hypervisor (TCG).
    # qemu-utils: bookworm's qemu-system-common conflicts with a newer
    # (backports) qemu-utils, and apt will not downgrade it on its own
    # ("held broken packages"), so ask for the same version explicitly.
    # Skipped when the tools are already there (no downgrade, no time).
    if ! command -v qemu-system-x86_64 >/dev/null; then
        QV=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
        [ -n "$QV" ] && [ "$QV" != "(none)" ] || { echo "no qemu-system-x86 candidate" >&2; exit 1; }
        apt-get install -y -qq --allow-downgrades --no-install-recommends \
            qemu-system-x86 "qemu-utils=$QV" >/dev/null
    fi
fi

# The kernel metapackage points at the real, versioned image package.
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
[ -n "$KPKG" ] || { echo "cannot resolve linux-image-amd64" >&2; exit 1; }

# Hypervisor, toolstack (xl, xenstored, xenconsoled, xen-init-dom0), the
# libraries they load (incl. libc6 and libgcc-s1, so the guest image does not
# depend on the host's libraries), busybox and the kernel.
PKGS=(xen-hypervisor-4.17-amd64 xen-utils-4.17 xenstore-utils
      libxenmisc4.17 libxenstore4 libxengnttab1 libxenevtchn1 libxencall1
      libxenforeignmemory1 libxentoollog1 libxendevicemodel1 libxentoolcore1
      libxenhypfs1 libyajl2 libuuid1 liblzma5 libzstd1 zlib1g libc6 libgcc-s1
      busybox-static "$KPKG"
      # run.sh -n (network): xl's vif hotplug scripts, which need bash.
      xen-utils-common bash libtinfo6
      # run.sh -n: socat (the domu-socat job, an unmodified program under
      # libcoresident_preload.so) and the libraries it links.
      socat libssl3 libwrap0 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3
      libk5crypto3 libcom-err2 libkrb5support0 libkeyutils1)

cd "$WORK/debs"
rm -f ./*.deb
# Sandbox user root: _apt cannot write into an arbitrary work dir.
apt-get download -qq -o APT::Sandbox::User=root "${PKGS[@]}"
rm -rf "$WORK/root" && mkdir -p "$WORK/root"
for deb in ./*.deb; do dpkg-deb -x "$deb" "$WORK/root"; done

# QEMU's -kernel wants an uncompressed multiboot ELF.
zcat "$WORK/root/boot/xen-4.17-amd64.gz" > "$WORK/xen"
cp "$WORK/root/boot/vmlinuz-${KPKG#linux-image-}" "$WORK/vmlinuz"
ls "$WORK/root/lib/modules" > "$WORK/kver"
dpkg-query -W -f='${Package} ${Version}\n' qemu-system-x86 > "$WORK/versions.txt" || true
# dpkg-deb -W reads one archive per call.
for deb in ./*.deb; do
    dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb"
done >> "$WORK/versions.txt"
echo "fetched into $WORK (kernel $(cat "$WORK/kver"))"
