#!/usr/bin/env bash
# Restart test of `edgeplane run` in network namespaces: 100 long-lived TCP
# connections through a ClusterIP and a NodePort Service survive a `kill -9`
# of the dataplane and its restart on the same state directory.
#
# The topology is tests/netns/lib.sh's (client ns -> node ns -> backend ns;
# only 198.18.0.0/15, namespaces and veths made here and deleted by the EXIT
# trap), with the web Service only:
#
#   client ns                node ns                                backend ns
#   c0 198.18.0.100/24 ───── n0 198.18.0.1/24   n1 198.18.2.1/24 ───── b0 198.18.2.2, .3 /24
#   routes to 198.18.200.0/24  lo 198.18.1.1 (node IP, SNAT)            line echo servers :8080
#   and 198.18.1.1 via node    edgeplane run -i n0 -i n1 --tables DIR
#
# Service web: ClusterIP 198.18.200.10:80 and NodePort 198.18.1.1:30080 ->
# 198.18.2.2:8080, 198.18.2.3:8080 (SNAT to the node IP).
#
# Per mode: edgeplane starts; a client opens 50 connections to the ClusterIP
# and 50 to the NodePort and, on each, sends a numbered line every ~200 ms
# and checks its echo; once every connection has exchanged a few lines,
# edgeplane is killed with SIGKILL, and restarted 2 s later with the same
# --tables directory. The client goes on for 10 s after the restart. Checks:
#   - a second dataplane started on the same directory while the first runs
#     refuses to start and names the first one's pid,
#   - the restarted dataplane re-attached to the conntrack (flows found > 0),
#   - at least 99 of the 100 connections exchanged data after the restart,
#   - no connection was reset or closed (while the dataplane is down the
#     XDP program it left attached drops Service frames instead of passing
#     them to the kernel, whose RSTs would end the connections).
# Printed: flows found at re-attach, the pause (kill -> running again), per
# connection figures.
#
# Usage: tests/netns/restart.sh EDGEPLANE_BIN [generic|native|all]   (root)
set -euo pipefail

BIN=${1:?usage: restart.sh EDGEPLANE_BIN [modes]}
MODES=${2:-all}
[ "$MODES" = all ] && MODES="generic native"
TAG=r
MAXLIFE=300
. "$(dirname "$0")/lib.sh"

topology
servers
write_client
mkdir -p "$WORK/m"
# shellcheck disable=SC2086 # one backend a word
web_yaml $BACKENDS | write_atomic "$WORK/m/web.yaml"

set +e
for mode in $MODES; do
    echo "== $mode mode"
    STATE=$WORK/state-$mode
    ip -n "$NS_N" neigh flush all
    start_ep "$mode" --conntrack-size 65536 --duration 120 || { check "start ($mode)" 1; continue; }
    start_client 90 60 "$WORK/client-$mode.out" 198.18.200.10:80 198.18.1.1:30080
    check "100-connections-established ($mode)" $? "($(grep -c . "$WORK/READY" 2>/dev/null || echo 0) ready mark)"
    # A second dataplane on the same state directory refuses to start,
    # naming the first, and touches nothing (the checks below would see it).
    out=$(ip netns exec "$NS_N" timeout 20 "$BIN" run --manifests "$WORK/m" --node-name node-a \
        --node-ip 198.18.1.1 -i n0 -i n1 --workers 2 --tables "$STATE" --xdp-mode "$mode" \
        --duration 5 2>&1); rc=$?
    # (`run` holds the table region as its writer too: whichever it meets
    # first, the message names the running process.)
    [ "$rc" != 0 ] && [[ "$out" =~ in\ use\ by\ another\ (dataplane|control)\ \(pid\ $EP_PID\) ]]
    check "second-writer-refused ($mode)" $? "(exit $rc: $(grep -o 'is in use[^;]*' <<<"$out" | head -1))"
    sleep 1
    t_kill=$(mono)
    kill -KILL "$EP_PID"; wait "$EP_PID" 2>/dev/null; EP_PID=""
    attached=$(ip -n "$NS_N" link show n0 | grep -c 'prog/xdp')
    sleep 2
    start_ep "$mode" --conntrack-size 65536 --duration 120 || { check "restart ($mode)" 1; kill "$CL_PID"; continue; }
    t_up=$(mono)
    pause=$("$PY" -c "print(int(($t_up - $t_kill) * 1000))")
    found=$(sed -n 's/.*flow state ready.*flows=\([0-9]*\).*/\1/p' "$LOG" | head -1)
    echo "      pause (kill -9 -> running again): ${pause} ms; XDP program left attached meanwhile: $attached; flows found at re-attach: ${found:-?}"
    grep -E 're-attached .*/conntrack|started empty' "$LOG" | sed 's/^/      /' | head -2
    [ "${found:-0}" -ge 100 ]; check "conntrack-reattached ($mode)" $? "(${found:-0} flows found, 100 connections open)"
    sleep 10
    touch "$WORK/STOP"
    wait "$CL_PID"; CL_PID=""
    out=$WORK/client-$mode.out
    summarize_client "$out" "$t_up"
    client_checks "$mode" "the restart"
    stop_ep
    grep -E '^(stats|xdp (redirect|drop|pass_no))' "$LOG" | sed 's/^/      /'
    if [ "$FAILS" != 0 ]; then
        echo "--- client"; grep -v ' err - ' "$out" | head -20
        echo "--- log"; tail -30 "$LOG"
    fi
done

if [ "$FAILS" = 0 ]; then echo "restart: all passed"; else echo "restart: $FAILS FAILED"; fi
exit $(( FAILS > 0 ))
