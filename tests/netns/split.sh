#!/usr/bin/env bash
# `edgeplane control` and `edgeplane dataplane` as two processes over the
# table region, in network namespaces, with real TCP connections. The
# topology is tests/netns/lib.sh's (client ns -> node ns -> backend ns; only
# 198.18.0.0/15; namespaces, veths and the temp --tables dir made here and
# deleted by the EXIT trap), with a third backend 198.18.2.4.
#
# 1. control-kill: 100 long-lived echo connections (50 to the ClusterIP
#    198.18.200.10:80, 50 to the NodePort 198.18.1.1:30080); a loop edits
#    the manifests every 250 ms for 8 s (web's EndpointSlice gains and loses
#    198.18.2.4, another Service changes port); 2 s in, the control process
#    is killed with SIGKILL and restarted 1 s later. Checks: no connection
#    reset, the restarted control publishes (converges), and a Service added
#    afterwards is forwarded. Printed: update latency, from the manifest
#    write to the first connection answered through the new frontend.
# 2. dataplane-down: the dataplane is killed with SIGKILL; while it is down
#    a Service is added (control publishes it; `inspect services` shows it
#    in the region); the dataplane restarts on the same --tables dir.
#    Checks: the new Service is forwarded by the restarted dataplane; at
#    least 99 of the 100 connections carry on and none is reset (conntrack
#    re-attached from shared memory).
# 3. inspect: services, backends, conntrack, nexthops and stats read the
#    shared state while both processes run.
#
# Usage: tests/netns/split.sh EDGEPLANE_BIN [generic|native]   (root)
set -euo pipefail

BIN=${1:?usage: split.sh EDGEPLANE_BIN [generic|native]}
MODE=${2:-generic}
TAG=s
BACKENDS="198.18.2.2 198.18.2.3 198.18.2.4"
MAXLIFE=300
. "$(dirname "$0")/lib.sh"
STATE=$WORK/state
CP_PID=""
DP_PID=""
ED_PID=""
split_cleanup() {
    set +e
    for p in $BG_PIDS; do kill -9 "$p" 2>/dev/null; done
    BG_PIDS=""
    for p in $CP_PID $DP_PID; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    lib_cleanup
}
trap split_cleanup EXIT

topology
servers
write_client

# probe.py HOST:PORT MAX: connects until one line is echoed (50 ms timeouts);
# prints CLOCK_MONOTONIC of the first answer, or "none".
cat >"$WORK/probe.py" <<'P'
import socket, sys, time
host, port = sys.argv[1].split(":"); t_end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < t_end:
    try:
        s = socket.create_connection((host, int(port)), timeout=0.05)
        s.settimeout(0.5); s.sendall(b"probe\n")
        if s.recv(100) == b"probe\n":
            print("%.3f" % time.monotonic()); sys.exit(0)
    except OSError:
        time.sleep(0.01)
print("none")
P

ms_between() { "$PY" -c "print(int((float('$2') - float('$1')) * 1000))"; }
RUN=0
start_control() {
    RUN=$((RUN + 1)); CLOG=$WORK/control-$RUN.log
    "$BIN" control --manifests "$WORK/m" --node-name node-a --node-ip 198.18.1.1 \
        --tables "$STATE" --reload-ms 50 --duration 150 >"$CLOG" 2>&1 &
    CP_PID=$!
    wait_for_log "$CLOG" 'tables published' "$CP_PID"
}
start_dataplane() {
    RUN=$((RUN + 1)); DLOG=$WORK/dataplane-$RUN.log
    ip netns exec "$NS_N" "$BIN" dataplane -i n0 -i n1 --workers 2 --tables "$STATE" \
        --xdp-mode "$MODE" --idle-sleep-us 200 --conntrack-size 65536 \
        --frames 1024 --ring-size 512 --duration 150 --wait-tables 10 >"$DLOG" 2>&1 &
    DP_PID=$!
    wait_for_log "$DLOG" 'edgeplane running' "$DP_PID"
}

web() { # [extra backend]: Service web on 198.18.2.2, .3 and the extra one
    web_yaml 198.18.2.2 198.18.2.3 "$@" | write_atomic "$WORK/m/web.yaml"
}
svc() { # name clusterIP port backend
    {
        cat <<Y
apiVersion: v1
kind: Service
metadata: {name: $1, namespace: default}
spec:
  clusterIP: $2
  selector: {app: $1}
  ports: [{name: echo, port: $3, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: $1-1, namespace: default, labels: {kubernetes.io/service-name: $1}}
addressType: IPv4
ports: [{name: echo, port: 8080, protocol: TCP}]
endpoints:
Y
        endpoints_yaml "$4"
    } | write_atomic "$WORK/m/$1.yaml"
}

mkdir -p "$WORK/m"
web
svc other 198.18.200.11 81 198.18.2.4

set +e
echo "== $MODE mode"
ip -n "$NS_N" neigh flush all
start_control || { check "control-start" 1; exit 1; }
start_dataplane || { check "dataplane-start" 1; exit 1; }
check "two-processes-running" 0 "(control pid $CP_PID, dataplane pid $DP_PID)"
start_client 120 90 "$WORK/client.out" 198.18.200.10:80 198.18.1.1:30080
check "100-connections-established" $?

# 1. control-kill under manifest edits.
(
    i=0
    end=$(( $(date +%s) + 8 ))
    while [ "$(date +%s)" -lt "$end" ]; do
        i=$((i + 1))
        if [ $((i % 2)) = 0 ]; then
            web 198.18.2.4
            svc other 198.18.200.11 81 198.18.2.4
        else
            web
            svc other 198.18.200.11 82 198.18.2.4
        fi
        sleep 0.25
    done
) &
ED_PID=$!; BG_PIDS="$BG_PIDS $ED_PID"
sleep 2
kill -KILL "$CP_PID"; wait "$CP_PID" 2>/dev/null
check "control-killed" 0 "(SIGKILL while editing; published before: $(grep -c 'tables published' "$CLOG"))"
sleep 1
start_control; check "control-restarted" $? "(picks up generation $(sed -n 's/.*table region open.*generation=\([0-9]*\).*/\1/p' "$CLOG" | head -1))"
wait "$ED_PID"; ED_PID=""
sleep 0.5
n1=$(grep -c 'tables published' "$CLOG")
[ "$n1" -ge 2 ]; check "control-converges" $? "($n1 generations published by the restarted control)"
kill -0 "$DP_PID" 2>/dev/null; check "dataplane-unaffected" $? "(adopted $(grep -c 'tables adopted' "$DLOG") generations)"
# Update latency: manifest write -> first connection through the new frontend.
t0=$(mono)
svc late 198.18.200.20 80 198.18.2.3
t1=$(ip netns exec "$NS_C" "$PY" "$WORK/probe.py" 198.18.200.20:80 10)
[ "$t1" != none ]; check "service-added-after-restart-forwarded" $?
[ "$t1" != none ] && echo "      update latency (manifest write -> first answer via the new table; control polls every 50 ms): $(ms_between "$t0" "$t1") ms"

# 3. inspect while both run.
I="$BIN inspect --tables $STATE"
$I services --output json >"$WORK/i-services.json" 2>&1
grep -q '"default/late:echo"' "$WORK/i-services.json"; check "inspect-services" $? "($(grep -c '"frontend"' "$WORK/i-services.json") frontends)"
$I backends >"$WORK/i-backends.txt" 2>&1
grep -q '198.18.2.3:8080' "$WORK/i-backends.txt"; check "inspect-backends" $?
sleep 1.2
$I stats --output json >"$WORK/i-stats.json" 2>&1
grep -q '"active_generation"' "$WORK/i-stats.json" && grep -q '"rx_packets"' "$WORK/i-stats.json"; check "inspect-stats" $?
$I nexthops >"$WORK/i-nexthops.txt" 2>&1
grep -q '198.18.2.0/24' "$WORK/i-nexthops.txt"; check "inspect-nexthops" $?
$I conntrack >"$WORK/i-ct.txt" 2>&1
nct=$(grep -c 'Established' "$WORK/i-ct.txt")
[ "$nct" -ge 100 ]; check "inspect-conntrack" $? "($nct established flows listed)"
$I services >/dev/null 2>&1 && $I conntrack --output json >/dev/null 2>&1
check "inspect-table-and-json" $?

# 2. dataplane down: change a Service meanwhile, restart.
t_kill=$(mono)
kill -KILL "$DP_PID"; wait "$DP_PID" 2>/dev/null; DP_PID=""
svc whiledown 198.18.200.30 80 198.18.2.2
ok=1
for _ in $(seq 100); do
    $I services --output json 2>/dev/null | grep -q '"default/whiledown:echo"' && { ok=0; break; }
    sleep 0.05
done
check "published-while-dataplane-down" $ok "(in the region per inspect services)"
sleep 1
start_dataplane; check "dataplane-restarted" $?
t_up=$(mono)
echo "      dataplane pause (kill -9 -> running again): $(ms_between "$t_kill" "$t_up") ms"
grep -E 're-attached .*/conntrack|started empty' "$DLOG" | sed 's/^/      /' | head -2
t2=$(ip netns exec "$NS_C" "$PY" "$WORK/probe.py" 198.18.200.30:80 10)
[ "$t2" != none ]; check "restarted-dataplane-uses-new-tables" $? "(Service added while it was down answers)"
sleep 8
touch "$WORK/STOP"
wait "$CL_PID"; CL_PID=""
out=$WORK/client.out
summarize_client "$out" "$t_up"
[ "$TOTAL" = 100 ] && [ "$AFTER" -ge 99 ]
check "connections-carry-on-after-dataplane-restart" $? "($AFTER/$TOTAL exchanged data after the restart)"
[ "$TOTAL" = 100 ] && [ "$NERR" = 0 ]
check "no-connection-reset" $? "($NERR broken${ERRS:+: $ERRS}; across the control kill and the dataplane kill)"
kill -TERM "$DP_PID" 2>/dev/null; wait "$DP_PID" 2>/dev/null; DP_PID=""
kill -TERM "$CP_PID" 2>/dev/null; wait "$CP_PID" 2>/dev/null; CP_PID=""
grep -E '^(stats|drop )' "$DLOG" | sed 's/^/      /'
if [ "$FAILS" != 0 ]; then
    echo "--- client"; grep -v ' err - ' "$out" | head -20
    echo "--- control log"; tail -20 "$CLOG"
    echo "--- dataplane log"; tail -30 "$DLOG"
fi

if [ "$FAILS" = 0 ]; then echo "split: all passed"; else echo "split: $FAILS FAILED"; fi
exit $(( FAILS > 0 ))
