#!/usr/bin/env bash
# Link flap test of `edgeplane run` in network namespaces: 100 long-lived
# TCP connections through a ClusterIP and a NodePort Service carry on while
# the node's interfaces go down for 2 s and up again, first the
# backend-side one (n1), then the client-side one (n0). Topology and client:
# tests/netns/lib.sh.
#
# Per mode (generic, native): edgeplane starts; the client opens 50
# connections to the ClusterIP and 50 to the NodePort and exchanges a line
# on each every ~200 ms. For each interface: `ip link set down`, 2 s,
# `ip link set up`; then a fresh connection is tried every 50 ms until one
# works, and 10 more must all work. Checks:
#   - new connections work after each flap (10/10),
#   - at least 99 of the 100 connections exchanged data after the last flap,
#   - no connection was reset or closed.
# Printed per flap: the echo stall (longest gap between two echoes on any
# connection around the flap: the 2 s down plus TCP's retransmission
# back-off plus the dataplane's recovery) and the time from `link up` to the
# first fresh connection that works.
#
# Usage: tests/netns/linkflap.sh EDGEPLANE_BIN [generic|native|all]   (root)
set -euo pipefail

BIN=${1:?usage: linkflap.sh EDGEPLANE_BIN [modes]}
MODES=${2:-all}
[ "$MODES" = all ] && MODES="generic native"
TAG=lf
. "$(dirname "$0")/lib.sh"

topology
servers
mkdir -p "$WORK/m"
manifest "$WORK/m/web.yaml" $BACKENDS
write_client

set +e
for mode in $MODES; do
    echo "== $mode mode"
    STATE=$WORK/state-$mode
    rm -f "$WORK/echo-times"
    ip -n "$NS_N" neigh flush all
    start_ep "$mode" --conntrack-size 65536 --duration 240 || { check "start ($mode)" 1; continue; }
    start_client 120 90 "$WORK/client-$mode.out" 198.18.200.10:80 198.18.1.1:30080
    check "100-connections-established ($mode)" $?
    t_up=0
    for ifc in n1 n0; do
        sleep 2
        t_down=$(mono)
        ip -n "$NS_N" link set "$ifc" down
        sleep 2
        ip -n "$NS_N" link set "$ifc" up
        t_up=$(mono)
        first=$(wait_new_conn 15 198.18.200.10:80)
        sleep 5
        gap=$(max_gap "$(awk -v t="$t_down" 'BEGIN{print t - 0.5}')" "$(mono)")
        new=$(new_conns 10 198.18.200.10:80 198.18.1.1:30080)
        echo "      flap $ifc: echo stall ${gap} ms (2000 ms down); first new connection ${first} ms after link up; $new"
        [ "$first" -ge 0 ] && [[ "$new" == "new ok 10 of 10"* ]]
        check "new-connections-after-flap-$ifc ($mode)" $? "($new)"
    done
    sleep 3
    touch "$WORK/STOP"
    wait "$CL_PID"
    summarize_client "$WORK/client-$mode.out" "$t_up"
    client_checks "$mode" "the last flap"
    stop_ep
    grep -E '^(stats|worker|drop|xdp (redirect|drop|pass_no))' "$LOG" | sed 's/^/      /'
    grep -q panicked "$LOG"; [ $? != 0 ]; check "no-panic ($mode)" $?
    if [ "$FAILS" != 0 ]; then
        echo "--- client"; grep -v ' err - ' "$WORK/client-$mode.out" | head -20
        echo "--- log"; tail -40 "$LOG"
    fi
done

if [ "$FAILS" = 0 ]; then echo "linkflap: all passed"; else echo "linkflap: $FAILS FAILED"; fi
exit $(( FAILS > 0 ))
