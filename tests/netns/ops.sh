#!/usr/bin/env bash
# Operations end to end: `edgeplane run` in network namespaces, then its
# /metrics, /healthz and a healthCheckNodePort responder.
#
#   client ns                      node ns                                backend ns
#   c0 198.18.0.100/24 ─────  n0 198.18.0.1/24     n1 198.18.2.1/24 ─────  b0 198.18.2.2, .3, .4 /24
#   routes to 198.18.1.1,         lo 198.18.1.1 (node IP, SNAT source)     UDP echo :5353 on each
#   198.18.100.0/24 via the node  edgeplane run -i n0 -i n1 --workers 2
#
# Phases (one line each, "ok"/"FAIL"):
#  1. metrics: N UDP datagrams from N source ports to the ClusterIP
#     198.18.100.20:5353 (N new flows, each answered by a backend that names
#     itself), M datagrams to a Local Service with no local endpoint (M
#     drops, no_local_endpoints) and M to a Service with no endpoint (M
#     rejects); then /metrics is saved to $OUT/metrics.txt and
#     the client's tally (replies per backend) to $OUT/tally.txt, for
#     tests/netns.rs to check with a Prometheus parser.
#  2. /healthz and /livez answer 200 with kube-proxy's JSON.
#  3. healthCheckNodePort 32100 of the externalTrafficPolicy: Local Service
#     "lb", asked from the client ns on the node IP (the XDP program passes
#     node-IP traffic that is no frontend to the kernel): 200 with
#     localEndpoints 1 while its endpoint is on this node; 503 with 0 after
#     a manifest reload moves it to another node; 200 again when it is back;
#     closed when the Service is deleted.
#  4. A manifest that does not compile leaves the change queued: /healthz
#     turns 503 (with a reason) after --healthz-stale-after, and 200 once
#     the manifest is fixed.
#
# Usage: tests/netns/ops.sh EDGEPLANE_BIN OUTDIR [generic|native]   (root)
# Topology: tests/netns/lib.sh's. Only 198.18.0.0/15, inside namespaces made
# here, and a temp --tables dir; all deleted on exit.
set -euo pipefail

BIN=${1:?usage: ops.sh EDGEPLANE_BIN OUTDIR [mode]}
OUT=${2:?usage: ops.sh EDGEPLANE_BIN OUTDIR [mode]}
MODE=${3:-generic}
TAG=o
BACKENDS="198.18.2.2 198.18.2.3 198.18.2.4"
MAXLIFE=300
CLIENT_ROUTES="198.18.1.1/32 198.18.100.0/24"
. "$(dirname "$0")/lib.sh"
STATE=$WORK/state
N=60 M=7
mkdir -p "$OUT"

topology

# shellcheck disable=SC2086 # one backend a word
udp_echo $BACKENDS
wait_listening 5353 3 udp

# The client: N datagrams from N distinct source ports (one flow each),
# sequentially, each waiting up to 1 s for its echo; then M datagrams to
# "remote" (no local endpoint: dropped, no_local_endpoints) and M to
# "empty" (no endpoint: rejected with ICMP port unreachable). Prints "ADDR=count" per
# answering backend and "lost=K".
cat >"$WORK/udpclient.py" <<'P'
import collections, socket, sys
n, m = int(sys.argv[1]), int(sys.argv[2])
tally, lost = collections.Counter(), 0
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("198.18.0.100", 20000 + i))
    s.settimeout(1.0)
    s.sendto(b"q%d" % i, ("198.18.100.20", 5353))
    try:
        d, _ = s.recvfrom(2048)
        tally[d.split(b" ")[0].decode()] += 1
    except socket.timeout:
        lost += 1
    s.close()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(m):
    s.sendto(b"x", ("198.18.100.23", 5353))
    s.sendto(b"y", ("198.18.100.24", 5353))
for a, c in sorted(tally.items()):
    print("%s=%d" % (a, c))
print("lost=%d" % lost)
P

# LB_NODE: the node of the "lb" Service's endpoint; LB=no deletes the
# Service; BROKEN=yes appends a document that does not parse.
LB_NODE=node-a LB=yes BROKEN=no
mkdir -p "$WORK/m"
write_manifests() {
    {
        cat <<'Y'
apiVersion: v1
kind: Service
metadata: {name: udp, namespace: default}
spec:
  clusterIP: 198.18.100.20
  ports: [{name: dns, port: 5353, protocol: UDP, targetPort: 5353}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: udp-1, namespace: default, labels: {kubernetes.io/service-name: udp}}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: ["198.18.2.2"], conditions: {ready: true}}
- {addresses: ["198.18.2.3"], conditions: {ready: true}}
- {addresses: ["198.18.2.4"], conditions: {ready: true}}
Y
        cat <<'Y'
---
apiVersion: v1
kind: Service
metadata: {name: remote, namespace: default}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  clusterIP: 198.18.100.25
  ports: [{name: dns, port: 5353, protocol: UDP, targetPort: 5353, nodePort: 30053}]
status: {loadBalancer: {ingress: [{ip: 198.18.100.23}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: remote-1, namespace: default, labels: {kubernetes.io/service-name: remote}}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: ["198.18.2.3"], nodeName: node-b, conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  clusterIP: 198.18.100.24
  ports: [{name: dns, port: 5353, protocol: UDP, targetPort: 5353}]
Y
        if [ "$LB" = yes ]; then
            cat <<Y
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: shop}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  clusterIP: 198.18.100.21
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30081}]
status: {loadBalancer: {ingress: [{ip: 198.18.100.22}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-1, namespace: shop, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["198.18.2.2"], nodeName: $LB_NODE, conditions: {ready: true}}
Y
        fi
        if [ "$BROKEN" = yes ]; then printf -- '---\nkind: [unclosed\n'; fi
    } | write_atomic "$WORK/m/services.yaml"
}
write_manifests

EP_LOG=$OUT/edgeplane.log
start_ep "$MODE" --log-format json --reload-ms 100 --conntrack-size 65536 --duration 120 \
    --metrics-addr 127.0.0.1:10249 --healthz-addr 0.0.0.0:10256 --healthz-stale-after 2 || exit 1

set +e
node_get() { # url → "CODE BODY"
    rm -f "$WORK/body"
    ip netns exec "$NS_N" curl -s -m 3 -o "$WORK/body" -w '%{http_code}' "$1"; echo " $(cat "$WORK/body" 2>/dev/null)"
}
client_get() { # url → "CODE BODY"
    rm -f "$WORK/body"
    ip netns exec "$NS_C" curl -s -m 3 -o "$WORK/body" -w '%{http_code}' "$1"; echo " $(cat "$WORK/body" 2>/dev/null)"
}
rm -f "$WORK/body"

echo "== metrics"
ip netns exec "$NS_C" "$PY" "$WORK/udpclient.py" $N $M >"$OUT/tally.txt"
# Workers publish snapshots every 100 ms; the ops side reads them as often.
sleep 0.6
ip netns exec "$NS_N" curl -s -m 5 http://127.0.0.1:10249/metrics >"$OUT/metrics.txt"
echo "N=$N M=$M" >>"$OUT/tally.txt"
grep -q '^edgeplane_packets_total' "$OUT/metrics.txt" && grep -q '^# EOF' "$OUT/metrics.txt"
check "metrics-scraped" $? "($(wc -l <"$OUT/metrics.txt") lines; client: $(tr '\n' ' ' <"$OUT/tally.txt"))"

echo "== health"
h=$(node_get http://127.0.0.1:10256/healthz)
[[ "$h" == 200* ]] && [[ "$h" == *'"nodeEligible":true'* ]] && [[ "$h" == *'"lastUpdated"'* ]]
check "healthz-200" $? "($h)"
l=$(node_get http://127.0.0.1:10256/livez)
[[ "$l" == 200* ]]; check "livez-200" $? "($l)"

echo "== healthCheckNodePort"
r=""
for _ in $(seq 30); do r=$(client_get http://198.18.1.1:32100/); [[ "$r" == 200* ]] && break; sleep 0.1; done
[[ "$r" == 200* ]] && [[ "$r" == *'"localEndpoints":1'* ]] && [[ "$r" == *'"namespace":"shop","name":"lb"'* ]]
check "hc-local-endpoint-200" $? "($r)"
before=$(published); LB_NODE=node-b write_manifests; wait_published "$before"
r=$(client_get http://198.18.1.1:32100/)
[[ "$r" == 503* ]] && [[ "$r" == *'"localEndpoints":0'* ]]
check "hc-no-local-endpoint-503" $? "($r)"
before=$(published); LB_NODE=node-a write_manifests; wait_published "$before"
r=$(client_get http://198.18.1.1:32100/)
[[ "$r" == 200* ]] && [[ "$r" == *'"localEndpoints":1'* ]]
check "hc-local-endpoint-back-200" $? "($r)"
before=$(published); LB=no write_manifests; wait_published "$before"
r=""
for _ in $(seq 30); do r=$(client_get http://198.18.1.1:32100/); [[ "$r" == 000* ]] && break; sleep 0.1; done
[[ "$r" == 000* ]]; check "hc-closed-with-service" $? "($r)"

echo "== stale tables"
BROKEN=yes write_manifests
sleep 1
h=$(node_get http://127.0.0.1:10256/healthz)
[[ "$h" == 200* ]]; check "healthz-200-within-bound" $? "($h)"
h=""
for _ in $(seq 40); do h=$(node_get http://127.0.0.1:10256/healthz); [[ "$h" == 503* ]] && break; sleep 0.1; done
[[ "$h" == 503* ]] && [[ "$h" == *'"reason":"a table change has waited'* ]]
check "healthz-503-when-stale" $? "($h)"
before=$(published); write_manifests; wait_published "$before"
h=$(node_get http://127.0.0.1:10256/healthz)
[[ "$h" == 200* ]]; check "healthz-200-after-fix" $? "($h)"
m=$(ip netns exec "$NS_N" curl -s -m 5 http://127.0.0.1:10249/metrics | grep -E '^edgeplane_tables_sync_failures_total ')
[[ "$m" =~ \ [1-9] ]]; check "sync-failure-counted" $? "($m)"

stop_ep
if [ "$FAILS" = 0 ]; then echo "ops: all passed"; else echo "ops: $FAILS FAILED"; cat "$LOG" | tail -30; fi
exit $(( FAILS > 0 ))
