#!/usr/bin/env bash
# End-to-end test of `edgeplane run` with real traffic in network namespaces.
#
# Two-armed layout: clients on one side, backends on the other, the node in
# the middle with edgeplane on both of its interfaces (2 queues each, 2
# workers). Only 198.18.0.0/15 and 2001:db8::/32, all inside namespaces made
# here; everything is deleted by the EXIT trap.
#
#   client ns                       node ns                              backend ns
#   c0 198.18.0.100/24  ─────  n0 198.18.0.1/24     n1 198.18.2.1/24  ─────  b0 198.18.2.2, .3, .4 /24
#      2001:db8::100/64           2001:db8::1/64       2001:db8:2::1/64        2001:db8:2::2, ::3, ::4 /64
#      MTU 1500                   MTU 1500             MTU 1400                MTU 1400
#   routes to 198.18.100.0/24,    lo 198.18.1.1, 2001:db8:1::1                default via the node
#   198.18.200.0/24, 198.18.1.1,  (node IP = SNAT source)                     per address: http.server
#   2001:db8:{1,100,200}::/64     edgeplane run -i n0 -i n1                   :8080, UDP echo :5353
#   via the node                  "SSH" listener :2222 (kernel)
#
# Services (write_manifests): web (TCP, dual stack: ClusterIP, NodePort
# 30080, LoadBalancer), dns (UDP, the same three kinds, dual stack), empty (no
# endpoints), sticky (sessionAffinity ClientIP), dl (the backend-removal
# check), added (appears at a reload).
#
# Usage: tests/netns/e2e.sh EDGEPLANE_BIN [generic|native|all]   (root)
# Prints one line per check, each with its figures, and exits non-zero if any
# failed. DEBUG=1 captures SYN/FIN/RST and non-TCP frames on c0 and b0 and
# copies the captures to /tmp when a check fails.
set -euo pipefail

BIN=${1:?usage: e2e.sh EDGEPLANE_BIN [modes]}
MODES=${2:-all}
[ "$MODES" = all ] && MODES="generic native"
V4B="198.18.2.2 198.18.2.3 198.18.2.4"
V6B="2001:db8:2::2 2001:db8:2::3 2001:db8:2::4"
TAG=t
BACKENDS=$V4B
CLIENT_ROUTES="198.18.100.0/24 198.18.1.1/32 198.18.200.0/24"
. "$(dirname "$0")/lib.sh"

# lib.sh's IPv4 topology, plus IPv6 and the smaller MTU on the backend side
# (the large-transfer check).
topology
ip -n "$NS_N" link set n1 mtu 1400
ip -n "$NS_B" link set b0 mtu 1400
ip -n "$NS_C" addr add 2001:db8::100/64 dev c0 nodad
for r in 2001:db8:1::/64 2001:db8:100::/64 2001:db8:200::/64; do ip -n "$NS_C" route add "$r" via 2001:db8::1; done
ip -n "$NS_N" addr add 2001:db8::1/64 dev n0 nodad
ip -n "$NS_N" addr add 2001:db8:2::1/64 dev n1 nodad
ip -n "$NS_N" addr add 2001:db8:1::1/128 dev lo
ip netns exec "$NS_N" sysctl -qw net.ipv6.conf.all.forwarding=0
for a in $V6B; do ip -n "$NS_B" addr add "$a/64" dev b0 nodad; done
ip -n "$NS_B" -6 route add default via 2001:db8:2::1

# Backends: one HTTP server per address. Each serves
#   /       "backend ADDR\n" (every TCP check verifies it),
#   /big    2 MB of zeros (the reload check),
#   /dl     4 MB: "backend ADDR\n", then zeros, paced by the server at
#           about 800 KB/s (the removal check: the first line tells which
#           backend a download reached; the pacing keeps the transfer on the
#           wire for 5 s, where a client-side rate limit would let the
#           backend fill the client's socket buffer early),
#   /large  the same 50 MiB of random bytes on all three (the MTU check),
# and one UDP echo process answers "ADDR <payload>" on every address :5353.
head -c $((50 * 1024 * 1024)) /dev/urandom >"$WORK/large"
cat >"$WORK/www.py" <<'P'
import http.server, socket, sys, time
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path != "/dl":
            return super().do_GET()
        with open("dl", "rb") as f:
            data = f.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for i in range(0, len(data), 32768):
            self.wfile.write(data[i:i + 32768])
            time.sleep(0.04)
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    daemon_threads = True
S((sys.argv[1], 8080), H).serve_forever()
P
for a in $V4B $V6B; do
    mkdir -p "$WORK/www-$a"
    echo "backend $a" >"$WORK/www-$a/index.html"
    head -c 2000000 /dev/zero >"$WORK/www-$a/big"
    { echo "backend $a"; head -c $((4000000 - ${#a} - 9)) /dev/zero; } >"$WORK/www-$a/dl"
    ln "$WORK/large" "$WORK/www-$a/large"
    (cd "$WORK/www-$a" && exec ip netns exec "$NS_B" timeout 600 "$PY" "$WORK/www.py" "$a" >/dev/null 2>&1) &
    disown
done
# shellcheck disable=SC2086 # one address a word
udp_echo $V4B $V6B
# An SSH-like service of the node itself (kernel sockets, not a Service):
# a banner, then it echoes one line.
cat >"$WORK/sshlike.py" <<'P'
import socket, threading
def handle(c):
    with c:
        c.settimeout(5)
        c.sendall(b"SSH-2.0-ept-node\r\n")
        c.sendall(b"node got " + c.recv(256))
def serve(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 2222)); s.listen(64)
    while True:
        threading.Thread(target=handle, args=(s.accept()[0],), daemon=True).start()
threading.Thread(target=serve, args=(socket.AF_INET6, "2001:db8:1::1"), daemon=True).start()
serve(socket.AF_INET, "198.18.1.1")
P
ip netns exec "$NS_N" timeout 600 "$PY" "$WORK/sshlike.py" >/dev/null 2>&1 &
disown

# Clients (run in the client namespace).
# hc.py HOST PORT N PARALLEL [PATH]: N HTTP/1.0 requests, one connection
# each, PARALLEL at a time; every answer must be "200" with the body
# "backend ADDR\n". Prints "total=N ok=K ADDR=count... [err:...=count] ms=T".
cat >"$WORK/hc.py" <<'P'
import collections, concurrent.futures as cf, socket, sys, time
host, port, n, par = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
path = (sys.argv[5] if len(sys.argv) > 5 else "/").encode()
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
def one(_):
    try:
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect((host, port))
            s.sendall(b"GET " + path + b" HTTP/1.0\r\nHost: e2e\r\n\r\n")
            buf = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                buf += d
    except OSError as e:
        return "err:" + type(e).__name__
    head, _, body = buf.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.0 200") and body.startswith(b"backend ") and body.count(b"\n") == 1 and body.endswith(b"\n"):
        return body[8:-1].decode()
    return "err:bad-answer"
t0 = time.monotonic()
with cf.ThreadPoolExecutor(par) as ex:
    res = collections.Counter(ex.map(one, range(n)))
ok = sum(v for k, v in res.items() if not k.startswith("err:"))
print("total=%d ok=%d %s ms=%d" % (n, ok, " ".join("%s=%d" % kv for kv in sorted(res.items())), (time.monotonic() - t0) * 1000))
P
# udpc.py HOST PORT N: N request/response exchanges, each from a new socket
# (a new flow); the answer must come from HOST:PORT (translated back) and
# carry our payload. Prints "total=N ok=K ADDR=count... ms=T".
cat >"$WORK/udpc.py" <<'P'
import collections, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
want = socket.inet_pton(fam, host)
res = collections.Counter()
t0 = time.monotonic()
for i in range(n):
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        msg = b"ping%d" % i
        try:
            s.sendto(msg, (host, port))
            d, a = s.recvfrom(2048)
        except OSError as e:
            res["err:" + type(e).__name__] += 1
            continue
        who, _, echo = d.partition(b" ")
        if socket.inet_pton(fam, a[0]) == want and a[1] == port and echo == msg:
            res[who.decode()] += 1
        else:
            res["err:bad-answer"] += 1
ok = sum(v for k, v in res.items() if not k.startswith("err:"))
print("total=%d ok=%d %s ms=%d" % (n, ok, " ".join("%s=%d" % kv for kv in sorted(res.items())), (time.monotonic() - t0) * 1000))
P
# hc1.py HOST PORT SPORT: one request from source port SPORT; prints the
# backend's address or err:...
cat >"$WORK/hc1.py" <<'P'
import socket, sys
host, port, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
try:
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(5)
        s.bind(("", sport))
        s.connect((host, port))
        s.sendall(b"GET / HTTP/1.0\r\nHost: e2e\r\n\r\n")
        buf = b""
        while d := s.recv(65536):
            buf += d
    body = buf.partition(b"\r\n\r\n")[2]
    print(body[8:-1].decode() if body.startswith(b"backend ") else "err:bad-answer")
except OSError as e:
    print("err:" + type(e).__name__)
P
# sshc.py HOST N: N sessions with the node's SSH-like listener.
cat >"$WORK/sshc.py" <<'P'
import socket, sys
host, n = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
ok = 0
for i in range(n):
    try:
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect((host, 2222))
            f = s.makefile("rb")
            banner = f.readline()
            s.sendall(b"hello %d\n" % i)
            ok += banner == b"SSH-2.0-ept-node\r\n" and f.readline() == b"node got hello %d\n" % i
    except OSError:
        pass
print("ok=%d/%d" % (ok, n))
P

wait_listening 8080 6
wait_listening 5353 6 udp
wait_listening 2222 2 tcp "$NS_N"

# The tables: write_manifests renders these into $WORK/m/services.yaml.
WEB_READY=$V4B    # web's ready IPv4 endpoints
WEB_TERM=""       # web's terminating IPv4 endpoints
EXTRA=no          # the Service "added"
DL_EPS=$V4B       # dl's endpoints
mkdir -p "$WORK/m"
slice() { # name service addressType port-name port proto addresses...
    local name=$1 svc=$2 fam=$3 pname=$4 port=$5 proto=$6
    shift 6
    printf -- '---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n'
    printf 'metadata: {name: %s, namespace: default, labels: {kubernetes.io/service-name: %s}}\n' "$name" "$svc"
    printf 'addressType: %s\nports: [{name: %s, port: %s, protocol: %s}]\nendpoints:\n' "$fam" "$pname" "$port" "$proto"
    for a in "$@"; do printf -- '- {addresses: ["%s"], conditions: {ready: true}}\n' "$a"; done
}
write_manifests() {
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
Y
        slice web-v4 web IPv4 http 8080 TCP $WEB_READY
        for a in $WEB_TERM; do printf -- '- {addresses: [%s], conditions: {ready: false, serving: true, terminating: true}}\n' "$a"; done
        slice web-v6 web IPv6 http 8080 TCP $V6B
        cat <<'Y'
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: default}
spec:
  type: LoadBalancer
  ipFamilyPolicy: PreferDualStack
  clusterIPs: [198.18.200.12, "2001:db8:200::12"]
  selector: {app: dns}
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}]
status:
  loadBalancer:
    ingress: [{ip: 198.18.100.12}, {ip: "2001:db8:100::12"}]
Y
        slice dns-v4 dns IPv4 dns 5353 UDP $V4B
        slice dns-v6 dns IPv6 dns 5353 UDP $V6B
        cat <<'Y'
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
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: default}
spec:
  type: LoadBalancer
  ipFamilyPolicy: PreferDualStack
  clusterIPs: [198.18.200.14, "2001:db8:200::14"]
  sessionAffinity: ClientIP
  selector: {app: web}
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
status:
  loadBalancer:
    ingress: [{ip: 198.18.100.14}, {ip: "2001:db8:100::14"}]
Y
        slice sticky-v4 sticky IPv4 http 8080 TCP $V4B
        slice sticky-v6 sticky IPv6 http 8080 TCP $V6B
        cat <<'Y'
---
apiVersion: v1
kind: Service
metadata: {name: dl, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 198.18.200.15
  selector: {app: dl}
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
status: {loadBalancer: {ingress: [{ip: 198.18.100.15}]}}
Y
        slice dl-v4 dl IPv4 http 8080 TCP $DL_EPS
        if [ "$EXTRA" = yes ]; then
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
Y
            slice added-1 added IPv4 http 8080 TCP 198.18.2.3
        fi
    } | write_atomic "$WORK/m/services.yaml"
}

# From here on a failed check is counted, not fatal.
set +e

# ep MODE: `edgeplane run` (lib.sh's start_ep) dual stack, state in
# WORK/state-MODE.
ep() {
    STATE=$WORK/state-$1
    start_ep "$1" --node-ip 2001:db8:1::1 --reload-ms 100 --conntrack-size 65536 --duration 150
}
cget() { ip netns exec "$NS_C" curl -sS --max-time 3 "$@" 2>&1 || true; }
inc() { ip netns exec "$NS_C" timeout "$1" "$PY" "$WORK/$2" "${@:3}" 2>&1 || true; }
kv() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$2" | head -1; } # key line
xdp_attached() { ip -n "$NS_N" link show "$1" | grep -c 'prog/xdp' || true; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

for mode in $MODES; do
    echo "== $mode mode"
    T_MODE=$(date +%s%N)
    WEB_READY=$V4B WEB_TERM="" EXTRA=no DL_EPS=$V4B
    write_manifests
    # Empty neighbour tables: the first translated frames have no known MAC
    # and go through the kernel, which resolves them.
    ip -n "$NS_N" neigh flush all
    ep "$mode" || { check "start ($mode)" 1; continue; }
    if [ -n "${DEBUG:-}" ]; then
        ip netns exec "$NS_C" timeout 100 tcpdump -lnni c0 -w "$WORK/c0-$mode.pcap" 'not port 8080 and (tcp[tcpflags] & (tcp-syn|tcp-rst|tcp-fin) != 0 or not tcp)' >/dev/null 2>&1 &
        ip netns exec "$NS_B" timeout 100 tcpdump -lnni b0 -w "$WORK/b0-$mode.pcap" 'tcp[tcpflags] & (tcp-syn|tcp-rst|tcp-fin) != 0 or not tcp' >/dev/null 2>&1 &
        sleep 1
    fi

    # 1. Spread over three backends: N connections to the LoadBalancer IP,
    #    each answer checked, every backend within ±15% of N/3. Maglev on the
    #    flow hash puts each connection (a new random source port) on a
    #    backend as a fair three-sided die would, so the count per backend is
    #    binomial: with N = 300 a perfect balancer still leaves ±15% in about
    #    16% of runs, with N = 1200 in under 0.1% (exact multinomial sums),
    #    hence 1200 for the check rather than a wider tolerance.
    spread() { # name host port n
        local out lo hi c bad=0 figs=""
        out=$(inc 60 hc.py "$2" "$3" "$4" 8)
        lo=$(( $4 * 85 / 300 )) hi=$(( ($4 * 115 + 299) / 300 ))
        for a in ${5}; do
            c=$(kv "$a" "$out"); c=${c:-0}
            { [ "$c" -ge "$lo" ] && [ "$c" -le "$hi" ]; } || bad=1
            figs="$figs ${a##*[.:]}:$c"
        done
        [ "$(kv ok "$out")" = "$4" ] && [ "$bad" = 0 ]
        check "$1" $? "($(kv ok "$out")/$4 answered, per backend$figs, band $lo..$hi, $(kv ms "$out") ms$(grep -o 'err:[^ ]*' <<<"$out" | tr '\n' ' ' | sed 's/^/, /'))"
    }
    spread tcp-lb-ipv4-spread 198.18.100.10 80 1200 "$V4B"
    spread tcp-lb-ipv6-spread 2001:db8:100::10 80 1200 "$V6B"

    # 2. TCP and UDP to each kind of frontend, IPv4 and IPv6: every answer
    #    checked (TCP: the backend's body; UDP: from the frontend's address and
    #    port, our payload echoed), all three backends used.
    matrix() { # name client host port n backends
        local out used=0 figs=""
        out=$(inc 30 "$2" "$3" "$4" "$5" 4)
        for a in $6; do
            c=$(kv "$a" "$out"); c=${c:-0}
            [ "$c" -gt 0 ] && used=$((used + 1))
            figs="$figs ${a##*[.:]}:$c"
        done
        [ "$(kv ok "$out")" = "$5" ] && [ "$used" = 3 ]
        check "$1" $? "($(kv ok "$out")/$5 answered, per backend$figs, $(kv ms "$out") ms$(grep -o 'err:[^ ]*' <<<"$out" | tr '\n' ' ' | sed 's/^/, /'))"
    }
    matrix tcp-clusterip-ipv4 hc.py 198.18.200.10 80 24 "$V4B"
    matrix tcp-nodeport-ipv4 hc.py 198.18.1.1 30080 24 "$V4B"
    matrix tcp-lb-ipv4 hc.py 198.18.100.10 80 24 "$V4B"
    matrix tcp-clusterip-ipv6 hc.py 2001:db8:200::10 80 24 "$V6B"
    matrix tcp-nodeport-ipv6 hc.py 2001:db8:1::1 30080 24 "$V6B"
    matrix tcp-lb-ipv6 hc.py 2001:db8:100::10 80 24 "$V6B"
    matrix udp-clusterip-ipv4 udpc.py 198.18.200.12 53 24 "$V4B"
    matrix udp-nodeport-ipv4 udpc.py 198.18.1.1 30053 24 "$V4B"
    matrix udp-lb-ipv4 udpc.py 198.18.100.12 53 24 "$V4B"
    matrix udp-clusterip-ipv6 udpc.py 2001:db8:200::12 53 24 "$V6B"
    matrix udp-nodeport-ipv6 udpc.py 2001:db8:1::1 30053 24 "$V6B"
    matrix udp-lb-ipv6 udpc.py 2001:db8:100::12 53 24 "$V6B"
    # curl as a client too (the two above are hand-written).
    out=$(cget http://198.18.1.1:30080/)
    [[ "$out" == "backend 198.18.2."* ]]; check "curl-nodeport-ipv4" $? "($out)"
    out=$(cget "http://[2001:db8:200::10]/")
    [[ "$out" == "backend 2001:db8:2::"* ]]; check "curl-clusterip-ipv6" $? "($out)"

    # 3. No endpoints: refused at once.
    t0=$(date +%s%N); out=$(cget http://198.18.100.11/); ms=$(ms_since "$t0")
    [[ "$out" == *"Couldn't connect"* || "$out" == *refused* || "$out" == *nreachable* ]] && [ "$ms" -lt 2000 ]
    check "reject" $? "(${ms} ms: ${out:0:60})"

    # 4. Session affinity ClientIP: 30 connections (8 at a time) from the
    #    client all reach one backend, for each family.
    for dst in 198.18.100.14 2001:db8:100::14; do
        out=$(inc 30 hc.py "$dst" 80 30 8)
        top=$(grep -oE '[0-9a-f]+[.:][0-9a-f.:]*=[0-9]+' <<<"$out" | sort -t= -k2 -n | tail -1)
        [ "$(kv ok "$out")" = 30 ] && [ "${top#*=}" = 30 ]
        check "affinity-clientip-$([[ $dst == *:* ]] && echo ipv6 || echo ipv4)" $? "($(kv ok "$out")/30 answered, ${top%=*} got ${top#*=})"
    done

    # 5. ICMP: the VIPs answer (engine); the node's own addresses, including
    #    the node IP that NodePorts and SNAT use, answer too (kernel).
    for dst in 198.18.100.10 2001:db8:100::10 198.18.0.1 198.18.1.1 2001:db8::1 2001:db8:1::1; do
        case $dst in 198.18.100.*|2001:db8:100::*) name=ping-vip ;; *) name=ping-node-kernel ;; esac
        out=$(ip netns exec "$NS_C" ping -c 3 -W 1 -i 0.2 "$dst" 2>&1)
        [ $? = 0 ]; check "$name $dst" $? "($(grep -o '[0-9]* received' <<<"$out")/3)"
    done

    # 6. Traffic for the node itself that is not a Service still reaches the
    #    kernel: an SSH-like TCP listener on the node IP (which is also the
    #    NodePort and SNAT address, so XDP sees these frames and must pass
    #    them).
    for dst in 198.18.1.1 2001:db8:1::1; do
        out=$(inc 20 sshc.py "$dst" 5)
        [ "$out" = ok=5/5 ]; check "node-ssh-port $dst:2222" $? "($out sessions: banner + echo)"
    done

    # 7. A backend removed from the manifests while traffic runs. Service dl
    #    has all three backends. Downloads of /dl (4 MB paced by the server:
    #    5 s on the wire) are started three at a time; the first line of
    #    each names the backend it reached. The backend of the first
    #    download is the victim; batches are added until two downloads run
    #    on other backends (at most 12 downloads; each lands on another
    #    backend with probability 2/3). Then the victim is deleted from dl's
    #    EndpointSlice, and once the tables are published (every download
    #    still mid-transfer: checked) 60 new connections go to dl. Checks:
    #    none of the 60 reaches the victim, and every download on the other
    #    backends completes byte for byte. (The victim's own downloads are
    #    reported, not checked: see below.)
    rm -f "$WORK"/dl-*
    victim="" others=0 i=0 pids=()
    while [ $i -lt 12 ] && [ $others -lt 2 ]; do
        for j in $((i + 1)) $((i + 2)) $((i + 3)); do
            ip netns exec "$NS_C" curl -sS --max-time 20 -o "$WORK/dl-$j.out" \
                http://198.18.100.15/dl >"$WORK/dl-$j.meta" 2>&1 &
            pids+=($!)
        done
        for j in $((i + 1)) $((i + 2)) $((i + 3)); do
            for _ in $(seq 50); do [ "$(stat -c %s "$WORK/dl-$j.out" 2>/dev/null || echo 0)" -ge 24 ] && break; sleep 0.1; done
            b=$(head -n1 "$WORK/dl-$j.out" 2>/dev/null | sed -n 's/^backend //p')
            echo "$b" >"$WORK/dl-$j.backend"
            [ -z "$victim" ] && victim=$b
            [ -n "$b" ] && [ "$b" != "$victim" ] && others=$((others + 1))
        done
        i=$((i + 3))
    done
    ndl=$i
    before=$(published)
    DL_EPS=$(tr ' ' '\n' <<<"$V4B" | grep -vxF "${victim:-none}" | tr '\n' ' ')
    write_manifests
    wait_published "$before"; pub=$?
    midflight=0
    for j in $(seq "$ndl"); do [ "$(stat -c %s "$WORK/dl-$j.out" 2>/dev/null || echo 0)" -lt 4000000 ] && midflight=$((midflight + 1)); done
    out=$(inc 30 hc.py 198.18.100.15 80 60 8)
    nv=$(kv "$victim" "$out"); nv=${nv:-0}
    [ "$pub" = 0 ] && [ -n "$victim" ] && [ "$(kv ok "$out")" = 60 ] && [ "$nv" = 0 ]
    check "removed-backend-gets-no-new-flows" $? "(removed ${victim:-?}; 60 new: $(kv ok "$out") answered, $nv to it, $(grep -o '198[0-9.]*=[0-9]*' <<<"$out" | tr '\n' ' ')$(grep -o 'err:[^ ]*' <<<"$out" | tr '\n' ' '))"
    # The other backends' downloads end by themselves (about 5 s, at most
    # curl's 20 s). The victim's get a RST or hang: the engine answers the
    # client's next segment with a RST, but when the first packet of such a
    # flow after the reload is the backend's (data), it drops that and
    # forgets the flow, and a client that is only waiting for data sends
    # nothing that could be answered (Engine::backend_gone). They get 2 s
    # after the others, then are stopped and counted as hung.
    for j in $(seq "$ndl"); do [ "$(cat "$WORK/dl-$j.backend")" != "$victim" ] && wait "${pids[$((j - 1))]}"; done
    for _ in $(seq 20); do
        alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break; sleep 0.1
    done
    surv=0 surv_ok=0 vfig=""
    for j in $(seq "$ndl"); do
        b=$(cat "$WORK/dl-$j.backend") p=${pids[$((j - 1))]}
        if [ "$b" = "$victim" ]; then
            if kill -0 "$p" 2>/dev/null; then
                vfig="$vfig $(stat -c %s "$WORK/dl-$j.out" 2>/dev/null || echo 0)B:hung"
                kill -KILL "$p" 2>/dev/null # `ip netns exec` exec'd curl: this is curl
            else
                vfig="$vfig $(stat -c %s "$WORK/dl-$j.out" 2>/dev/null || echo 0)B:$(grep -o 'curl: ([0-9]*)' "$WORK/dl-$j.meta" | head -1 | tr -d ' ')"
            fi
            wait "$p" 2>/dev/null
        else
            surv=$((surv + 1))
            [ -n "$b" ] && cmp -s "$WORK/dl-$j.out" "$WORK/www-$b/dl" && surv_ok=$((surv_ok + 1))
        fi
    done
    [ "$others" -ge 2 ] && [ "$surv_ok" = "$surv" ] && [ "$midflight" = "$ndl" ]
    check "other-backends-keep-their-flows" $? "($surv_ok/$surv downloads on the other backends complete and intact; $midflight/$ndl mid-transfer at the reload; the removed backend's:$vfig)"
    rm -f "$WORK"/dl-*

    # 8. A 50 MiB download through the NAT with MTU 1400 on the backend side
    #    (b0, n1) and 1500 on the client side, compared byte for byte. No
    #    ICMP "fragmentation needed" is involved: the client announces MSS
    #    1460, the backend 1360 (from its 1400 MTU), and each side sends
    #    segments no larger than the smaller of its own MTU-derived MSS and
    #    the peer's, so every frame fits on n1/b0. (The worker does not
    #    compare frames with the egress MTU nor send ICMP "fragmentation
    #    needed" itself; it only translates such errors from routers.)
    #    The MSS the client's kernel settled on through the NAT is printed.
    mss=$(ip netns exec "$NS_C" timeout 5 "$PY" -c '
import socket
s = socket.create_connection(("198.18.100.10", 80), timeout=3)
print(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG))' 2>&1 | tail -1)
    t0=$(date +%s%N)
    meta=$(ip netns exec "$NS_C" curl -sS --max-time 45 -o "$WORK/large.out" -w '%{size_download}' http://198.18.100.10/large 2>&1)
    ms=$(ms_since "$t0")
    cmp -s "$WORK/large.out" "$WORK/large"; same=$?
    got=$(stat -c %s "$WORK/large.out" 2>/dev/null || echo 0)
    check "large-transfer-mtu1400" $same "($got of $(stat -c %s "$WORK/large") bytes, identical: $([ $same = 0 ] && echo yes || echo "no: ${meta:0:80}"), ${ms} ms, $(( got / 1024 * 1000 / (ms + 1) / 1024 )) MiB/s, client MSS $mss)"
    rm -f "$WORK/large.out"

    # 9. Table updates while a long download runs: backend .3 starts
    #    terminating (no new flows, open ones finish, as kube-proxy does) and
    #    a Service is added. The download (pinned to its backend by
    #    conntrack, whichever it is) finishes intact; new connections see the
    #    new tables.
    # A client source port whose flow Maglev puts on .3 (the first from
    # 40000 up: the flow hash is seeded, so the same port every run). Its
    # connection closes (the server closes first: no TIME_WAIT on the
    # client, so the port can be reused at once; the engine keeps the
    # closed flow's conntrack entry, in TIME_WAIT, for 120 s).
    reuse_port="" reuse_first=""
    for sp in $(seq 40000 40030); do
        reuse_first=$(inc 10 hc1.py 198.18.100.10 80 "$sp")
        [ "$reuse_first" = 198.18.2.3 ] && { reuse_port=$sp; break; }
    done
    ip netns exec "$NS_C" curl -sS --max-time 20 --limit-rate 800k -o "$WORK/big.out" \
        -w '%{size_download} %{remote_ip}\n' http://198.18.100.10/big >"$WORK/big.meta" 2>&1 &
    BIG=$!
    sleep 1
    before=$(published)
    WEB_READY="198.18.2.2 198.18.2.4" WEB_TERM="198.18.2.3" EXTRA=yes
    write_manifests
    wait_published "$before"; check "reload-published" $? "($(grep 'tables published' "$LOG" | tail -1 | grep -o 'generation=[0-9]* frontends=[0-9]*'))"
    out=$(inc 30 hc.py 198.18.100.10 80 30 8)
    [ "$(kv ok "$out")" = 30 ] && [ -z "$(kv 198.18.2.3 "$out")" ]
    check "terminating-endpoint-gets-no-new-flows" $? "($(kv ok "$out")/30 answered: $(grep -o '198[0-9.]*=[0-9]*\|err:[^ ]*' <<<"$out" | tr '\n' ' '))"
    # A new connection that reuses the tuple of a closed flow to .3 is a new
    # connection too: it must be balanced over the ready endpoints, not
    # follow the stale conntrack entry to the terminating backend (Linux
    # conntrack kills a TIME_WAIT/CLOSE entry on a new SYN and NATs anew).
    out=$(inc 10 hc1.py 198.18.100.10 80 "${reuse_port:-40000}")
    [ -n "$reuse_port" ] && [[ "$out" == 198.18.2.[24] ]]
    check "reused-tuple-avoids-terminating" $? "(source port ${reuse_port:-none found}: before the reload $reuse_first, after it $out)"
    out=$(cget http://198.18.100.13:8081/)
    [ "$out" = "backend 198.18.2.3" ]; check "service-added" $? "($out)"
    wait "$BIG" || true
    size=$(awk '{print $1}' "$WORK/big.meta")
    [ "$size" = 2000000 ]; check "long-download-survives-update" $? "($(head -c 80 "$WORK/big.meta"))"
    # A bad manifest keeps the last good tables.
    echo "kind: [unterminated" >"$WORK/m/broken.yaml"
    for _ in $(seq 30); do grep -q "do not compile; keeping generation" "$LOG" && break; sleep 0.1; done
    out=$(cget http://198.18.100.13:8081/)
    grep -q "do not compile; keeping generation" "$LOG" && [ "$out" = "backend 198.18.2.3" ]
    check "bad-manifest-keeps-tables" $? "($out)"
    rm -f "$WORK/m/broken.yaml"

    stop_ep
    a0=$(xdp_attached n0); a1=$(xdp_attached n1)
    [ "$a0" = 0 ] && [ "$a1" = 0 ]; check "detached-on-sigterm" $? "(programs left: n0 $a0, n1 $a1)"
    bal=$(grep -c 'balanced true' "$LOG" || true)
    [ "$bal" = 2 ]; check "umem-ledger-balanced" $? "($bal/2 workers)"
    grep -E '^(stats|worker|xdp redirect|drop)' "$LOG" | sed 's/^/      /'
    echo "   $mode mode took $(ms_since "$T_MODE") ms"
    if [ "$FAILS" != 0 ]; then
        echo "--- log"; grep -v '^xdp' "$LOG" | tail -40
        if [ -n "${DEBUG:-}" ]; then
            sleep 1; cp "$WORK"/*.pcap /tmp/ 2>/dev/null
            echo "--- captures copied to /tmp/c0-$mode.pcap /tmp/b0-$mode.pcap"
        fi
    fi
done

echo "== stale program from a crash is replaced"
WEB_READY="198.18.2.2" WEB_TERM="" EXTRA=no DL_EPS=$V4B
write_manifests
ep generic
kill -KILL "$EP_PID"; wait "$EP_PID" 2>/dev/null || true; EP_PID=""
left=$(xdp_attached n0)
# With no socket in its XSKMAP the stale program passes everything but
# Service traffic (held for the restart): the node still answers its own
# ping (fail open to the kernel).
ip netns exec "$NS_C" ping -c 1 -W 1 198.18.0.1 >/dev/null 2>&1; check "crashed-program-fails-open" $? "(left attached: $left)"
ep generic
out=$(cget http://198.18.100.10/)
stop_ep
grep -q 'replacing stale' "$LOG" && [ "$out" = "backend 198.18.2.2" ] && [ "$(xdp_attached n0)" = 0 ]
check "stale-replaced" $? "($out)"

if [ "$FAILS" = 0 ]; then echo "e2e: all passed"; else echo "e2e: $FAILS FAILED"; fi
exit $(( FAILS > 0 ))
