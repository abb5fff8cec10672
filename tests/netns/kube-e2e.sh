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
command -v kubectl >/dev/null || { echo "kubectl is not installed" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")/../.." && pwd)
TAG=k
BACKENDS="198.18.2.2 198.18.3.2 198.18.4.2"
CLIENT_ROUTES="198.18.1.1/32 198.18.100.0/24 198.18.200.0/24"
QUEUES=1
MAXLIFE=300
. "$HERE/tests/netns/lib.sh"
API_PID=""
ke_cleanup() {
    set +e
    # edgeplane, then the API server (lib_cleanup kills what runs in the
    # namespaces).
    stop_ep
    [ -n "$API_PID" ] && kill -INT "$API_PID" 2>/dev/null && wait "$API_PID" 2>/dev/null
    lib_cleanup
}
trap ke_cleanup EXIT

topology
for a in $BACKENDS; do
    mkdir -p "$WORK/www-$a"; echo "$a" >"$WORK/www-$a/index.html"
    (cd "$WORK/www-$a" && exec ip netns exec "$NS_B" timeout "$MAXLIFE" "$PY" -m http.server 8080 --bind "$a" >/dev/null 2>&1) &
    disown
done
wait_listening 8080 3

# The API server inside the node namespace (its 127.0.0.1).
ip netns exec "$NS_N" "$API_BIN" --port 18080 --kubeconfig "$WORK/kubeconfig" >"$WORK/api.log" 2>&1 &
API_PID=$!
for _ in $(seq 100); do [ -s "$WORK/kubeconfig" ] && break; sleep 0.1; done
[ -s "$WORK/kubeconfig" ] || { echo "the test API server did not start:"; cat "$WORK/api.log"; exit 1; }
set +e
export HOME=$WORK KUBECONFIG=$WORK/kubeconfig
kc() { ip netns exec "$NS_N" timeout 30 kubectl --cache-dir "$WORK/kcache" "$@"; }
kc apply -f "$HERE/examples/demo" >/dev/null; check "kubectl-apply" $?

ip netns exec "$NS_N" "$BIN" run --kubeconfig "$WORK/kubeconfig" --node-name node-a --node-ip 198.18.1.1 \
    -i n0 -i n1 --workers 1 --idle-sleep-us 200 --duration 120 --tables "$WORK/state" >"$WORK/ep.log" 2>&1 &
EP_PID=$!
wait_for_log "$WORK/ep.log" 'edgeplane running' "$EP_PID" 20; check "run-synced-from-api" $? "($(grep -o 'frontends=[0-9]*' "$WORK/ep.log" | head -1))"

cget() { ip netns exec "$NS_C" curl -sS --max-time 3 "$@" 2>&1; }
if [ -n "${DEBUG:-}" ]; then
    ip netns exec "$NS_B" timeout 20 tcpdump -lnni b0 -c 20 tcp >/tmp/kube-b0.txt 2>&1 &
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

# The Kubernetes source's metrics: watch events seen, generations published.
m=$(ip netns exec "$NS_N" curl -s -m 5 http://127.0.0.1:10249/metrics)
ev=$(grep -E '^edgeplane_kube_events_total ' <<<"$m" | awk '{print $2}')
pubs=$(grep -E '^edgeplane_tables_publications_total ' <<<"$m" | awk '{print $2}')
[ "${ev:-0}" -gt 0 ] && [ "${pubs:-0}" -ge 2 ]; check "kube-metrics" $? "(events $ev, publications $pubs)"

# Delete the Service: its frontends leave the tables.
before=$(grep 'tables published' "$WORK/ep.log" | tail -1 | grep -o 'frontends=[0-9]*')
kc delete service web-lb >/dev/null
for _ in $(seq 100); do after=$(grep 'tables published' "$WORK/ep.log" | tail -1 | grep -o 'frontends=[0-9]*'); [ "$after" != "$before" ] && break; sleep 0.05; done
out=$(cget --max-time 1 http://198.18.200.11/)
[ "$after" != "$before" ] && [[ "$out" != 198.18.* ]]; check "deleted-service-frontend-gone" $? "($before -> $after)"

stop_ep
grep -q 'balanced true' "$WORK/ep.log"; check "clean-exit" $?
[ "$FAILS" = 0 ] || { echo "--- answers"; sort "$WORK/a1" | uniq -c | head -5; echo "--- edgeplane log"; tail -30 "$WORK/ep.log"; }
if [ "$FAILS" = 0 ]; then echo "kube-e2e: all passed"; else echo "kube-e2e: $FAILS FAILED"; fi
exit $(( FAILS > 0 ))
