#!/bin/bash
# run.sh [-w WORK] [-t SECONDS] [-b FILE]... [-x] [-n] [-d DOMU_CMD] [TEST_CMD]
# Boot Xen + dom0 under QEMU (TCG) and run TEST_CMD in dom0.
#   -b FILE      copy FILE (a static binary, a script...) to /opt/bin in dom0
#                and domU; /opt/bin is first in PATH. Repeatable.
#   -x           start xenstored (and xen-init-dom0) in dom0 without a domU.
#   -d DOMU_CMD  two-domain run: dom0 starts xenstored/xenconsoled/xl and a
#                PV domU that runs DOMU_CMD; TEST_CMD gets $DOMU_ID.
#   -n           network: a bridge xenbr0 (10.0.0.1/24) in dom0 and, with
#                -d, a vif on it for the domU (eth0, 10.0.0.2/24).
#   -t SECONDS   wall-clock limit (default 300).
# TEST_CMD is required: a shell command run by dom0's /init (sh -c).
# Exit: 0 PASS, 1 FAIL, 2 no verdict (timeout, crash). Serial log:
# WORK/serial.log. QUIET=1 shows only the log tail on failure.
# Env: XENQEMU_WORK, QEMU_CPU (qemu64), DOM0_LOGLEVEL (4), XEN_EXTRA_ARGS.
set -euo pipefail
WORK=${XENQEMU_WORK:-./target/xen-qemu}
TIMEOUT=300
BINS=()
DOMU_CMD=
TOOLSTACK=0
NET=0
while getopts "w:t:b:xd:n" o; do
    case $o in
        w) WORK=$OPTARG ;;
        t) TIMEOUT=$OPTARG ;;
        b) BINS+=("$OPTARG") ;;
        x) TOOLSTACK=1 ;;
        d) DOMU_CMD=$OPTARG ;;
        n) NET=1 ;;
        *) sed -n '2,15p' "$0" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
WORK=$(realpath -m "$WORK")
[ $# -gt 0 ] || { echo "run.sh: no TEST_CMD (try: run.sh 'ls -l /dev/xen')" >&2; exit 2; }
TEST_CMD="$*"
BB=$WORK/root/bin/busybox
[ -f "$WORK/dom0.cpio.gz" ] || { echo "run build-initrd.sh first" >&2; exit 2; }

# Overlay archive: test binaries + /etc/xenqemu.conf. It is appended to the
# dom0 image and (as /boot/overlay.cpio.gz) to the domU image.
RUN=$WORK/run
rm -rf "$RUN" && mkdir -p "$RUN/ov/opt/bin" "$RUN/ov/etc" "$RUN/ov0/boot"
for b in "${BINS[@]}"; do install -m 755 "$b" "$RUN/ov/opt/bin/"; done
q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }  # sh quoting
printf 'TEST_CMD=%s\nDOMU_CMD=%s\nTOOLSTACK=%s\nNET=%s\n' "$(q "$TEST_CMD")" "$(q "$DOMU_CMD")" \
    "$TOOLSTACK" "$NET" > "$RUN/ov/etc/xenqemu.conf"
(cd "$RUN/ov" && find . | "$BB" cpio -o -H newc 2>/dev/null) | gzip -1 > "$RUN/overlay.cpio.gz"
cp "$RUN/overlay.cpio.gz" "$RUN/ov0/boot/overlay.cpio.gz"
(cd "$RUN/ov0" && find . | "$BB" cpio -o -H newc 2>/dev/null) | gzip -1 > "$RUN/overlay0.cpio.gz"

IMG=("$WORK/dom0.cpio.gz")
if [ -n "$DOMU_CMD" ] || [ "$TOOLSTACK" = 1 ]; then IMG+=("$WORK/pair.cpio.gz"); fi
if [ "$NET" = 1 ]; then
    [ -f "$WORK/net.cpio.gz" ] || { echo "no net.cpio.gz: run build-initrd.sh" >&2; exit 2; }
    IMG+=("$WORK/net.cpio.gz")
fi
cat "${IMG[@]}" "$RUN/overlay.cpio.gz" "$RUN/overlay0.cpio.gz" > "$RUN/initrd.gz"

# Xen cmdline: serial console, dom0 small; bootscrub off saves TCG time.
XEN_ARGS="console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all bootscrub=false"
XEN_ARGS+=" dom0_mem=512M,max:512M dom0_max_vcpus=1 ${XEN_EXTRA_ARGS:-}"
# dom0 kernel cmdline goes into -initrd, which QEMU splits at commas: no
# commas allowed in it.
DOM0_ARGS="console=hvc0 earlyprintk=xen rdinit=/init loglevel=${DOM0_LOGLEVEL:-4}"
case $DOM0_ARGS in *,*) echo "no commas in the dom0 cmdline" >&2; exit 2 ;; esac

LOG=$WORK/serial.log
start=$(date +%s)
set +e
# -cpu qemu64: "-cpu max" exposes SMAP, with which this Xen/dom0 pair fails
# (QEMU_CPU overrides, e.g. max,-smap).
timeout -k 10 "$TIMEOUT" qemu-system-x86_64 -machine pc -accel tcg \
    -cpu "${QEMU_CPU:-qemu64}" -m 2G -smp 2 -display none -monitor none -serial stdio \
    -no-reboot -kernel "$WORK/xen" -append "$XEN_ARGS" \
    -initrd "$WORK/vmlinuz $DOM0_ARGS,$RUN/initrd.gz" </dev/null |
    tr -d '\r' | if [ "${QUIET:-0}" = 1 ]; then cat > "$LOG"; else tee "$LOG"; fi
qrc=${PIPESTATUS[0]}
set -e
echo "xen-qemu: QEMU exited with $qrc after $(( $(date +%s) - start )) s"

if grep -q 'XENQEMU-RESULT: PASS' "$LOG"; then echo "xen-qemu: PASS"; exit 0; fi
[ "${QUIET:-0}" = 1 ] && tail -n 60 "$LOG"
if grep -q 'XENQEMU-RESULT: FAIL' "$LOG"; then
    echo "xen-qemu: $(grep -m1 -o 'XENQEMU-RESULT: FAIL.*' "$LOG")"; exit 1
fi
echo "xen-qemu: no verdict (timeout or crash), see $LOG"; exit 2
