#!/bin/sh
# dom0.sh DOM0_TEST_CMD...: the dom0 half of the pv-domu job, run by dom0's
# /init (ci/xen-qemu/run.sh -x: xenstored is up). Starts xenconsoled, boots
# the PV kernel as domain "pv-domu" (/opt/bin/pv-domu.cfg), runs the dom0
# test with DOMU_ID set, then copies the guest's console log (written by
# xenconsoled from the guest's PV console ring) to the serial console as
# "pv-domu| ..." lines. Exit 0 only if the dom0 test passed and the guest
# printed "PV-DOMU-RESULT: PASS".
log=/var/log/xen/guest-pv-domu.log
xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen \
    || { echo "pv-domu: xenconsoled failed"; exit 1; }
# Created paused: its id is known before it can run (and finish).
xl create -p /opt/bin/pv-domu.cfg || { echo "pv-domu: xl create failed"; exit 1; }
if DOMU_ID=$(xl domid pv-domu) && xl unpause pv-domu; then
    export DOMU_ID
    echo "pv-domu: the PV kernel is domain $DOMU_ID"
    sh -c "$*"
    rc=$?
    echo "pv-domu: dom0 test exited with $rc"
else
    echo "pv-domu: the guest is gone already"
    rc=1
fi
# The guest ends with a panic (deliberate after its result, with
# panic-at-exit on its command line) or its FAIL line.
i=0
until grep -qE '^panic: |PV-DOMU-RESULT: FAIL' $log 2>/dev/null || [ $i -ge 120 ]; do
    i=$((i + 1)); sleep 0.5
done
sleep 1 # the rest of a panic's message
echo "pv-domu: ---- guest console (xenconsoled's $log) ----"
sed 's/^/pv-domu| /' $log 2>/dev/null
echo "pv-domu: ---- end guest console ----"
xl list 2>/dev/null | sed 's/^/pv-domu: xl list: /'
[ -z "${PV_DOMU_DEBUG:-}" ] || xl dmesg | tail -n 40 | sed 's/^/pv-domu: xl dmesg: /'
grep -q 'PV-DOMU-RESULT: PASS' $log 2>/dev/null || { echo "pv-domu: the guest did not pass"; exit 1; }
exit $rc
