#!/usr/bin/env bash
# End-to-end test of `edgeplane run` with real traffic in network namespaces.
#
# Two-armed layout: clients on one side, backends on the other, the node in
# the middle with edgeplane on both of its interfaces (2 queues each, 2
# workers). Only 198.18.0.0/15 and 2001:db8::/32, all inside namespaces made
# here; everything is deleted by the EXIT trap.
#
#   client ns                       node ns                              backend ns
#   c0 198.18.0.100/24  ─────  n0 198.18.0.1/24     n1 198.18.2.1/24  ─────  b0 198.18.2.2, .3 /24
#      2001:db8::100/64           2001:db8::1/64       2001:db8:2::1/64        2001:db8:2::2, ::3 /64
#   routes to 198.18.100.0/24,    lo 198.18.1.1, 2001:db8:1::1                default via the node
#   198.18.1.1, 2001:db8:100::/64 (node IP = SNAT source)                     http.server :8080 per address
#   via the node                  edgeplane run -i n0 -i n1                   UDP echo 198.18.2.2:5353
#
# Usage: tests/netns/e2e.sh EDGEPLANE_BIN [generic|native|all]   (root)
# Prints one line per check and exits non-zero if any failed.
set -euo pipefail

BIN=${1:?usage: e2e.sh EDGEPLANE_BIN [modes]}
MODES=${2:-all}
[ "$MODES" = all ] && MODES="generic native"
[ "$(id -u)" = 0 ] || { echo "e2e.sh needs root" >&2; exit 2; }
PY=$(command -v /usr/bin/python3 || command -v python3)
S=$$
NS_C=ept-c-$S NS_N=ept-n-$S NS_B=ept-b-$S
WORK=$(mktemp -d /tmp/ep-e2e.XXXXXX)
EP_PID=""
FAILS=0

cleanup() {
    set +e
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
    # Complete checksums and no 64 KiB super-frames: the engine updates
    # checksums incrementally and XDP sees single frames.
    ip netns exec "$1" ethtool -K "$2" tx off tso off gso off >/dev/null 2>&1 || true
    ip -n "$1" link set "$2" up
done
ip -n "$NS_C" addr add 198.18.0.100/24 dev c0
ip -n "$NS_C" addr add 2001:db8::100/64 dev c0 nodad
for r in 198.18.100.0/24 198.18.1.1/32 198.18.200.0/24; do ip -n "$NS_C" route add $r via 198.18.0.1; done
ip -n "$NS_C" route add 2001:db8:100::/64 via 2001:db8::1
ip -n "$NS_N" addr add 198.18.0.1/24 dev n0
ip -n "$NS_N" addr add 2001:db8::1/64 dev n0 nodad
ip -n "$NS_N" addr add 198.18.2.1/24 dev n1
ip -n "$NS_N" addr add 2001:db8:2::1/64 dev n1 nodad
ip -n "$NS_N" addr add 198.18.1.1/32 dev lo
ip -n "$NS_N" addr add 2001:db8:1::1/128 dev lo
ip netns exec "$NS_N" sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0
for a in 198.18.2.2/24 198.18.2.3/24; do ip -n "$NS_B" addr add $a dev b0; done
for a in 2001:db8:2::2/64 2001:db8:2::3/64; do ip -n "$NS_B" addr add $a dev b0 nodad; done
ip -n "$NS_B" route add default via 198.18.2.1
ip -n "$NS_B" -6 route add default via 2001:db8:2::1

# Backends: one HTTP server per address (the body names it), a 2 MB file for
# the long-lived connection check, one UDP echo server.
for a in 198.18.2.2 198.18.2.3 2001:db8:2::2 2001:db8:2::3; do
    mkdir -p "$WORK/www-$a"
    echo "backend $a" >"$WORK/www-$a/index.html"
    head -c 2000000 /dev/zero >"$WORK/www-$a/big"
    (cd "$WORK/www-$a" && exec ip netns exec "$NS_B" timeout 600 "$PY" -m http.server 8080 --bind "$a" >/dev/null 2>&1) &
    disown
done
ip netns exec "$NS_B" timeout 600 "$PY" -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.18.2.2", 5353))
while True:
    d, a = s.recvfrom(2048)
    s.sendto(b"echo " + d, a)
' >/dev/null 2>&1 &
disown
for _ in $(seq 100); do
    [ "$(ip netns exec "$NS_B" ss -ltn | grep -c ':8080')" -ge 4 ] && break
    sleep 0.1
done

mkdir -p "$WORK/m"
write_manifests() { # ready v4 backends ; terminating v4 backends ; extra service yes/no
    local v4="$1" term="$2" extra="$3"
    {
        cat <<'Y'
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  ipFamilyPolicy: PreferDualStack
  clusterIPs: [198.18.200.10, "2001:db8:200::10"]
  selector: {app: web}
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}]
status:
  loadBalancer:
    ingress: [{ip: 198.18.100.10}, {ip: "2001:db8:100::10"}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
Y
        for a in $v4; do printf -- '- {addresses: [%s], conditions: {ready: true}}\n' "$a"; done
        for a in $term; do printf -- '- {addresses: [%s], conditions: {ready: false, serving: true, terminating: true}}\n' "$a"; done
        cat <<'Y'
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["2001:db8:2::2"], conditions: {ready: true}}
- {addresses: ["2001:db8:2::3"], conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 198.18.200.12
  selector: {app: dns}
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5353}]
status: {loadBalancer: {ingress: [{ip: 198.18.100.12}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: default, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: [198.18.2.2], conditions: {ready: true}}
---
# No endpoints: refused at once (ICMP port unreachable from the engine).
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 198.18.200.11
  selector: {app: none}
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
status: {loadBalancer: {ingress: [{ip: 198.18.100.11}]}}
Y
        if [ "$extra" = yes ]; then
            cat <<'Y'
---
apiVersion: v1
kind: Service
metadata: {name: added, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 198.18.200.13
  selector: {app: web}
  ports: [{name: http, port: 8081, protocol: TCP, targetPort: 8080}]
status: {loadBalancer: {ingress: [{ip: 198.18.100.13}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: added-1, namespace: default, labels: {kubernetes.io/service-name: added}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.18.2.3], conditions: {ready: true}}
Y
        fi
    } >"$WORK/services.yaml.tmp"
    mv "$WORK/services.yaml.tmp" "$WORK/m/services.yaml"
}

# From here on a failed check is counted, not fatal.
set +e

RUN=0
start_ep() { # mode
    RUN=$((RUN + 1)); LOG=$WORK/ep-$RUN-$1.log
    ip netns exec "$NS_N" "$BIN" run --manifests "$WORK/m" --node-name node-a \
        --node-ip 198.18.1.1 --node-ip 2001:db8:1::1 -i n0 -i n1 --workers 2 \
        --xdp-mode "$1" --idle-sleep-us 200 --reload-ms 100 --conntrack-size 65536 \
        --frames 1024 --ring-size 512 --duration 120 >"$LOG" 2>&1 &
    EP_PID=$!
    for _ in $(seq 150); do
        grep -q 'edgeplane running' "$LOG" 2>/dev/null && return 0
        kill -0 "$EP_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$LOG" >&2
    return 1
}
stop_ep() {
    kill -TERM "$EP_PID" 2>/dev/null || true
    wait "$EP_PID" || true
    EP_PID=""
}
cget() { ip netns exec "$NS_C" curl -sS --max-time 3 "$@" 2>&1 || true; }
xdp_attached() { ip -n "$NS_N" link show "$1" | grep -c 'prog/xdp' || true; }

for mode in $MODES; do
    echo "== $mode mode"
    write_manifests "198.18.2.2 198.18.2.3" "" no
    # Empty neighbour tables: the first translated frames have no known MAC
    # and go through the kernel, which resolves them.
    ip -n "$NS_N" neigh flush all
    start_ep "$mode" || { check "start ($mode)" 1; continue; }
    if [ -n "${DEBUG:-}" ]; then
        ip netns exec "$NS_C" timeout 60 tcpdump -lnni c0 -w "$WORK/c0-$mode.pcap" 'not port 8080 and (tcp[tcpflags] & (tcp-syn|tcp-rst|tcp-fin) != 0 or not tcp)' >/dev/null 2>&1 &
        ip netns exec "$NS_B" timeout 60 tcpdump -lnni b0 -w "$WORK/b0-$mode.pcap" 'tcp[tcpflags] & (tcp-syn|tcp-rst|tcp-fin) != 0 or not tcp' >/dev/null 2>&1 &
        sleep 1
    fi

    # 1. TCP to the LoadBalancer IP: every request answered, both backends used.
    : >"$WORK/answers"
    for _ in $(seq 24); do cget http://198.18.100.10/ >>"$WORK/answers"; echo >>"$WORK/answers"; done
    n2=$(grep -c 'backend 198.18.2.2' "$WORK/answers" || true)
    n3=$(grep -c 'backend 198.18.2.3' "$WORK/answers" || true)
    [ $((n2 + n3)) = 24 ] && [ "$n2" -gt 0 ] && [ "$n3" -gt 0 ]
    check "tcp-lb-ipv4" $? "(24 requests: $n2 to .2, $n3 to .3)"

    # 2. NodePort on the node IP and the ClusterIP.
    out=$(cget http://198.18.1.1:30080/)
    [[ "$out" == "backend 198.18.2."* ]]; check "tcp-nodeport" $? "($out)"
    out=$(cget http://198.18.200.10/)
    [[ "$out" == "backend 198.18.2."* ]]; check "tcp-clusterip" $? "($out)"

    # 3. IPv6 to the LoadBalancer IP.
    : >"$WORK/answers6"
    for _ in $(seq 8); do cget "http://[2001:db8:100::10]/" >>"$WORK/answers6"; echo >>"$WORK/answers6"; done
    n6=$(grep -c 'backend 2001:db8:2::' "$WORK/answers6" || true)
    [ "$n6" = 8 ]; check "tcp-lb-ipv6" $? "($n6/8)"

    # 4. UDP.
    out=$(ip netns exec "$NS_C" timeout 5 "$PY" -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
ok = 0
for i in range(5):
    try:
        s.sendto(b"ping%d" % i, ("198.18.100.12", 53)); d, a = s.recvfrom(2048)
        ok += d == b"echo ping%d" % i and a == ("198.18.100.12", 53)
    except OSError: pass
print(ok)' 2>&1 || true)
    [ "$out" = 5 ]; check "udp" $? "($out/5 echoes from the VIP)"

    # 5. No endpoints: refused at once.
    t0=$(date +%s%N); out=$(cget http://198.18.100.11/); t1=$(date +%s%N)
    ms=$(( (t1 - t0) / 1000000 ))
    [[ "$out" == *"Couldn't connect"* || "$out" == *refused* || "$out" == *nreachable* ]] && [ "$ms" -lt 2000 ]
    check "reject" $? "(${ms} ms: ${out:0:60})"

    # 6. ICMP: the VIP answers (engine), the node's own address too (kernel).
    ip netns exec "$NS_C" ping -c 2 -W 1 -i 0.2 198.18.100.10 >/dev/null 2>&1; check "ping-vip" $?
    ip netns exec "$NS_C" ping -c 2 -W 1 -i 0.2 198.18.0.1 >/dev/null 2>&1; check "ping-node-kernel" $?

    # 7. Table updates while a long download runs: backend .3 starts
    #    terminating (no new flows, open ones finish, as kube-proxy does) and
    #    a Service is added. The download (pinned to its backend by
    #    conntrack, whichever it is) finishes intact; new connections see the
    #    new tables.
    ip netns exec "$NS_C" curl -sS --max-time 20 --limit-rate 800k -o "$WORK/big.out" \
        -w '%{size_download} %{remote_ip}\n' http://198.18.100.10/big >"$WORK/big.meta" 2>&1 &
    BIG=$!
    sleep 1
    write_manifests "198.18.2.2" "198.18.2.3" yes
    # The new tables have 12 frontends (the added Service's two).
    for _ in $(seq 50); do grep -q 'tables published.*frontends=12' "$LOG" && break; sleep 0.1; done
    grep -q 'tables published.*frontends=12' "$LOG"; check "reload-published" $?
    : >"$WORK/answers2"
    for _ in $(seq 10); do cget http://198.18.100.10/ >>"$WORK/answers2"; echo >>"$WORK/answers2"; done
    n2=$(grep -c 'backend 198.18.2.2' "$WORK/answers2" || true)
    [ "$n2" = 10 ]; check "terminating-endpoint-gets-no-new-flows" $? "($n2/10 to the ready backend$(grep -v 'backend 198.18.2.2' "$WORK/answers2" | grep . | head -2 | tr '\n' ' '))"
    out=$(cget http://198.18.100.13:8081/)
    [ "$out" = "backend 198.18.2.3" ]; check "service-added" $? "($out)"
    wait "$BIG" || true
    size=$(awk '{print $1}' "$WORK/big.meta")
    [ "$size" = 2000000 ]; check "long-download-survives-update" $? "($(head -c 80 "$WORK/big.meta"))"
    # A bad manifest keeps the last good tables.
    echo "kind: [unterminated" >"$WORK/m/broken.yaml"
    sleep 0.5
    out=$(cget http://198.18.100.13:8081/)
    grep -q "do not compile; keeping generation" "$LOG" && [ "$out" = "backend 198.18.2.3" ]
    check "bad-manifest-keeps-tables" $? "($out)"
    rm -f "$WORK/m/broken.yaml"

    stop_ep
    a0=$(xdp_attached n0); a1=$(xdp_attached n1)
    [ "$a0" = 0 ] && [ "$a1" = 0 ]; check "detached-on-sigterm" $?
    bal=$(grep -c 'balanced true' "$LOG" || true)
    [ "$bal" = 2 ]; check "umem-ledger-balanced" $? "($bal/2 workers)"
    grep -E '^(stats|worker|xdp redirect|drop)' "$LOG" | sed 's/^/      /'
    if [ "$FAILS" != 0 ]; then
        echo "--- log"; grep -v '^xdp' "$LOG" | tail -40
        if [ -n "${DEBUG:-}" ]; then
            sleep 1; cp "$WORK"/*.pcap /tmp/ 2>/dev/null
            echo "--- captures copied to /tmp/c0-$mode.pcap /tmp/b0-$mode.pcap"
        fi
    fi
done

echo "== stale program from a crash is replaced"
write_manifests "198.18.2.2" "" no
start_ep generic
kill -KILL "$EP_PID"; wait "$EP_PID" 2>/dev/null || true; EP_PID=""
left=$(xdp_attached n0)
# With no socket in its XSKMAP the stale program passes everything: the
# node still answers its own ping (fail open to the kernel).
ip netns exec "$NS_C" ping -c 1 -W 1 198.18.0.1 >/dev/null 2>&1; check "crashed-program-fails-open" $? "(left attached: $left)"
start_ep generic
out=$(cget http://198.18.100.10/)
stop_ep
grep -q 'replacing stale' "$LOG" && [ "$out" = "backend 198.18.2.2" ] && [ "$(xdp_attached n0)" = 0 ]
check "stale-replaced" $? "($out)"

if [ "$FAILS" = 0 ]; then echo "e2e: all passed"; else echo "e2e: $FAILS FAILED"; fi
exit $(( FAILS > 0 ))
