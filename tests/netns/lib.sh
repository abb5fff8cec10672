# Shared parts of the netns scripts (restart.sh, split.sh, ops.sh, e2e.sh,
# kube-e2e.sh, linkflap.sh, synflood.sh, kube-faults.sh, bench/soak): the
# client ns -> node ns -> backend ns topology, the EXIT trap that removes it,
# check(), line echo servers, the long-lived connection client and `edgeplane
# run` start-up. Source it after setting BIN and TAG (a short name for
# namespaces/temp dirs); only 198.18.0.0/15 is used, and everything it
# creates is removed by the EXIT trap it installs (a script with more to stop
# first sets its own trap that ends by calling lib_cleanup).
#
#   client ns                node ns                                backend ns
#   c0 198.18.0.100/24 ───── n0 198.18.0.1/24   n1 198.18.2.1/24 ───── b0 198.18.2.2.. /24
#   routes to 198.18.200.0/24  lo 198.18.1.1 (node IP, SNAT)            echo servers :8080
#   and 198.18.1.1 via node    edgeplane run -i n0 -i n1 --tables DIR   UDP echo :5353
#
# Service web: ClusterIP 198.18.200.10:80, NodePort 198.18.1.1:30080 ->
# backends :8080 (TCP). Service dns: ClusterIP 198.18.200.11:53/UDP -> :5353.
#
# Set before sourcing to change the topology (defaults in brackets):
#   BACKENDS       backend addresses on b0 ["198.18.2.2 198.18.2.3"]; n1
#                  gets the .1 of every /24 they are in
#   CLIENT_ROUTES  prefixes the client routes via the node
#                  ["198.18.200.0/24 198.18.1.1/32"]
#   QUEUES         queues per veth [2]
#   MAXLIFE        seconds the backend servers live at most [600]

: "${BIN:?set BIN before sourcing lib.sh}"
: "${TAG:?set TAG before sourcing lib.sh}"
[ "$(id -u)" = 0 ] || { echo "${0##*/} needs root" >&2; exit 2; }
PY=$(command -v /usr/bin/python3 || command -v python3)
S=$$-$((RANDOM % 10000))
NS_C=ep$TAG-c-$S NS_N=ep$TAG-n-$S NS_B=ep$TAG-b-$S
WORK=$(mktemp -d "/tmp/ep-$TAG.XXXXXX")
EP_PID=""
BG_PIDS=""
CL_PID=""
CREATED_NS=""
FAILS=0
# Backend addresses the namespaces get (a manifest may use a subset).
BACKENDS=${BACKENDS:-"198.18.2.2 198.18.2.3"}
CLIENT_ROUTES=${CLIENT_ROUTES:-"198.18.200.0/24 198.18.1.1/32"}
QUEUES=${QUEUES:-2}

lib_cleanup() {
    set +e
    for p in $BG_PIDS; do kill -9 "$p" 2>/dev/null; done
    [ -n "$EP_PID" ] && kill -TERM "$EP_PID" 2>/dev/null && wait "$EP_PID" 2>/dev/null
    # Only the namespaces this run created (never another run's).
    for ns in $CREATED_NS; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap lib_cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

check() { # name result(0 = ok) detail
    if [ "$2" = 0 ]; then echo "ok    $1 ${3:-}"; else echo "FAIL  $1 ${3:-}"; FAILS=$((FAILS + 1)); fi
}
mono() { "$PY" -c 'import time; print("%.3f" % time.monotonic())'; }

# Complete checksums and no 64 KiB super-frames: the engine updates
# checksums incrementally and XDP sees single frames.
veth_up() { # ns ifname
    ip netns exec "$1" ethtool -K "$2" tx off tso off gso off >/dev/null 2>&1 || true
    ip -n "$1" link set "$2" up
}

topology() {
    local ns q="numtxqueues $QUEUES numrxqueues $QUEUES" a r nets=""
    for ns in $NS_C $NS_N $NS_B; do
        ip netns add "$ns"
        CREATED_NS="$CREATED_NS $ns"
        ip -n "$ns" link set lo up
    done
    # shellcheck disable=SC2086 # $q is four words
    ip link add c0 netns "$NS_C" $q type veth peer name n0 netns "$NS_N" $q
    # shellcheck disable=SC2086
    ip link add b0 netns "$NS_B" $q type veth peer name n1 netns "$NS_N" $q
    veth_up "$NS_C" c0; veth_up "$NS_N" n0; veth_up "$NS_N" n1; veth_up "$NS_B" b0
    ip -n "$NS_C" addr add 198.18.0.100/24 dev c0
    for r in $CLIENT_ROUTES; do ip -n "$NS_C" route add "$r" via 198.18.0.1; done
    ip -n "$NS_N" addr add 198.18.0.1/24 dev n0
    for a in $BACKENDS; do
        case " $nets " in *" ${a%.*} "*) ;; *) nets="$nets ${a%.*}" ;; esac
    done
    for r in $nets; do ip -n "$NS_N" addr add "$r.1/24" dev n1; done
    ip -n "$NS_N" addr add 198.18.1.1/32 dev lo
    ip netns exec "$NS_N" sysctl -qw net.ipv4.ip_forward=0
    for a in $BACKENDS; do ip -n "$NS_B" addr add "$a/24" dev b0; done
    ip -n "$NS_B" route add default via 198.18.2.1
}

# wait_listening PORT COUNT [tcp|udp [NS]]: waits (at most 10 s) until COUNT
# sockets listen on PORT in NS (default: the backend ns).
wait_listening() {
    local flags=-ltn
    [ "${3:-tcp}" = udp ] && flags=-lun
    for _ in $(seq 100); do
        [ "$(ip netns exec "${4:-$NS_B}" ss "$flags" | grep -c ":$1 ")" -ge "$2" ] && return 0
        sleep 0.1
    done
    echo "servers on :$1 did not start ($2 wanted)" >&2
    return 1
}

# Line echo (TCP :8080) and datagram echo (UDP :5353) servers on every
# backend address, bounded by MAXLIFE seconds.
servers() {
    cat >"$WORK/echo.py" <<'P'
import socket, sys, threading
def handle(c):
    with c:
        try:
            f = c.makefile("rb")
            for line in f:
                c.sendall(line)
        except OSError:
            pass
def udp(a):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((a, 5353))
    while True:
        d, peer = u.recvfrom(2048)
        u.sendto(d, peer)
threading.Thread(target=udp, args=(sys.argv[1],), daemon=True).start()
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 8080)); s.listen(1024)
while True:
    threading.Thread(target=handle, args=(s.accept()[0],), daemon=True).start()
P
    local a n=0
    for a in $BACKENDS; do
        ip netns exec "$NS_B" timeout "${MAXLIFE:-600}" "$PY" "$WORK/echo.py" "$a" >/dev/null 2>&1 &
        disown
        n=$((n + 1))
    done
    wait_listening 8080 "$n"
}

# udp_echo ADDR...: one process in the backend ns answering every datagram
# to ADDR:5353 (IPv4 or IPv6) with "ADDR <payload>", bounded by MAXLIFE.
udp_echo() {
    cat >"$WORK/udpecho.py" <<'P'
import selectors, socket, sys
sel = selectors.DefaultSelector()
for a in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a, 5353))
    sel.register(s, selectors.EVENT_READ, a.encode())
while True:
    for k, _ in sel.select():
        d, peer = k.fileobj.recvfrom(2048)
        k.fileobj.sendto(k.data + b" " + d, peer)
P
    ip netns exec "$NS_B" timeout "${MAXLIFE:-600}" "$PY" "$WORK/udpecho.py" "$@" >/dev/null 2>&1 &
    disown
}

# write_atomic FILE: stdin to FILE, written elsewhere and renamed in (a
# reload never reads half a file).
write_atomic() {
    cat >"$1.tmp"
    mv "$1.tmp" "$1"
}

# endpoints_yaml BACKEND...: the endpoints list of an EndpointSlice.
endpoints_yaml() {
    local a
    for a in "$@"; do echo "- {addresses: [\"$a\"], conditions: {ready: true}}"; done
}

# web_yaml BACKEND...: Service web (ClusterIP + NodePort, TCP) and its slice.
web_yaml() {
    cat <<'Y'
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
Y
    endpoints_yaml "$@"
}

# manifest FILE BACKEND... : Services web (TCP) and dns (UDP) on those backends.
manifest() {
    local f=$1; shift
    {
        web_yaml "$@"
        cat <<'Y'
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: default}
spec:
  clusterIP: 198.18.200.11
  selector: {app: web}
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5353}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: default, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}]
endpoints:
Y
        endpoints_yaml "$@"
    } | write_atomic "$f"
}

# The long-lived connection client: N connections per target (env
# CONNS_PER_TARGET, default 50), one numbered line every ~200 ms on each,
# the echo checked. Runs until WORK/STOP exists (bounded by MAX seconds).
# Writes WORK/READY once every connection has done 3 exchanges, appends the
# CLOCK_MONOTONIC time of every echo received to WORK/echo-times, and at the
# end prints one line per connection:
#   "conn I exchanges N last_ok T err E"
# then "done N".
write_client() {
    cat >"$WORK/client.py" <<'P'
import os, selectors, socket, sys, time
work, maxs = sys.argv[1], float(sys.argv[2])
per = int(os.environ.get("CONNS_PER_TARGET", "50"))
targets = [(h, int(p)) for h, p in (t.split(":") for t in sys.argv[3:])]
sel = selectors.DefaultSelector()
conns = []
for host, port in targets:
    for i in range(per):
        s = socket.create_connection((host, port), timeout=5)
        s.setblocking(False)
        c = {"i": len(conns), "s": s, "n": 0, "seq": 0, "buf": b"", "want": None,
             "next": 0.0, "last_ok": 0.0, "err": "", "sent_at": 0.0}
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)
times = open(work + "/echo-times", "w")
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
                times.write("%.3f %d\n" % (c["last_ok"], c["i"]))
            else:
                c["err"] = "bad-echo"
            c["buf"], c["want"] = b"", None
            c["next"] = time.monotonic() + 0.2
    if not ready and all(c["n"] >= 3 for c in conns):
        ready = True
        open(work + "/READY", "w").write("%f\n" % time.monotonic())
times.close()
for c in conns:
    print("conn %d exchanges %d last_ok %.3f err %s" % (c["i"], c["n"], c["last_ok"], c["err"] or "-"))
print("done %d" % len(conns))
P
}

# start_client TIMEOUT MAX OUT TARGET...: runs the client (write_client) in
# the client ns (MAX seconds, killed after TIMEOUT), output to OUT, pid in
# CL_PID; waits (at most 10 s) for WORK/READY and fails without it.
start_client() {
    local limit=$1 max=$2 out=$3; shift 3
    rm -f "$WORK/READY" "$WORK/STOP"
    ip netns exec "$NS_C" timeout "$limit" "$PY" "$WORK/client.py" "$WORK" "$max" "$@" >"$out" 2>&1 &
    CL_PID=$!; BG_PIDS="$BG_PIDS $CL_PID"
    for _ in $(seq 200); do [ -f "$WORK/READY" ] && return 0; sleep 0.05; done
    return 1
}

# new_conns N TARGET... : N fresh TCP connections (connect, one line echoed,
# close), round-robin over the targets, each within 3 s; prints
# "new ok K of N" and the failures.
new_conns() {
    local n=$1; shift
    ip netns exec "$NS_C" timeout 120 "$PY" - "$n" "$@" <<'P'
import socket, sys, time
n = int(sys.argv[1]); targets = [(h, int(p)) for h, p in (t.split(":") for t in sys.argv[2:])]
ok, errs = 0, []
for i in range(n):
    h, p = targets[i % len(targets)]
    try:
        with socket.create_connection((h, p), timeout=3) as s:
            s.settimeout(3)
            s.sendall(b"hello %d\n" % i)
            if s.makefile("rb").readline() == b"hello %d\n" % i:
                ok += 1
            else:
                errs.append("bad-echo")
    except OSError as e:
        errs.append(type(e).__name__)
print("new ok %d of %d %s" % (ok, n, ",".join(errs)))
P
}

# wait_new_conn SECONDS TARGET: time (ms) until a fresh connection to TARGET
# succeeds, trying every 50 ms for at most SECONDS; prints "-1" if never.
wait_new_conn() {
    ip netns exec "$NS_C" "$PY" - "$@" <<'P'
import socket, sys, time
limit = float(sys.argv[1]); h, p = sys.argv[2].split(":")
t0 = time.monotonic()
while time.monotonic() - t0 < limit:
    try:
        with socket.create_connection((h, int(p)), timeout=0.5) as s:
            s.settimeout(0.5)
            s.sendall(b"x\n")
            if s.makefile("rb").readline() == b"x\n":
                print(int((time.monotonic() - t0) * 1000)); sys.exit(0)
    except OSError:
        pass
    time.sleep(0.05)
print(-1)
P
}

# wait_for_log FILE PATTERN PID [SECONDS]: waits (at most SECONDS, default
# 15) until FILE holds PATTERN, while PID lives; otherwise prints FILE to
# stderr and fails.
wait_for_log() {
    for _ in $(seq $(( ${4:-15} * 20 ))); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || break
        sleep 0.05
    done
    cat "$1" >&2
    return 1
}

RUN=0
# start_ep MODE [extra run args...]: starts `edgeplane run` in the node ns
# on WORK/m with state in $STATE; LOG is its log (EP_LOG if set, else one
# per start in WORK).
start_ep() {
    local mode=$1; shift
    RUN=$((RUN + 1)); LOG=${EP_LOG:-$WORK/ep-$RUN-$mode.log}
    ip netns exec "$NS_N" "$BIN" run --manifests "$WORK/m" --node-name node-a \
        --node-ip 198.18.1.1 -i n0 -i n1 --workers 2 --tables "$STATE" \
        --xdp-mode "$mode" --idle-sleep-us 200 \
        --frames 1024 --ring-size 512 "$@" >"$LOG" 2>&1 &
    EP_PID=$!
    wait_for_log "$LOG" 'edgeplane running' "$EP_PID"
}

stop_ep() {
    [ -n "$EP_PID" ] || return 0
    kill -TERM "$EP_PID" 2>/dev/null; wait "$EP_PID" 2>/dev/null; EP_PID=""
}

# published: how many generations LOG says were published;
# wait_published COUNT: waits (at most 5 s) until there are more than COUNT.
published() { grep -c 'tables published' "$LOG" || true; }
wait_published() {
    for _ in $(seq 50); do [ "$(published)" -gt "$1" ] && return 0; sleep 0.1; done
    return 1
}

# summarize_client FILE T_AFTER: sets TOTAL, AFTER (connections with an echo
# after T_AFTER and no error), NERR, ERRS, MIN_EX.
summarize_client() {
    local out=$1 t=$2
    TOTAL=$(grep -c '^conn ' "$out")
    AFTER=$(awk -v t="$t" '$1 == "conn" && $6 > t && $8 == "-"' "$out" | wc -l)
    ERRS=$(awk '$1 == "conn" && $8 != "-" {print $8}' "$out" | sort | uniq -c | tr -s ' ' | tr '\n' ',')
    NERR=$(awk '$1 == "conn" && $8 != "-"' "$out" | wc -l)
    MIN_EX=$(awk '$1 == "conn" {print $4}' "$out" | sort -n | head -1)
}

# client_checks MODE WHEN (after summarize_client): at least 99 of the 100
# connections exchanged data after WHEN, and none was reset or closed.
client_checks() {
    [ "$TOTAL" = 100 ] && [ "$AFTER" -ge 99 ]
    check "connections-carry-on ($1)" $? "($AFTER/$TOTAL exchanged data after $2; fewest exchanges on one connection: ${MIN_EX:-?})"
    [ "$TOTAL" = 100 ] && [ "$NERR" = 0 ]
    check "no-connection-reset ($1)" $? "($NERR broken${ERRS:+: $ERRS})"
}

# max_gap FROM TO: the longest time (ms) without an echo (any connection)
# in [FROM, TO] of WORK/echo-times (the window's ends count as echoes).
max_gap() {
    sort -n "$WORK/echo-times" | awk -v a="$1" -v b="$2" '
        BEGIN { p = a }
        $1 >= a && $1 <= b { g = $1 - p; if (g > m) m = g; p = $1 }
        END { g = b - p; if (g > m) m = g; printf "%d\n", m * 1000 }'
}

# new_conns_spread N SECONDS TARGET... : N fresh TCP connections (connect,
# one line echoed, close) spread evenly over SECONDS, round-robin over the
# targets, each within 3 s; prints one line "legit ok K of N, connect ms
# median M max X" and the failures.
new_conns_spread() {
    local n=$1 secs=$2; shift 2
    ip netns exec "$NS_C" timeout $((secs + 60)) "$PY" - "$n" "$secs" "$@" <<'P'
import socket, sys, time
n, secs = int(sys.argv[1]), float(sys.argv[2])
targets = [(h, int(p)) for h, p in (t.split(":") for t in sys.argv[3:])]
ok, errs, ms = 0, [], []
t0 = time.monotonic()
for i in range(n):
    time.sleep(max(0.0, t0 + i * secs / n - time.monotonic()))
    h, p = targets[i % len(targets)]
    a = time.monotonic()
    try:
        with socket.create_connection((h, p), timeout=3) as s:
            s.settimeout(3)
            s.sendall(b"legit %d\n" % i)
            if s.makefile("rb").readline() == b"legit %d\n" % i:
                ok += 1
                ms.append((time.monotonic() - a) * 1000)
            else:
                errs.append("bad-echo")
    except OSError as e:
        errs.append(type(e).__name__)
ms.sort()
print("legit ok %d of %d, connect+echo ms median %.1f max %.1f %s" % (
    ok, n, ms[len(ms) // 2] if ms else -1, ms[-1] if ms else -1, ",".join(errs)))
P
}

# echoes_between FROM TO: how many connections had an echo in [FROM, TO].
echoes_between() {
    awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b { c[$2] = 1 } END { n = 0; for (k in c) n++; print n }' "$WORK/echo-times"
}
