#!/usr/bin/env bash
# Restart test of `edgeplane run` in network namespaces: 100 long-lived TCP
# connections through a ClusterIP and a NodePort Service survive a `kill -9`
# of the dataplane and its restart on the same state directory.
#
# The topology is e2e.sh's (client ns -> node ns -> backend ns; only
# 198.18.0.0/15, namespaces and veths made here and deleted by the EXIT
# trap), reduced to what this test needs:
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
[ "$(id -u)" = 0 ] || { echo "restart.sh needs root" >&2; exit 2; }
PY=$(command -v /usr/bin/python3 || command -v python3)
S=$$
NS_C=epr-c-$S NS_N=epr-n-$S NS_B=epr-b-$S
WORK=$(mktemp -d /tmp/ep-restart.XXXXXX)
EP_PID=""
CL_PID=""
FAILS=0

cleanup() {
    set +e
    [ -n "$CL_PID" ] && kill -9 "$CL_PID" 2>/dev/null
    [ -n "$EP_PID" ] && kill -TERM "$EP_PID" 2>/dev/null && wait "$EP_PID" 2>/dev/null
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
for a in 198.18.2.2 198.18.2.3; do ip -n "$NS_B" addr add $a/24 dev b0; done
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
for a in 198.18.2.2 198.18.2.3; do
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

mono() { "$PY" -c 'import time; print("%.3f" % time.monotonic())'; }
RUN=0
start_ep() { # mode
    RUN=$((RUN + 1)); LOG=$WORK/ep-$RUN-$1.log
    ip netns exec "$NS_N" "$BIN" run --manifests "$WORK/m" --node-name node-a \
        --node-ip 198.18.1.1 -i n0 -i n1 --workers 2 --tables "$STATE" \
        --xdp-mode "$1" --idle-sleep-us 200 --conntrack-size 65536 \
        --frames 1024 --ring-size 512 --duration 120 >"$LOG" 2>&1 &
    EP_PID=$!
    for _ in $(seq 150); do
        grep -q 'edgeplane running' "$LOG" 2>/dev/null && return 0
        kill -0 "$EP_PID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$LOG" >&2
    return 1
}

mkdir -p "$WORK/m"
cat >"$WORK/m/web.yaml" <<'Y'
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
Y
for _ in $(seq 100); do
    [ "$(ip netns exec "$NS_B" ss -ltn | grep -c ':8080')" -ge 2 ] && break
    sleep 0.1
done

set +e
for mode in $MODES; do
    echo "== $mode mode"
    STATE=$WORK/state-$mode
    rm -f "$WORK/READY" "$WORK/STOP"
    ip -n "$NS_N" neigh flush all
    start_ep "$mode" || { check "start ($mode)" 1; continue; }
    ip netns exec "$NS_C" timeout 90 "$PY" "$WORK/client.py" "$WORK" 60 \
        198.18.200.10:80 198.18.1.1:30080 >"$WORK/client-$mode.out" 2>&1 &
    CL_PID=$!
    for _ in $(seq 200); do [ -f "$WORK/READY" ] && break; sleep 0.05; done
    [ -f "$WORK/READY" ]; check "100-connections-established ($mode)" $? "($(grep -c . "$WORK/READY" 2>/dev/null || echo 0) ready mark)"
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
    start_ep "$mode" || { check "restart ($mode)" 1; kill "$CL_PID"; continue; }
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
    total=$(grep -c '^conn ' "$out")
    after=$(awk -v t="$t_up" '$1 == "conn" && $6 > t && $8 == "-"' "$out" | wc -l)
    errs=$(awk '$1 == "conn" && $8 != "-" {print $8}' "$out" | sort | uniq -c | tr -s ' ' | tr '\n' ',')
    nerr=$(awk '$1 == "conn" && $8 != "-"' "$out" | wc -l)
    min_ex=$(awk '$1 == "conn" {print $4}' "$out" | sort -n | head -1)
    [ "$total" = 100 ] && [ "$after" -ge 99 ]
    check "connections-carry-on ($mode)" $? "($after/$total exchanged data after the restart; fewest exchanges on one connection: ${min_ex:-?})"
    [ "$total" = 100 ] && [ "$nerr" = 0 ]
    check "no-connection-reset ($mode)" $? "($nerr broken${errs:+: $errs})"
    kill -TERM "$EP_PID" 2>/dev/null; wait "$EP_PID" 2>/dev/null; EP_PID=""
    grep -E '^(stats|xdp (redirect|drop|pass_no))' "$LOG" | sed 's/^/      /'
    if [ "$FAILS" != 0 ]; then
        echo "--- client"; grep -v ' err - ' "$out" | head -20
        echo "--- log"; tail -30 "$LOG"
    fi
done

if [ "$FAILS" = 0 ]; then echo "restart: all passed"; else echo "restart: $FAILS FAILED"; fi
exit $(( FAILS > 0 ))
