#!/usr/bin/env bash
# Faults of the Kubernetes source through the live dataplane, in network
# namespaces (root): `edgeplane run --kubeconfig` against the project's test
# API server (testapi/, a separate process driven by kubectl and by
# signals: SIGUSR1 drops every watch, SIGUSR2 expires the history and drops
# the watches, SIGHUP stops/starts it). Topology and clients:
# tests/netns/lib.sh, with the API server on the node namespace's 127.0.0.1.
#
# Services (all applied with kubectl):
#   web    ClusterIP 198.18.200.10:80 + NodePort 198.18.1.1:30080 -> :8080  unchanged
#   dns    ClusterIP 198.18.200.11:53/UDP -> :5353                          unchanged
#   term   ClusterIP 198.18.200.12:80 -> :9090 (answers name the backend)   one endpoint marked terminating
#   churn  ClusterIP 198.18.200.13:80 -> :8080                              changed after every fault
#   extra-N                                                                 created/deleted after faults
#
# Throughout: 40 long-lived TCP connections to web (20 ClusterIP, 20
# NodePort) exchange a line every ~200 ms, and a probe makes a new TCP
# connection to web and sends a datagram from a new socket to dns every
# 80 ms. Checks, in order:
#   1. terminating: 16 connections to term are open; the backend holding
#      most of them is marked `ready: false, serving: true, terminating:
#      true` -> 20/20 new connections go to the other backend, and every
#      open connection to the terminating one keeps exchanging and then
#      finishes cleanly (FIN both ways, no reset);
#   2. SIGUSR1 (watches dropped), then a change of churn -> converges, no
#      relist (the watches resume from their version);
#   3. SIGUSR2 (history expired, watches dropped: 410 Expired), then a change
#      -> converges, with a relist;
#   4. SIGHUP twice (API server restarted: every connection cut), then a
#      change -> converges;
#   5. SIGHUP, 60 s (OUTAGE_SECONDS) without an API server, SIGHUP: every
#      probe during the outage is answered, the long-lived connections carry
#      on, /healthz stays 200 and carries `sourceStale` once the outage is
#      older than --healthz-stale-after (10 s); after the return a change
#      converges and `sourceStale` goes away.
#   "Converges" means: `edgeplane inspect services` and `inspect backends`
#   (--output json, read from the table region) hold exactly the frontends
#   (IP, port, protocol, Service) and backends (address, takes new flows)
#   that `kubectl get services,endpointslices -o json` implies, compared
#   by tests/netns/kube-expect.py (whose `selftest` runs first: it must
#   find every perturbation of a sample); the state before the change must
#   differ.
#   At the end: every probe answered (TCP and UDP), 40/40 long-lived
#   connections intact (0 reset) and exchanging after the last fault.
# Printed: per fault the convergence time and relist count; the outage's
# length, probes answered during it, time to notice, time to converge after
# the return.
#
# Usage: tests/netns/kube-faults.sh EDGEPLANE_BIN TESTAPI_BIN [generic|native]
#        (default native; OUTAGE_SECONDS=N shortens the outage for trials;
#        KEEP=DIR keeps the logs, the API's state and the inspect output)
set -euo pipefail

BIN=${1:?usage: kube-faults.sh EDGEPLANE_BIN TESTAPI_BIN [generic|native]}
API_BIN=${2:?usage: kube-faults.sh EDGEPLANE_BIN TESTAPI_BIN [generic|native]}
MODE=${3:-native}
OUTAGE=${OUTAGE_SECONDS:-60}
STALE_AFTER=10
TAG=kf
BACKENDS="198.18.2.2 198.18.2.3 198.18.2.4"
MAXLIFE=400
command -v kubectl >/dev/null || { echo "kubectl is not installed" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
API_PID=""
kf_cleanup() {
    set +e
    # The API server first (lib_cleanup kills what runs in the namespaces).
    [ -n "$API_PID" ] && kill -TERM "$API_PID" 2>/dev/null && wait "$API_PID" 2>/dev/null
    lib_cleanup
}
trap kf_cleanup EXIT

topology
servers
# The term Service's backends answer every line prefixed with their address.
cat >"$WORK/whoami.py" <<'P'
import socket, sys, threading
def handle(c, me):
    with c:
        try:
            f = c.makefile("rb")
            for line in f:
                c.sendall(me + b" " + line)
        except OSError:
            pass
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9090)); s.listen(256)
while True:
    threading.Thread(target=handle, args=(s.accept()[0], sys.argv[1].encode()), daemon=True).start()
P
for a in $BACKENDS; do
    ip netns exec "$NS_B" timeout "$MAXLIFE" "$PY" "$WORK/whoami.py" "$a" >/dev/null 2>&1 &
    disown
done
for _ in $(seq 100); do
    [ "$(ip netns exec "$NS_B" ss -ltn | grep -c ':9090')" -ge 3 ] && break
    sleep 0.1
done
write_client

# --- objects -------------------------------------------------------------
Y=$WORK/y
mkdir -p "$Y"
slice() { # NAME SERVICE PORTNAME PORT PROTO ENDPOINT... (ENDPOINT: ADDR or ADDR:terminating)
    local name=$1 svc=$2 pname=$3 port=$4 proto=$5; shift 5
    cat <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: $name, namespace: default, labels: {kubernetes.io/service-name: $svc}}
addressType: IPv4
ports: [{name: $pname, port: $port, protocol: $proto}]
endpoints:
EOF
    for e in "$@"; do
        case $e in
            *:terminating) echo "- {addresses: [\"${e%:*}\"], conditions: {ready: false, serving: true, terminating: true}}" ;;
            *) echo "- {addresses: [\"$e\"], conditions: {ready: true, serving: true, terminating: false}}" ;;
        esac
    done
}
service() { # NAME CLUSTERIP PORTNAME PORT PROTO TARGETPORT [NODEPORT]
    local type=ClusterIP np=""
    [ -n "${7:-}" ] && type=NodePort np=", nodePort: $7"
    cat <<EOF
apiVersion: v1
kind: Service
metadata: {name: $1, namespace: default}
spec:
  type: $type
  clusterIP: $2
  selector: {app: $1}
  ports: [{name: $3, port: $4, protocol: $5, targetPort: $6$np}]
EOF
}
{
    cat <<'EOF'
apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses: [{type: InternalIP, address: 198.18.1.1}]
---
EOF
    service web 198.18.200.10 echo 80 TCP 8080 30080; echo ---
    slice web-1 web echo 8080 TCP 198.18.2.2 198.18.2.3; echo ---
    service dns 198.18.200.11 dns 53 UDP 5353; echo ---
    slice dns-1 dns dns 5353 UDP 198.18.2.2 198.18.2.3; echo ---
    service term 198.18.200.12 who 80 TCP 9090; echo ---
    slice term-1 term who 9090 TCP 198.18.2.2 198.18.2.3; echo ---
    service churn 198.18.200.13 echo 80 TCP 8080; echo ---
    slice churn-1 churn echo 8080 TCP 198.18.2.2
} >"$Y/base.yaml"

# The API server in the node namespace (its own 127.0.0.1).
ip netns exec "$NS_N" env TESTAPI_LOG=info "$API_BIN" --port 18080 --kubeconfig "$WORK/kubeconfig" >"$WORK/api.log" 2>&1 &
API_PID=$!
for _ in $(seq 100); do [ -s "$WORK/kubeconfig" ] && break; sleep 0.1; done
[ -s "$WORK/kubeconfig" ] || { echo "the test API server did not start:"; cat "$WORK/api.log"; exit 1; }
export HOME=$WORK KUBECONFIG=$WORK/kubeconfig
kc() { ip netns exec "$NS_N" timeout 20 kubectl --cache-dir "$WORK/kcache" "$@"; }
# api_signal SIG: signals the API server and waits for its line ("SIG...: ").
api_signal() {
    local n
    n=$(grep -c "^$1:" "$WORK/api.log" || true)
    kill "-${1#SIG}" "$API_PID"
    for _ in $(seq 100); do
        [ "$(grep -c "^$1:" "$WORK/api.log" || true)" -gt "$n" ] && { grep "^$1:" "$WORK/api.log" | tail -1; return 0; }
        sleep 0.05
    done
    echo "the API server did not answer $1" >&2
    return 1
}

set +e
out=$("$PY" "$HERE/kube-expect.py" selftest 2>&1); check "kube-expect-selftest" $? "($out)"
kc apply -f "$Y/base.yaml" >/dev/null; check "kubectl-apply" $?

STATE=$WORK/state
LOG=$WORK/ep.log
# Debug lines of the Kubernetes source and the control loop (snapshots
# published, compiles): printed if a check fails.
ip netns exec "$NS_N" env RUST_LOG="${RUST_LOG:-info,edgeplane_control::kube=debug,edgeplane::control=debug}" \
    "$BIN" run --kubeconfig "$WORK/kubeconfig" --node-name node-a \
    --node-ip 198.18.1.1 -i n0 -i n1 --workers 2 --tables "$STATE" --xdp-mode "$MODE" \
    --idle-sleep-us 200 --frames 1024 --ring-size 512 --duration 360 \
    --metrics-addr 127.0.0.1:10249 --healthz-addr 127.0.0.1:10256 \
    --healthz-stale-after "$STALE_AFTER" >"$LOG" 2>&1 &
EP_PID=$!
for _ in $(seq 300); do
    grep -q 'edgeplane running' "$LOG" && break
    kill -0 "$EP_PID" 2>/dev/null || break
    sleep 0.05
done
grep -q 'edgeplane running' "$LOG"; check "run-synced-from-api ($MODE)" $?

node_get() { ip netns exec "$NS_N" curl -s -m 3 -o /dev/stdout -w ' %{http_code}' "$1"; }
relists() {
    node_get http://127.0.0.1:10249/metrics | awk '$1 == "edgeplane_kube_watch_restarts_total" {print $2}'
}

# converge NAME BOUND: compares the tables with the API's state (fetched
# once: nothing else writes) until they match or BOUND seconds pass. Sets
# CONV_MS (-1 if never). The API's state must differ from the one of the
# previous call (a change that was not made cannot converge).
PREV_EXPECT=""
converge() {
    local name=$1 bound=$2 t0 out waited
    t0=$(mono)
    # The API's state, by kubectl (retried: right after the API server's
    # return a request may still fail; the bound covers the retries).
    until kc get services,endpointslices -A -o json >"$WORK/api.json" 2>"$WORK/kc-get.err"; do
        if [ "$("$PY" -c "print(int($(mono) - $t0))")" -ge "$bound" ]; then
            echo "      $name: kubectl get kept failing: $(tail -1 "$WORK/kc-get.err")" >&2
            CONV_MS=-1; return 1
        fi
        sleep 0.5
    done
    "$PY" "$HERE/kube-expect.py" expect "$WORK/api.json" >"$WORK/expect-$name.txt"
    if [ -n "$PREV_EXPECT" ] && cmp -s "$PREV_EXPECT" "$WORK/expect-$name.txt"; then
        echo "      $name: the API's state did not change" >&2
        CONV_MS=-1; return 1
    fi
    PREV_EXPECT=$WORK/expect-$name.txt
    CONV_MS=-1 CONV_OUT="never matched the API's state within $bound s"
    while :; do
        "$BIN" inspect services --tables "$STATE" --output json >"$WORK/svc.json" 2>/dev/null &&
            "$BIN" inspect backends --tables "$STATE" --output json >"$WORK/be.json" 2>/dev/null &&
            out=$("$PY" "$HERE/kube-expect.py" compare "$WORK/api.json" "$WORK/svc.json" "$WORK/be.json" 2>&1) &&
            { CONV_MS=$("$PY" -c "print(int(($(mono) - $T_CHANGE) * 1000))"); CONV_OUT=$out; return 0; }
        waited=$("$PY" -c "print(int($(mono) - $t0))")
        if [ "$waited" -ge "$bound" ]; then
            echo "$out" | sed 's/^/      /' >&2
            return 1
        fi
        # Every 100 ms at first, then every 500 ms: a long wait (the
        # watchers' backoff after the outage) need not load the 2 CPUs the
        # probes share.
        if [ "$waited" -lt 3 ]; then sleep 0.1; else sleep 0.5; fi
    done
}

# The initial state.
T_CHANGE=$(mono)
converge initial 10; check "initial-state-matches-api" $? "($CONV_OUT)"

# --- traffic that must not notice anything --------------------------------
cat >"$WORK/probe.py" <<'P'
# Every 80 ms: a new TCP connection to web (one line echoed) and a datagram
# from a new socket to dns (echoed). Logs "time kind ok ms" per probe until
# WORK/PSTOP exists.
import os, socket, sys, time
work = sys.argv[1]
log = open(work + "/probe-log", "w", buffering=1)
i, t0 = 0, time.monotonic()
while not os.path.exists(work + "/PSTOP") and time.monotonic() - t0 < 300:
    time.sleep(max(0.0, t0 + i * 0.08 - time.monotonic()))
    i += 1
    msg = b"probe %d\n" % i
    a = time.monotonic(); ok = 0
    try:
        with socket.create_connection(("198.18.200.10", 80), timeout=3) as s:
            s.settimeout(3); s.sendall(msg)
            ok = int(s.makefile("rb").readline() == msg)
    except OSError:
        pass
    log.write("%.3f tcp %d %.1f\n" % (a, ok, (time.monotonic() - a) * 1000))
    a = time.monotonic(); ok = 0
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(2); u.sendto(msg, ("198.18.200.11", 53))
            ok = int(u.recvfrom(2048)[0] == msg)
    except OSError:
        pass
    log.write("%.3f udp %d %.1f\n" % (a, ok, (time.monotonic() - a) * 1000))
P
# probe_tally FROM TO: "tcp A/S udp A/S" for the probes sent in [FROM, TO].
probe_tally() {
    awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b { s[$2]++; if ($3 == 1) k[$2]++ }
        END { printf "tcp %d/%d udp %d/%d", k["tcp"], s["tcp"], k["udp"], s["udp"] }' "$WORK/probe-log"
}
all_answered() { # tally: every probe answered, and some sent
    awk '{ split($2, t, "/"); split($4, u, "/"); exit !(t[1] == t[2] && u[1] == u[2] && t[2] > 0 && u[2] > 0) }' <<<"$1"
}
CONNS_PER_TARGET=20 ip netns exec "$NS_C" timeout 360 "$PY" "$WORK/client.py" "$WORK" 300 \
    198.18.200.10:80 198.18.1.1:30080 >"$WORK/client.out" 2>&1 &
CL_PID=$!; BG_PIDS="$BG_PIDS $CL_PID"
ip netns exec "$NS_C" timeout 360 "$PY" "$WORK/probe.py" "$WORK" >"$WORK/probe.out" 2>&1 &
PR_PID=$!; BG_PIDS="$BG_PIDS $PR_PID"
for _ in $(seq 200); do [ -f "$WORK/READY" ] && break; sleep 0.05; done
[ -f "$WORK/READY" ]; check "40-long-lived-connections" $?
T_TRAFFIC=$(mono)

# --- 1. an endpoint marked terminating ------------------------------------
cat >"$WORK/term.py" <<'P'
# N connections to term; each learns its backend from the first answer,
# then exchanges a line every 200 ms until WORK/TERM_FINISH, then
# half-closes and waits for the backend's FIN. WORK/TERM_MARKED holds the
# time the endpoint was marked terminating.
import os, socket, sys, time
work, n = sys.argv[1], int(sys.argv[2])
conns = []
for i in range(n):
    s = socket.create_connection(("198.18.200.12", 80), timeout=5)
    s.settimeout(3)
    f = s.makefile("rb")
    s.sendall(b"open %d\n" % i)
    conns.append({"s": s, "f": f, "b": f.readline().split(b" ")[0].decode(), "n": 0, "after": 0, "err": ""})
with open(work + "/term-backends", "w") as o:
    for c in conns:
        o.write(c["b"] + "\n")
open(work + "/TERM_READY", "w").close()
marked, seq, t0 = None, 0, time.monotonic()
while not os.path.exists(work + "/TERM_FINISH") and time.monotonic() - t0 < 120:
    if marked is None and os.path.exists(work + "/TERM_MARKED"):
        marked = float(open(work + "/TERM_MARKED").read())
    for c in conns:
        if c["err"]:
            continue
        seq += 1
        msg = b"line %d\n" % seq
        try:
            c["s"].sendall(msg)
            if c["f"].readline() != c["b"].encode() + b" " + msg:
                c["err"] = "bad-echo"
                continue
        except OSError as e:
            c["err"] = type(e).__name__
            continue
        c["n"] += 1
        if marked is not None:
            c["after"] += 1
    time.sleep(0.2)
for i, c in enumerate(conns):
    fin = "no"
    if not c["err"]:
        try:
            c["s"].shutdown(socket.SHUT_WR)
            fin = "yes" if c["f"].read() == b"" else "data"
        except OSError as e:
            c["err"] = type(e).__name__
    c["s"].close()
    print("term %d backend %s exchanges %d after-mark %d err %s finished %s" % (
        i, c["b"], c["n"], c["after"], c["err"] or "-", fin))
P
ip netns exec "$NS_C" timeout 200 "$PY" "$WORK/term.py" "$WORK" 16 >"$WORK/term.out" 2>&1 &
TM_PID=$!; BG_PIDS="$BG_PIDS $TM_PID"
for _ in $(seq 200); do [ -f "$WORK/TERM_READY" ] && break; sleep 0.05; done
[ -f "$WORK/TERM_READY" ]; check "term-connections-open" $? "($(sort "$WORK/term-backends" | uniq -c | tr -s ' ' | tr '\n' ','))"
# The backend with the most open connections becomes terminating.
X=$(sort "$WORK/term-backends" | uniq -c | sort -rn | awk 'NR == 1 {print $2}')
OTHER=198.18.2.2; [ "$X" = 198.18.2.2 ] && OTHER=198.18.2.3
ON_X=$(grep -c "^$X\$" "$WORK/term-backends")
sleep 1
slice term-1 term who 9090 TCP "$OTHER" "$X:terminating" >"$Y/term.yaml"
T_CHANGE=$(mono)
kc apply -f "$Y/term.yaml" >/dev/null
converge terminating 15; rc=$?
mono >"$WORK/TERM_MARKED.tmp"; mv "$WORK/TERM_MARKED.tmp" "$WORK/TERM_MARKED"  # whole, never half-written
check "terminating-converges" $rc "($CONV_MS ms; $CONV_OUT)"
new=$(ip netns exec "$NS_C" timeout 60 "$PY" - <<'P'
import socket, collections
got = collections.Counter()
for i in range(20):
    try:
        with socket.create_connection(("198.18.200.12", 80), timeout=3) as s:
            s.settimeout(3); s.sendall(b"new %d\n" % i)
            got[s.makefile("rb").readline().split(b" ")[0].decode()] += 1
    except OSError as e:
        got[type(e).__name__] += 1
print(" ".join("%s=%d" % kv for kv in sorted(got.items())))
P
)
[ "$new" = "$OTHER=20" ]
check "terminating-endpoint-gets-no-new-flows" $? "(20 new connections: $new; terminating $X)"
sleep 2
touch "$WORK/TERM_FINISH"
wait "$TM_PID"
t_ok=$(awk -v x="$X" '$4 == x && $10 == "-" && $12 == "yes" && $8 > 0' "$WORK/term.out" | wc -l)
t_ex=$(awk -v x="$X" '$4 == x {s += $8} END {print s + 0}' "$WORK/term.out")
t_bad=$(awk '$10 != "-" || $12 != "yes"' "$WORK/term.out" | wc -l)
[ "$ON_X" -ge 1 ] && [ "$t_ok" = "$ON_X" ] && [ "$t_bad" = 0 ]
check "open-connections-to-terminating-finish" $? "($t_ok/$ON_X on $X exchanged $t_ex lines after the mark and closed cleanly; $t_bad of 16 broken)"

# --- 2-4. watch faults, each followed by a change --------------------------
# fault NAME SIGNAL... then apply FILE: converges, relists counted.
fault() {
    local name=$1 file=$2; shift 2
    local r0 r1 line
    r0=$(relists)
    for sig in "$@"; do
        line=$(api_signal "$sig") || { check "$name" 1 "(no answer to $sig)"; return; }
        echo "      api: $line"
        sleep 1
    done
    T_CHANGE=$(mono)
    kc apply -f "$file" >/dev/null || { check "$name" 1 "(kubectl apply failed)"; return; }
    converge "$name" 40; local rc=$?
    r1=$(relists)
    RELISTS=$((${r1%.*} - ${r0%.*}))
    check "$name-converges" $rc "($CONV_MS ms after the change; relists $RELISTS; $CONV_OUT)"
    new=$(new_conns 5 198.18.200.13:80)
    [[ "$new" == "new ok 5 of 5 "* ]]; check "$name-changed-service-forwards" $? "($new)"
}
slice churn-1 churn echo 8080 TCP 198.18.2.2 198.18.2.3 198.18.2.4 >"$Y/c1.yaml"
fault watches-dropped "$Y/c1.yaml" SIGUSR1
[ "$RELISTS" = 0 ]; check "watches-dropped-resume-without-relist" $? "($RELISTS relists)"

{ slice churn-1 churn echo 8080 TCP 198.18.2.3; echo ---; service extra-1 198.18.200.14 echo 81 TCP 8080; echo ---
  slice extra-1 extra-1 echo 8080 TCP 198.18.2.4; } >"$Y/c2.yaml"
fault history-expired "$Y/c2.yaml" SIGUSR2
[ "$RELISTS" -ge 1 ]; check "history-expired-relists" $? "($RELISTS relists)"

kc delete service extra-1 >/dev/null
kc delete endpointslice extra-1 >/dev/null
slice churn-1 churn echo 8080 TCP 198.18.2.4 198.18.2.2 >"$Y/c3.yaml"
fault api-restarted "$Y/c3.yaml" SIGHUP SIGHUP

# --- 5. the API server gone for a minute -----------------------------------
echo "      API server stopped for $OUTAGE s"
gen() { "$BIN" inspect services --tables "$STATE" --output json | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["generation"])'; }
metric() { node_get http://127.0.0.1:10249/metrics | awk -v m="$1" '$1 == m {print $2}'; }
G_DOWN=$(gen)
R_DOWN=$(relists)
E_DOWN=$(metric edgeplane_kube_watch_errors_total)
T_DOWN=$(mono)
line=$(api_signal SIGHUP); echo "      api: $line"
: >"$WORK/health"
t_end=$("$PY" -c "print($T_DOWN + $OUTAGE)")
while "$PY" -c "import sys; sys.exit(0 if $(mono) < $t_end else 1)"; do
    echo "$(mono) $(node_get http://127.0.0.1:10256/healthz)" >>"$WORK/health"
    sleep 1
done
G_UP=$(gen)
E_UP=$(metric edgeplane_kube_watch_errors_total)
line=$(api_signal SIGHUP); echo "      api: $line"
T_UP=$(mono)
{ slice churn-1 churn echo 8080 TCP 198.18.2.3; echo ---; service extra-2 198.18.200.15 echo 82 TCP 8080 30082; echo ---
  slice extra-2 extra-2 echo 8080 TCP 198.18.2.2 198.18.2.4; } >"$Y/c4.yaml"
T_CHANGE=$(mono)
# kubectl apply, retried for up to 20 s: a client's first request right
# after the API server's return may fail; what is measured is edgeplane's
# convergence, from the first attempt.
APPLY_TRIES=0
until kc apply -f "$Y/c4.yaml" >/dev/null 2>"$WORK/kc-apply.err"; do
    APPLY_TRIES=$((APPLY_TRIES + 1))
    echo "      kubectl apply after the return failed ($APPLY_TRIES): $(tail -1 "$WORK/kc-apply.err")"
    [ "$APPLY_TRIES" -ge 40 ] && break
    sleep 0.5
done
# The watchers retry at most 30 s apart (the backoff cap): 60 s is ample.
converge after-outage 60; rc=$?
R_UP=$(relists)
check "after-outage-converges" $rc "($CONV_MS ms after the API server's return; relists $((${R_UP%.*} - ${R_DOWN%.*})); $CONV_OUT)"
if [ "$rc" != 0 ]; then
    # While edgeplane still runs: its source's counters and, where gdb is
    # installed, where every thread is.
    echo "--- kube metrics after the failed convergence"
    node_get http://127.0.0.1:10249/metrics | grep -E '^edgeplane_(kube|table|last|sync)' | sed 's/^/      /'
    if command -v gdb >/dev/null; then
        echo "--- edgeplane threads"
        timeout 60 gdb -p "$(pgrep -P "$EP_PID" -x edgeplane || echo "$EP_PID")" -batch -ex 'thread apply all bt 12' 2>/dev/null |
            grep -E '^(Thread|#)' | head -150
    fi
fi
new=$(new_conns 5 198.18.200.13:80 198.18.1.1:30082)
[[ "$new" == "new ok 5 of 5 "* ]]; check "after-outage-changed-service-forwards" $? "($new)"
h_after=$(node_get http://127.0.0.1:10256/healthz)

outage_ms=$("$PY" -c "print(int(($T_UP - $T_DOWN) * 1000))")
codes=$(awk '{print $NF}' "$WORK/health" | sort | uniq -c | tr -s ' ' | tr '\n' ',')
n_health=$(wc -l <"$WORK/health")
n200=$(awk '$NF == 200' "$WORK/health" | wc -l)
first_stale=$(awk '/sourceStale/ {print $1; exit}' "$WORK/health")
notice=-1; [ -n "$first_stale" ] && notice=$("$PY" -c "print(int(($first_stale - $T_DOWN) * 1000))")
stale_line=$(grep -o '"sourceStale":"[^"]*"' "$WORK/health" | tail -1)
# When the source saw the API go: the first stale answer's time minus the
# outage it reports.
seen=-1; [ -n "$first_stale" ] && seen=$(grep -m1 sourceStale "$WORK/health" |
    sed -E 's/^([0-9.]+) .*unreachable for ([0-9]+) s.*/\1 \2/' |
    "$PY" -c "import sys; t, n = sys.stdin.read().split(); print(max(0, int((float(t) - float(n) - $T_DOWN) * 1000)))")
[ "$n_health" -gt 0 ] && [ "$n200" = "$n_health" ]
check "healthz-200-throughout-outage" $? "($codes over $n_health polls)"
[ "$notice" -ge $((STALE_AFTER * 1000)) ] && [ "$notice" -le $(((STALE_AFTER + 5) * 1000)) ]
check "healthz-reports-source-stale" $? "(first after ${notice} ms, bound ${STALE_AFTER} s; last: $stale_line)"
[[ "$h_after" != *sourceStale* ]] && [[ "$h_after" == *" 200" ]]
check "healthz-fresh-after-return" $? "($h_after)"
[ "$G_DOWN" = "$G_UP" ] && [ -n "$G_UP" ]
check "tables-kept-during-outage" $? "(generation $G_DOWN at the start, $G_UP at the end; $((${E_UP%.*} - ${E_DOWN%.*})) watch errors meanwhile)"
p_out=$(probe_tally "$T_DOWN" "$T_UP")
all_answered "$p_out"; check "probes-answered-during-outage" $? "($p_out in ${outage_ms} ms)"
e_out=$(echoes_between "$("$PY" -c "print($T_UP - 5)")" "$T_UP")
[ "$e_out" = 40 ]; check "long-lived-connections-exchange-during-outage" $? "($e_out/40 exchanged in the outage's last 5 s; longest echo gap $(max_gap "$T_DOWN" "$T_UP") ms)"

# --- the end: unchanged Services lost nothing -------------------------------
sleep 2
touch "$WORK/STOP" "$WORK/PSTOP"
wait "$CL_PID" "$PR_PID"
p_all=$(probe_tally 0 1e12)
all_answered "$p_all"
check "every-probe-answered" $? "($p_all; slowest TCP $(awk '$2 == "tcp" {print $4}' "$WORK/probe-log" | sort -n | tail -1) ms)"
summarize_client "$WORK/client.out" "$T_UP"
[ "$TOTAL" = 40 ] && [ "$NERR" = 0 ] && [ "$AFTER" = 40 ]
check "long-lived-connections-intact" $? "($AFTER/$TOTAL exchanged after the outage, $NERR broken${ERRS:+: $ERRS}; fewest exchanges ${MIN_EX:-?})"
echo "      figures: outage ${outage_ms} ms; probes during it $p_out; source saw it go within ~${seen} ms (1 s resolution), /healthz sourceStale after ${notice} ms; converged ${CONV_MS} ms after the return"

stop_ep
grep -q 'balanced true' "$LOG"; check "clean-exit" $?
grep -q panicked "$LOG"; [ $? != 0 ]; check "no-panic" $?
[ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$WORK"/*.json "$WORK"/*.out "$WORK"/*-log "$WORK/health" "$WORK"/expect-* "$LOG" "$KEEP/"
if [ "$FAILS" != 0 ]; then
    echo "--- api log"; cat "$WORK/api.log"
    echo "--- health"; tail -5 "$WORK/health"
    echo "--- term"; cat "$WORK/term.out"
    echo "--- probe failures"; awk '$3 != 1' "$WORK/probe-log" | head -20
    echo "--- client"; grep -v ' err - ' "$WORK/client.out" | head -10
    echo "--- edgeplane log (the outage's repeated watch errors left out)"
    grep -v 'kube_client::client::builder: failed with error\|Kubernetes watch failed; retrying' "$LOG" | tail -120
fi
if [ "$FAILS" = 0 ]; then echo "kube-faults: all passed"; else echo "kube-faults: $FAILS FAILED"; fi
exit $(( FAILS > 0 ))
