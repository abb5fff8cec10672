#!/usr/bin/env bash
# `edgeplane run --kubeconfig` end to end: the Kubernetes source against the
# project's test API server (testapi/, which kubectl talks to unmodified),
# through the live AF_XDP dataplane, in network namespaces (root).
#
#   client ns c0 198.18.0.100 ── n0 198.18.0.1 [node ns: testapi on 127.0.0.1,
#   kubectl, edgeplane run -i n0 -i n1]  n1 198.18.{2,3,4}.1 ── b0 backends
#   198.18.{2,3,4}.2 (HTTP :8080, the body names the backend)
#
# kubectl apply the demo Services → traffic to web-lb's ClusterIP flows (a
# LoadBalancer address lives in status, which apply does not write); apply a slice without one
# backend → it gets no new flows; kubectl delete the Service → its frontend
# is gone from the tables. Only 198.18.0.0/15 and 127.0.0.1 inside the
# namespaces made here; all torn down on exit.
#
# Usage: tests/netns/kube-e2e.sh EDGEPLANE_BIN TESTAPI_BIN
set -euo pipefail
BIN=${1:?usage: kube-e2e.sh EDGEPLANE_BIN TESTAPI_BIN}
API_BIN=${2:?usage: kube-e2e.sh EDGEPLANE_BIN TESTAPI_BIN}
[ "$(id -u)" = 0 ] || { echo "kube-e2e.sh needs root" >&2; exit 2; }
command -v kubectl >/dev/null || { echo "kubectl is not installed" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")/../.." && pwd)
PY=$(command -v /usr/bin/python3 || command -v python3)
S=$$
C=epk-c-$S N=epk-n-$S B=epk-b-$S
WORK=$(mktemp -d /tmp/ep-kube-e2e.XXXXXX)
EP_PID="" API_PID=""
FAILS=0
cleanup() {
    set +e
    [ -n "$EP_PID" ] && kill -TERM "$EP_PID" 2>/dev/null && wait "$EP_PID" 2>/dev/null
    [ -n "$API_PID" ] && kill -INT "$API_PID" 2>/dev/null && wait "$API_PID" 2>/dev/null
    for ns in $C $N $B; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE
check() { if [ "$2" = 0 ]; then echo "ok    $1 ${3:-}"; else echo "FAIL  $1 ${3:-}"; FAILS=$((FAILS + 1)); fi; }

for ns in $C $N $B; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add c0 netns "$C" type veth peer name n0 netns "$N"
ip link add b0 netns "$B" type veth peer name n1 netns "$N"
for pair in "$C c0" "$N n0" "$N n1" "$B b0"; do
    set -- $pair
    ip netns exec "$1" ethtool -K "$2" tx off tso off gso off >/dev/null 2>&1 || true
    ip -n "$1" link set "$2" up
done
ip -n "$C" addr add 198.18.0.100/24 dev c0
for r in 198.18.1.1/32 198.18.100.0/24 198.18.200.0/24; do ip -n "$C" route add $r via 198.18.0.1; done
ip -n "$N" addr add 198.18.0.1/24 dev n0
ip -n "$N" addr add 198.18.1.1/32 dev lo
for i in 2 3 4; do
    ip -n "$N" addr add 198.18.$i.1/24 dev n1
    ip -n "$B" addr add 198.18.$i.2/24 dev b0
done
ip -n "$B" route add default via 198.18.2.1
for a in 198.18.2.2 198.18.3.2 198.18.4.2; do
    mkdir -p "$WORK/www-$a"; echo "$a" >"$WORK/www-$a/index.html"
    (cd "$WORK/www-$a" && exec ip netns exec "$B" timeout 300 "$PY" -m http.server 8080 --bind "$a" >/dev/null 2>&1) &
    disown
done
for _ in $(seq 100); do
    [ "$(ip netns exec "$B" ss -ltn | grep -c ':8080')" -ge 3 ] && break
    sleep 0.1
done

# The API server inside the node namespace (its 127.0.0.1).
ip netns exec "$N" "$API_BIN" --port 18080 --kubeconfig "$WORK/kubeconfig" >"$WORK/api.log" 2>&1 &
API_PID=$!
for _ in $(seq 100); do [ -s "$WORK/kubeconfig" ] && break; sleep 0.1; done
[ -s "$WORK/kubeconfig" ] || { echo "the test API server did not start:"; cat "$WORK/api.log"; exit 1; }
set +e
export HOME=$WORK KUBECONFIG=$WORK/kubeconfig
kc() { ip netns exec "$N" timeout 30 kubectl --cache-dir "$WORK/kcache" "$@"; }
kc apply -f "$HERE/examples/demo" >/dev/null; check "kubectl-apply" $?

ip netns exec "$N" "$BIN" run --kubeconfig "$WORK/kubeconfig" --node-name node-a --node-ip 198.18.1.1 \
    -i n0 -i n1 --workers 1 --idle-sleep-us 200 --duration 120 --tables "$WORK/state" >"$WORK/ep.log" 2>&1 &
EP_PID=$!
for _ in $(seq 200); do grep -q 'edgeplane running' "$WORK/ep.log" && break; kill -0 "$EP_PID" || break; sleep 0.1; done
grep -q 'edgeplane running' "$WORK/ep.log"; check "run-synced-from-api" $? "($(grep -o 'frontends=[0-9]*' "$WORK/ep.log" | head -1))"

cget() { ip netns exec "$C" curl -sS --max-time 3 "$@" 2>&1; }
if [ -n "${DEBUG:-}" ]; then
    ip netns exec "$B" timeout 20 tcpdump -lnni b0 -c 20 tcp >/tmp/kube-b0.txt 2>&1 &
    sleep 1
fi
: >"$WORK/a1"
for _ in $(seq 60); do cget http://198.18.200.11/ >>"$WORK/a1"; done
n=$(grep -c '^198.18.[234].2$' "$WORK/a1"); k=$(sort -u "$WORK/a1" | grep -c '^198.18')
[ "$n" = 60 ] && [ "$k" = 3 ]; check "traffic-after-apply" $? "($n/60 answered, $k backends)"

# Scale down: the slice without 198.18.4.2.
sed '/198.18.4.2/,+1d' "$HERE/examples/demo/web-lb.yaml" >"$WORK/web-lb-scaled.yaml"
gen_before=$(grep -c 'tables published' "$WORK/ep.log")
kc apply -f "$WORK/web-lb-scaled.yaml" >/dev/null
for _ in $(seq 100); do [ "$(grep -c 'tables published' "$WORK/ep.log")" -gt "$gen_before" ] && break; sleep 0.05; done
: >"$WORK/a2"
for _ in $(seq 30); do cget http://198.18.200.11/ >>"$WORK/a2"; done
n4=$(grep -c '^198.18.4.2$' "$WORK/a2"); n=$(grep -c '^198.18.[23].2$' "$WORK/a2")
[ "$n4" = 0 ] && [ "$n" = 30 ]; check "scaled-endpoint-gets-no-new-flows" $? "($n/30 to the others, $n4 to the removed one)"

# Delete the Service: its frontends leave the tables.
before=$(grep 'tables published' "$WORK/ep.log" | tail -1 | grep -o 'frontends=[0-9]*')
kc delete service web-lb >/dev/null
for _ in $(seq 100); do after=$(grep 'tables published' "$WORK/ep.log" | tail -1 | grep -o 'frontends=[0-9]*'); [ "$after" != "$before" ] && break; sleep 0.05; done
out=$(cget --max-time 1 http://198.18.200.11/)
[ "$after" != "$before" ] && [[ "$out" != 198.18.* ]]; check "deleted-service-frontend-gone" $? "($before -> $after)"

kill -TERM "$EP_PID"; wait "$EP_PID"; EP_PID=""
grep -q 'balanced true' "$WORK/ep.log"; check "clean-exit" $?
[ "$FAILS" = 0 ] || { echo "--- answers"; sort "$WORK/a1" | uniq -c | head -5; echo "--- edgeplane log"; tail -30 "$WORK/ep.log"; }
if [ "$FAILS" = 0 ]; then echo "kube-e2e: all passed"; else echo "kube-e2e: $FAILS FAILED"; fi
exit $(( FAILS > 0 ))
