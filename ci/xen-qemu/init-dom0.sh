#!/bin/busybox sh
# /init of the dom0 image. Loads the Xen drivers, optionally starts the Xen
# toolstack and a domU, runs the test and prints one line that run.sh greps:
#   XENQEMU-RESULT: PASS   or   XENQEMU-RESULT: FAIL <why>
# then reboots, which ends QEMU (-no-reboot).
# /etc/xenqemu.conf (written by run.sh) sets TEST_CMD and, for two-domain
# runs, DOMU_CMD; TOOLSTACK=1 starts xenstored without a domU. TEST_CMD runs
# with DOMU_ID set when there is a domU.
/bin/busybox --install -s
export PATH=/opt/bin:/usr/bin:/bin:/usr/sbin:/sbin:/usr/lib/xen-4.17/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu

finish() {
    echo "XENQEMU-RESULT: $*"
    sync
    reboot -f
    sleep 60
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /tmp
mkdir -p /var && ln -s /run /var/run
mkdir -p /var/lib/xen /var/lib/xenstored /var/log/xen /run/xen /run/xenstored
for m in xen-privcmd xenfs xen-evtchn xen-gntdev xen-gntalloc; do
    insmod /lib/modules/$m.ko || finish "FAIL insmod $m"
done
mount -t xenfs xenfs /proc/xen || finish "FAIL mount xenfs"

TEST_CMD="false no TEST_CMD given"
DOMU_CMD=
TOOLSTACK=0
NET=0
[ -f /etc/xenqemu.conf ] && . /etc/xenqemu.conf

DOMU_CFG=/etc/xen/domu.cfg
DOMU_EXTRA=
if [ "$NET" = 1 ]; then
    # run.sh -n: a bridge for the domU's vif, which xl's hotplug script
    # (/etc/xen/scripts/vif-bridge) attaches; dom0 is 10.0.0.1 on it.
    for m in llc stp bridge xen-netback; do
        insmod /lib/modules/$m.ko || finish "FAIL insmod $m"
    done
    ip link set lo up
    # busybox's brctl only adds and deletes: STP and forward delay (both
    # off, so that a new port forwards at once) through sysfs.
    brctl addbr xenbr0 && echo 0 > /sys/class/net/xenbr0/bridge/stp_state \
        && echo 0 > /sys/class/net/xenbr0/bridge/forward_delay \
        && ip addr add 10.0.0.1/24 dev xenbr0 && ip link set xenbr0 up \
        || finish "FAIL bridge xenbr0"
    DOMU_CFG=/etc/xen/domu-net.cfg
    DOMU_EXTRA=/boot/domU-net.cpio.gz
    echo "xenqemu: bridge xenbr0 is up (10.0.0.1/24)"
fi

if [ -n "$DOMU_CMD" ] || [ "$TOOLSTACK" = 1 ]; then
    [ -x /usr/lib/xen-4.17/bin/xl ] || finish "FAIL toolstack run without pair.cpio.gz"
    # xenstored must be up before xen-init-dom0 (which registers dom0).
    xenstored --pid-file /run/xenstored.pid || finish "FAIL xenstored"
    i=0
    until xenstore-exists / 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 100 ] || finish "FAIL xenstored not answering"
        sleep 0.2
    done
    xen-init-dom0 || finish "FAIL xen-init-dom0"
    echo "xenqemu: xenstored is up"
fi
if [ -n "$DOMU_CMD" ]; then
    xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen \
        || finish "FAIL xenconsoled"
    # The domU image = its base image + run.sh's overlay (test binaries, conf),
    # uncompressed: libxc chokes on concatenated gzip streams.
    zcat /boot/domU.cpio.gz $DOMU_EXTRA /boot/overlay.cpio.gz > /run/domU.cpio \
        || finish "FAIL assembling the domU image"
    xl create $DOMU_CFG || finish "FAIL xl create"
    DOMU_ID=$(xl domid domu) || finish "FAIL xl domid"
    export DOMU_ID
    echo "xenqemu: domU is domain $DOMU_ID"
fi

echo "xenqemu: running: $TEST_CMD"
sh -c "$TEST_CMD"
rc=$?
echo "xenqemu: test exited with $rc"

if [ -n "$DOMU_CMD" ]; then
    # The domU prints DOMU-RESULT to its console, which xenconsoled logs.
    # A test that destroys the domU on purpose (xl destroy) first creates
    # /run/xenqemu-domu-destroyed: then no DOMU-RESULT can come, and the
    # test's own exit code and markers decide.
    log=/var/log/xen/guest-domu.log
    gone=/run/xenqemu-domu-destroyed
    i=0
    until grep -q 'DOMU-RESULT:' $log 2>/dev/null || [ -f $gone ] || [ $i -ge 120 ]; do
        i=$((i + 1)); sleep 0.5
    done
    echo "xenqemu: ---- domU console ----"
    sed 's/^/domU| /' $log 2>/dev/null
    echo "xenqemu: ---- end domU console ----"
    if [ -f $gone ]; then
        echo "xenqemu: the test destroyed the domU; no DOMU-RESULT expected"
    else
        grep -q 'DOMU-RESULT: PASS' $log 2>/dev/null || finish "FAIL domU did not pass (dom0 test rc=$rc)"
    fi
fi
[ $rc -eq 0 ] && finish PASS
finish "FAIL test exit code $rc"
