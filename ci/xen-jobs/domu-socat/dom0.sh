#!/bin/sh
# dom0's half of the domu-socat job (ci/xen-jobs/domu-socat.sh), run by the
# dom0 image's /init with DOMU_ID set: the residency agent (xen-agent, stdin
# commands through a fifo), a socat listener under libcoresident_preload.so
# with the Xen backend (coresident run --discovery xen) whose output is
# hashed, and a watcher that asks `coresident status` how many bytes came over
# the ring and withdraws the domU through the agent once a third of them did.
# Prints XEN-CHECK lines and the library's log for the host side to judge.
# Env: XEN_SOCAT_BYTES (what the domU sends), DOMU_ID.
set -u
N=${XEN_SOCAT_BYTES:-104857600}
PORT=7300
GO=7301
say() { echo "socat-dom0: $*"; }
fail() { say "FAIL $*"; [ -f /tmp/socat-dom0.log ] && sed 's/^/socat-dom0: log: /' /tmp/socat-dom0.log | tail -n 40; exit 1; }
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
[ -n "${DOMU_ID:-}" ] || fail "no DOMU_ID"

mkfifo /tmp/agent.in || fail "mkfifo"
xen-agent --advertise 10.0.0.1 < /tmp/agent.in > /tmp/agent.out 2>&1 &
AGENT=$!
exec 3> /tmp/agent.in
# Both advertised and listed: the agent's own list of dom0 names the domU.
i=0
until grep -qE "domain 0: .*list \[([0-9]+, )*$DOMU_ID[],]" /tmp/agent.out; do
    i=$((i + 1)); [ $i -lt 300 ] || { cat /tmp/agent.out; fail "the domU was never listed"; }
    echo list >&3; sleep 1
done
say "dom$DOMU_ID is co-resident (the agent lists it)"

# The listener, unmodified socat, its output hashed as it arrives.
( coresident run --discovery xen --log /tmp/socat-dom0.log -- \
      socat -u TCP-LISTEN:$PORT,bind=10.0.0.1,reuseaddr - ; echo $? > /tmp/socat.rc ) \
    | sha256sum > /tmp/sum.dom0 &
HASHER=$!
# The library registered 10.0.0.1:PORT in XenStore (net-listen, addr_key).
KEY=/local/domain/0/data/coresident/net-listen/4-0a000001-$PORT
i=0
until xenstore-exists $KEY 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || fail "the listener never registered $KEY"
    sleep 0.2
done
say "socat listens on 10.0.0.1:$PORT under the library ($KEY)"
# Go: the domU waits for one plain connection to GO (socat without the library).
socat -u TCP-LISTEN:$GO,bind=10.0.0.1,reuseaddr OPEN:/dev/null &

# Watch the transfer: withdraw the domU once a third of the bytes came over the
# ring; note when the connection is on TCP.
T0=$(date +%s)
withdrawn=0 seen_tcp=0 seen_ring=0 polls=0
while [ ! -f /tmp/socat.rc ]; do
    polls=$((polls + 1))
    [ $(( $(date +%s) - T0 )) -lt 900 ] || fail "the transfer did not end in 900 s"
    # A connection's row: PID FD LOCAL PEER PATH RING_TX RING_RX TCP_TX TCP_RX SWITCHES
    # (not the summary line, "N processes, M connections").
    row=$(coresident status 2>/dev/null \
        | awk '$1 ~ /^[0-9]+$/ && NF == 10 && $7 ~ /^[0-9]+$/ {print $5, $7, $9; exit}')
    set -- $row
    if [ $# -eq 3 ]; then
        case $1 in ring) seen_ring=1 ;; tcp) seen_tcp=1 ;; esac
        if [ $withdrawn = 0 ] && [ "$2" -ge $((N / 3)) ] 2>/dev/null; then
            echo "withdraw $DOMU_ID" >&3
            withdrawn=1
            say "status: path $1, ring_rx $2, tcp_rx $3: withdrawing dom$DOMU_ID"
            echo "XEN-CHECK socat: the agent withdrew the domU mid-stream (ring_rx $2 of $N)"
        fi
        if [ $withdrawn = 1 ] && [ "$1" = tcp ] && [ $seen_tcp = 1 ] && [ "${said_tcp:-0}" = 0 ]; then
            said_tcp=1
            say "status: path tcp after the withdrawal (ring_rx $2, tcp_rx $3)"
        fi
    fi
    sleep 0.3
done
T1=$(date +%s)
wait $HASHER
rc=$(cat /tmp/socat.rc)
say "socat exited with $rc after $((T1 - T0)) s ($polls status polls, ring seen $seen_ring, tcp seen $seen_tcp)"
echo "socat-dom0: sha256 $(cut -d' ' -f1 /tmp/sum.dom0)"
grep -a -e 'accelerated' -e 'closed' -e 'fell back' -e 'withdr' -e 'readmit' -e 'WARN' -e 'ERROR' \
    -e 'Xen backend' -e 'registered' /tmp/socat-dom0.log | sed 's/^/socat-dom0: log: /'
sed 's/^/socat-dom0: agent: /' /tmp/agent.out | grep -v 'list \[' | head -n 20
echo quit >&3
[ "$rc" = 0 ] || fail "socat exited with $rc"
[ $withdrawn = 1 ] || fail "the ring never carried a third of the bytes: no withdrawal"
# The domU prints its hash to its console (xenconsoled's log here).
i=0
until grep -q 'socat-domU: sha256 ' /var/log/xen/guest-domu.log 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 120 ] || fail "no hash from the domU"
    sleep 0.5
done
mine=$(cut -d' ' -f1 /tmp/sum.dom0)
theirs=$(grep -a -m1 -o 'socat-domU: sha256 [0-9a-f]*' /var/log/xen/guest-domu.log | cut -d' ' -f3)
[ "$mine" = "$theirs" ] || fail "hashes differ: dom0 received $mine, the domU sent $theirs"
echo "XEN-CHECK socat: dom0 and the domU agree on sha256 $mine"
echo "XEN-CHECK socat_host ok"
