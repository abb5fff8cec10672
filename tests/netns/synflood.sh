#!/usr/bin/env bash
# SYN flood with conntrack exhaustion, in network namespaces (topology and
# client: tests/netns/lib.sh).
#
# `edgeplane run --conntrack-size 4096`; 100 established TCP connections
# (50 to the ClusterIP, 50 to the NodePort) exchange a line every ~200 ms.
# Then `edgeplane pktgen send --proto syn --flows new-per-packet` floods the
# ClusterIP from the client namespace (AF_XDP on c0, flat out) for
# FLOOD_SECONDS (default 10; the issue's figure is 30), with sources
# 198.18.0.128-191 (ports 1024-65535: every frame a new flow). The node
# has permanent neighbour entries for those sources pointing at c0, so the
# backends' SYN-ACKs go back to the client namespace, whose kernel drops
# them (spoofed sources that never answer). Meanwhile 20 legitimate
# connections (connect + one echoed line) are made, spread over the flood.
# Checks:
#   - the flood filled the table (conntrack insert failures + evictions
#     > the table's size; the stats lines show it full),
#   - all 100 connections survive: none reset or closed, each exchanged data
#     during the flood and after it. Without SYN shedding the kernel dropped
#     60-65% of the flooded queue's frames at random (the worker saturated)
#     and a connection there could stall for the whole flood (TCP back-off);
#   - SYN shedding engaged (SYNs dropped in XDP, counted `drop_syn_shed`)
#     and ended after the flood,
#   - the legitimate connections during the flood succeed (native: at
#     least 15/20, measured 17-20; generic: at least 10/20, measured 17-18;
#     the count is printed), none of them is reset (at most 2 allowed), and
#     10/10 after it. Every frontend here SNATs, and a half-open flow lives
#     only about table size / new-flow rate (4096 / 60k-130k/s, 30-80 ms)
#     before a flood SYN evicts it; its ACK is then picked up on the same
#     SNAT port (the port is a hash of the flow's tuple, taken back from a
#     half-open holder under pressure), so the handshake completes. What
#     still fails is a SYN lost, with its retransmission, in the flooded
#     queue beyond the dataplane's rate (a timeout, not a reset; see
#     docs/reliability.md, "SYN flood").
# Printed: the generator's rate, the dataplane's counters (drop reasons,
# conntrack insert_failures / evictions), the legit connect times.
#
# Usage: tests/netns/synflood.sh EDGEPLANE_BIN [generic|native|all]   (root)
#        FLOOD_SECONDS=30 for the issue's long variant.
set -euo pipefail

BIN=${1:?usage: synflood.sh EDGEPLANE_BIN [modes]}
MODES=${2:-all}
[ "$MODES" = all ] && MODES="generic native"
FLOOD=${FLOOD_SECONDS:-10}
CT_SIZE=${CT_SIZE:-4096}
TAG=sf
. "$(dirname "$0")/lib.sh"

topology
ip netns exec "$NS_B" sysctl -qw net.ipv4.tcp_syncookies=1
servers
mkdir -p "$WORK/m"
manifest "$WORK/m/web.yaml" $BACKENDS
write_client
C0_MAC=$(ip netns exec "$NS_C" cat /sys/class/net/c0/address)
N0_MAC=$(ip netns exec "$NS_N" cat /sys/class/net/n0/address)
# Flood sources 198.18.0.128/26: the node reaches them through c0.
for i in $(seq 128 191); do
    ip -n "$NS_N" neigh replace "198.18.0.$i" lladdr "$C0_MAC" dev n0 nud permanent
done

set +e
for mode in $MODES; do
    echo "== $mode mode (conntrack $CT_SIZE flows, flood ${FLOOD} s)"
    STATE=$WORK/state-$mode
    rm -f "$WORK/echo-times"
    start_ep "$mode" --conntrack-size "$CT_SIZE" --stats-interval 1 --duration $((FLOOD + 120)) \
        || { check "start ($mode)" 1; continue; }
    start_client $((FLOOD + 100)) $((FLOOD + 60)) "$WORK/client-$mode.out" 198.18.200.10:80 198.18.1.1:30080
    check "100-connections-established ($mode)" $?
    sleep 1
    t0=$(mono)
    ip netns exec "$NS_C" timeout $((FLOOD + 20)) "$BIN" pktgen send -i c0 --dst-mac "$N0_MAC" \
        --src-ip 198.18.0.128 --src-count 64 --dst-ip 198.18.200.10 --dst-port 80 \
        --proto syn --flows new-per-packet --duration "$FLOOD" --quiet \
        --json "$WORK/gen-$mode.json" >"$WORK/gen-$mode.out" 2>&1 &
    GEN_PID=$!; BG_PIDS="$BG_PIDS $GEN_PID"
    sleep 0.5
    legit=$(new_conns_spread 20 "$((FLOOD - 1))" 198.18.200.10:80 198.18.1.1:30080)
    wait "$GEN_PID"; gen_rc=$?
    t1=$(mono)
    sleep 5
    after=$(new_conns 10 198.18.200.10:80 198.18.1.1:30080)
    sleep 2
    touch "$WORK/STOP"
    wait "$CL_PID"
    stop_ep
    echo "      generator: $(tail -1 "$WORK/gen-$mode.out") (exit $gen_rc)"
    [ "$gen_rc" = 0 ]; check "generator-ran ($mode)" $?
    out=$WORK/client-$mode.out
    summarize_client "$out" "$t1"
    during=$(echoes_between "$(awk -v t="$t0" 'BEGIN{print t + 1}')" "$t1")
    [ "$TOTAL" = 100 ] && [ "$NERR" = 0 ]
    check "no-connection-reset ($mode)" $? "($NERR broken${ERRS:+: $ERRS})"
    [ "$during" = 100 ]
    check "connections-carry-data-during-flood ($mode)" $? "($during/100 exchanged data during the flood)"
    [ "$AFTER" = 100 ]
    check "connections-carry-data-after-flood ($mode)" $? "($AFTER/100 after it; fewest exchanges on one connection: ${MIN_EX:-?}; echo stall during the flood $(max_gap "$t0" "$t1") ms)"
    legit_ok=$(sed -n 's/^legit ok \([0-9]*\) of.*/\1/p' <<<"$legit")
    # Native: measured 17-20/20; generic (the kernel's receive path shares
    # the flooded CPUs): 17-18/20. The thresholds guard against a regression
    # with a margin for slower machines; the figure is printed. Before SNAT
    # ports were a function of the flow, 3-5 of 20 were reset (an evicted
    # half-open entry's ACK got a new port, so the backend refused it).
    if [ "$mode" = native ]; then min_legit=15; else min_legit=10; fi
    [ "${legit_ok:-0}" -ge "$min_legit" ]
    check "legit-connections-during-flood ($mode)" $? "($legit; at least $min_legit required)"
    resets=$(grep -o ConnectionResetError <<<"$legit" | wc -l)
    [ "$resets" -le 2 ]
    check "legit-connections-not-reset ($mode)" $? "($resets reset; at most 2 allowed)"
    [[ "$after" == "new ok 10 of 10"* ]]
    check "new-connections-after-flood ($mode)" $? "($after)"
    final=$(grep '^stats:' "$LOG")
    fails=$(sed -n 's/.*insert_failures \([0-9]*\).*/\1/p' <<<"$final")
    evict=$(sed -n 's/.*evictions \([0-9]*\).*/\1/p' <<<"$final")
    peak=$(grep -o 'conntrack [0-9]* insert' "$LOG" | awk '{print $2}' | sort -n | tail -1)
    [ $(( ${fails:-0} + ${evict:-0} )) -gt "$CT_SIZE" ]
    check "table-exhausted-and-counted ($mode)" $? "(insert_failures ${fails:-?}, evictions ${evict:-?}, peak entries ${peak:-?} of $CT_SIZE)"
    sed 's/^/      /' <<<"$final"
    grep -E '^(worker|drop |xdp (redirect_frontend|drop|pass_no))' "$LOG" | sed 's/^/      /'
    # SYN shedding (src/shed.rs): the saturated queue's SYNs were dropped
    # in XDP instead of the kernel dropping frames at random, and it ended
    # after the flood.
    shed=$(sed -n 's/^xdp drop_syn_shed: \([0-9]*\)/\1/p' "$LOG")
    kdrop=$(sed -n 's/.*socket rx_dropped \([0-9]*\).*/\1/p' <<<"$final")
    [ "${shed:-0}" -gt 0 ] && grep -q 'shedding new TCP connections' "$LOG"
    check "syn-shedding-engaged ($mode)" $? "(${shed:-0} SYNs shed in XDP; frames the kernel dropped for the sockets: ${kdrop:-?})"
    grep -q 'SYN shedding ended' "$LOG"
    check "syn-shedding-ended ($mode)" $?
    grep -q panicked "$LOG"; [ $? != 0 ]; check "no-panic ($mode)" $?
    if [ "$FAILS" != 0 ]; then
        echo "--- client"; grep -v ' err - ' "$out" | head -20
        echo "--- log"; grep -v 'conntrack [0-9]* insert' "$LOG" | tail -30
    fi
done

if [ "$FAILS" = 0 ]; then echo "synflood: all passed"; else echo "synflood: $FAILS FAILED"; fi
exit $(( FAILS > 0 ))
