#!/usr/bin/env bash
# `edgeplane control` and `edgeplane dataplane` as two processes over the
# table region, in network namespaces, with real TCP connections. The
# topology is restart.sh's (client ns -> node ns -> backend ns; only
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
[ "$(id -u)" = 0 ] || { echo "split.sh needs root" >&2; exit 2; }
PY=$(command -v /usr/bin/python3 || command -v python3)
S=$$
NS_C=eps-c-$S NS_N=eps-n-$S NS_B=eps-b-$S
WORK=$(mktemp -d /tmp/ep-split.XXXXXX)
STATE=$WORK/state
CP_PID=""
DP_PID=""
ED_PID=""
CL_PID=""
FAILS=0

cleanup() {
    set +e
    [ -n "$CL_PID" ] && kill -9 "$CL_PID" 2>/dev/null
    [ -n "$ED_PID" ] && kill -9 "$ED_PID" 2>/dev/null
    for p in $CP_PID $DP_PID; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    for ns in $NS_C $NS_N $NS_B; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

check() { # name condition-result(0/1) detail
    if [ "$2" = 0 ]; then echo "ok    $1 ${3:-}"; else echo "FAIL  $1 ${3:-}"; FAILS=$((FAILS + 1)); fi
}

for ns in $NS_C $NS_N $NS_B; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add c0 netns "$NS_C" numtxqueues 2 numrxqueues 2 type veth peer name n0 netns "$NS_N" numtxqueues 2 numrxqueues 2
ip link add b0 netns "$NS_B" numtxqueues 2 numrxqueues 2 type veth peer name n1 netns "$NS_N" numtxqueues 2 numrxqueues 2
for pair in "$NS_C c0" "$NS_N n0" "$NS_N n1" "$NS_B b0"; do
    set -- $pair
    ip netns exec "$1" ethtool -K "$2" tx off tso off gso off >/dev/null 2>&1 || true
    ip -n "$1" link set "$2" up
done
ip -n "$NS_C" addr add 198.18.0.100/24 dev c0
for r in 198.18.200.0/24 198.18.1.1/32; do ip -n "$NS_C" route add $r via 198.18.0.1; done
ip -n "$NS_N" addr add 198.18.0.1/24 dev n0
ip -n "$NS_N" addr add 198.18.2.1/24 dev n1
ip -n "$NS_N" addr add 198.18.1.1/32 dev lo
ip netns exec "$NS_N" sysctl -qw net.ipv4.ip_forward=0
for a in 198.18.2.2 198.18.2.3 198.18.2.4; do ip -n "$NS_B" addr add $a/24 dev b0; done
ip -n "$NS_B" route add default via 198.18.2.1

# Backends: a line echo server per address.
cat >"$WORK/echo.py" <<'P'
import socket, sys, threading
def handle(c):
    with c:
        f = c.makefile("rb")
        for line in f:
            c.sendall(line)
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 8080)); s.listen(256)
while True:
    threading.Thread(target=handle, args=(s.accept()[0],), daemon=True).start()
P
for a in 198.18.2.2 198.18.2.3 198.18.2.4; do
    ip netns exec "$NS_B" timeout 300 "$PY" "$WORK/echo.py" "$a" >/dev/null 2>&1 &
    disown
done

# The client: N connections per target, one line every ~200 ms on each, the
# echo checked. Runs until the file STOP exists (bounded by MAX seconds).
# Writes READY once every connection has done 3 exchanges, then at the end
# one line per connection: "conn I exchanges N last_ok T err E" (T:
# CLOCK_MONOTONIC seconds of the last echo received), then a summary.
cat >"$WORK/client.py" <<'P'
import os, selectors, socket, sys, time
work, maxs = sys.argv[1], float(sys.argv[2])
targets = [(h, int(p)) for h, p in (t.split(":") for t in sys.argv[3:])]
sel = selectors.DefaultSelector()
conns = []
for host, port in targets:
    for i in range(50):
        s = socket.create_connection((host, port), timeout=5)
        s.setblocking(False)
        c = {"i": len(conns), "s": s, "n": 0, "seq": 0, "buf": b"", "want": None,
             "next": 0.0, "last_ok": 0.0, "err": "", "sent_at": 0.0}
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)
t_end = time.monotonic() + maxs
ready = False
while time.monotonic() < t_end and not os.path.exists(work + "/STOP"):
    now = time.monotonic()
    for c in conns:
        if c["err"] or c["want"] is not None or now < c["next"]:
            continue
        c["seq"] += 1
        msg = b"conn %d seq %d\n" % (c["i"], c["seq"])
        try:
            c["s"].sendall(msg)
        except BlockingIOError:
            continue
        except OSError as e:
            c["err"] = type(e).__name__
            continue
        c["want"], c["sent_at"] = msg, now
    for key, _ in sel.select(timeout=0.02):
        c = key.data
        try:
            d = c["s"].recv(4096)
        except BlockingIOError:
            continue
        except OSError as e:
            c["err"] = c["err"] or type(e).__name__
            sel.unregister(c["s"])
            continue
        if not d:
            c["err"] = c["err"] or "EOF"
            sel.unregister(c["s"])
            continue
        c["buf"] += d
        if c["want"] is not None and len(c["buf"]) >= len(c["want"]):
            if c["buf"] == c["want"]:
                c["n"] += 1
                c["last_ok"] = time.monotonic()
            else:
                c["err"] = "bad-echo"
            c["buf"], c["want"] = b"", None
            c["next"] = time.monotonic() + 0.2
    if not ready and all(c["n"] >= 3 for c in conns):
        ready = True
        open(work + "/READY", "w").write("%f\n" % time.monotonic())
for c in conns:
    print("conn %d exchanges %d last_ok %.3f err %s" % (c["i"], c["n"], c["last_ok"], c["err"] or "-"))
print("done %d" % len(conns))
P


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

mono() { "$PY" -c 'import time; print("%.3f" % time.monotonic())'; }
ms_between() { "$PY" -c "print(int((float('$2') - float('$1')) * 1000))"; }
RUN=0
start_control() {
    RUN=$((RUN + 1)); CLOG=$WORK/control-$RUN.log
    "$BIN" control --manifests "$WORK/m" --node-name node-a --node-ip 198.18.1.1 \
        --tables "$STATE" --reload-ms 50 --duration 150 >"$CLOG" 2>&1 &
    CP_PID=$!
    for _ in $(seq 100); do
        grep -q 'tables published' "$CLOG" 2>/dev/null && return 0
        kill -0 "$CP_PID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$CLOG" >&2
    return 1
}
start_dataplane() {
    RUN=$((RUN + 1)); DLOG=$WORK/dataplane-$RUN.log
    ip netns exec "$NS_N" "$BIN" dataplane -i n0 -i n1 --workers 2 --tables "$STATE" \
        --xdp-mode "$MODE" --idle-sleep-us 200 --conntrack-size 65536 \
        --frames 1024 --ring-size 512 --duration 150 --wait-tables 10 >"$DLOG" 2>&1 &
    DP_PID=$!
    for _ in $(seq 150); do
        grep -q 'edgeplane running' "$DLOG" 2>/dev/null && return 0
        kill -0 "$DP_PID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$DLOG" >&2
    return 1
}

# Manifests are written elsewhere and renamed in: control never reads half a file.
put() { # name content-on-stdin
    cat >"$WORK/tmp.yaml"; mv "$WORK/tmp.yaml" "$WORK/m/$1.yaml"
}
web() { # extra endpoint line or ""
    put web <<Y
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 198.18.200.10
  selector: {app: web}
  ports: [{name: echo, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: echo, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["198.18.2.2"], conditions: {ready: true}}
- {addresses: ["198.18.2.3"], conditions: {ready: true}}
$1
Y
}
svc() { # name clusterIP port backend
    put "$1" <<Y
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
- {addresses: ["$4"], conditions: {ready: true}}
Y
}

mkdir -p "$WORK/m"
web ""
svc other 198.18.200.11 81 198.18.2.4
for _ in $(seq 100); do
    [ "$(ip netns exec "$NS_B" ss -ltn | grep -c ':8080')" -ge 3 ] && break
    sleep 0.1
done

set +e
echo "== $MODE mode"
ip -n "$NS_N" neigh flush all
start_control || { check "control-start" 1; exit 1; }
start_dataplane || { check "dataplane-start" 1; exit 1; }
check "two-processes-running" 0 "(control pid $CP_PID, dataplane pid $DP_PID)"
ip netns exec "$NS_C" timeout 120 "$PY" "$WORK/client.py" "$WORK" 90 \
    198.18.200.10:80 198.18.1.1:30080 >"$WORK/client.out" 2>&1 &
CL_PID=$!
for _ in $(seq 200); do [ -f "$WORK/READY" ] && break; sleep 0.05; done
[ -f "$WORK/READY" ]; check "100-connections-established" $?

# 1. control-kill under manifest edits.
(
    i=0
    end=$(( $(date +%s) + 8 ))
    while [ "$(date +%s)" -lt "$end" ]; do
        i=$((i + 1))
        if [ $((i % 2)) = 0 ]; then
            web '- {addresses: ["198.18.2.4"], conditions: {ready: true}}'
            svc other 198.18.200.11 81 198.18.2.4
        else
            web ""
            svc other 198.18.200.11 82 198.18.2.4
        fi
        sleep 0.25
    done
) &
ED_PID=$!
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
total=$(grep -c '^conn ' "$out")
after=$(awk -v t="$t_up" '$1 == "conn" && $6 > t && $8 == "-"' "$out" | wc -l)
nerr=$(awk '$1 == "conn" && $8 != "-"' "$out" | wc -l)
errs=$(awk '$1 == "conn" && $8 != "-" {print $8}' "$out" | sort | uniq -c | tr -s ' ' | tr '\n' ',')
[ "$total" = 100 ] && [ "$after" -ge 99 ]
check "connections-carry-on-after-dataplane-restart" $? "($after/$total exchanged data after the restart)"
[ "$total" = 100 ] && [ "$nerr" = 0 ]
check "no-connection-reset" $? "($nerr broken${errs:+: $errs}; across the control kill and the dataplane kill)"
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
