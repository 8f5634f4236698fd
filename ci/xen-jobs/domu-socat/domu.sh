#!/bin/sh
# The domU's half of the domu-socat job: advertise (xen-advertise: eth0's MAC
# and 10.0.0.2, what the toolstack gave this domain), wait for dom0's go, then
# send XEN_SOCAT_BYTES of /dev/urandom through an unmodified socat client under
# libcoresident_preload.so with the Xen backend, hashing what it sent.
set -u
N=${XEN_SOCAT_BYTES:-104857600}
say() { echo "socat-domU: $*"; }
fail() { say "FAIL $*"; [ -f /tmp/socat-domu.log ] && sed 's/^/socat-domU: log: /' /tmp/socat-domu.log | tail -n 40; exit 1; }
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
ping -c 2 -w 60 10.0.0.1 > /dev/null || fail "no ping to dom0"
xen-advertise --mac-of eth0 10.0.0.2 || fail "xen-advertise"
i=0
until socat -u OPEN:/dev/null TCP:10.0.0.1:7301,connect-timeout=2 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 600 ] || fail "no go from dom0"
    sleep 1
done
say "dom0 says go: sending $N bytes"
mkfifo /tmp/sent.fifo || fail "mkfifo"
# The producer alone (the same pipeline into /dev/null, 8 MiB): what this
# 1-vCPU TCG guest can feed socat at all, to read the transfer's rate against.
sha256sum < /tmp/sent.fifo > /dev/null &
P0=$(date +%s)
head -c 8388608 /dev/urandom | tee /tmp/sent.fifo > /dev/null
wait
say "producer alone: 8388608 bytes in $(( $(date +%s) - P0 )) s"
sha256sum < /tmp/sent.fifo > /tmp/sum.domu &
T0=$(date +%s)
head -c "$N" /dev/urandom | tee /tmp/sent.fifo | \
    coresident run --discovery xen --log /tmp/socat-domu.log -- socat -u - TCP:10.0.0.1:7300
rc=$?
wait
say "socat exited with $rc after $(( $(date +%s) - T0 )) s"
say "sha256 $(cut -d' ' -f1 /tmp/sum.domu)"
grep -a -e 'accelerated' -e 'closed' -e 'fell back' -e 'withdr' -e 'readmit' -e 'WARN' -e 'ERROR' \
    -e 'Xen backend' /tmp/socat-domu.log | sed 's/^/socat-domU: log: /'
xen-advertise --remove
[ $rc = 0 ] || fail "socat exited with $rc"
say "ok"
