#!/usr/bin/env python3
"""bench/kube-latency's helper: address plan, API loader, UDP responder, and
the driver that times `kubectl apply` → first packet through the new backend.

Subcommands (bench/kube-latency runs each in the right namespace):

  kl.py addrs    SERVICES CHANGES       backend addresses, one per line
  kl.py load     URL SERVICES           POST Node, Services, EndpointSlices
  kl.py respond  SERVICES CHANGES READY UDP responder on every probed backend
  kl.py drive    ...                    the measured loop (see `drive -h`)

Address plan (only 198.18.0.0/15):
  ClusterIP of Service i        198.18.128.0/18 + i        (i < 16384), UDP :80
  endpoint j of Service i       198.19.0.0/16 + (i % 6553) * 10 + j,
                                UDP port 8080 + i // 6553  (every pair distinct)
  new endpoint j of change k    198.18.64.0/18 + k * 10 + j, the Service's port
Change k rewrites the EndpointSlice of Service changed(k) so that all 10 of
its endpoints are new ones: every new flow must then go to a new backend,
whatever Maglev picks. Only the changed Services' old and new endpoints
answer (the responder binds each and answers with its own address).
"""

import argparse
import calendar
import collections
import ctypes
import http.client
import ipaddress
import json
import os
import re
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time

ENDPOINTS = 10
PER_BLOCK = 65536 // ENDPOINTS  # Services per port of 198.19.0.0/16
MAX_SERVICES = 16384
MAX_CHANGES = 16384 // ENDPOINTS
CLIENT = "198.18.0.100"
SERVICE_PORT = 80
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def ip_add(base, n):
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address(base)) + n))


def cluster_ip(i):
    return ip_add("198.18.128.0", i)


def endpoint(i, j):
    return ip_add("198.19.0.0", (i % PER_BLOCK) * ENDPOINTS + j), 8080 + i // PER_BLOCK


def new_endpoint(i, k, j):
    return ip_add("198.18.64.0", k * ENDPOINTS + j), endpoint(i, 0)[1]


def changed(k, services, changes):
    """The Service change k rewrites (spread over all of them, distinct)."""
    return k * services // changes


def check_sizes(services, changes):
    if not 1 <= services <= MAX_SERVICES:
        sys.exit("--services must be 1..%d (the ClusterIP range)" % MAX_SERVICES)
    if not 1 <= changes <= min(services, MAX_CHANGES):
        sys.exit("--changes must be 1..min(SERVICES, %d)" % MAX_CHANGES)


def name(i):
    return "svc-%05d" % i


def service(i):
    port = endpoint(i, 0)[1]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name(i), "namespace": "default"},
        "spec": {
            "clusterIP": cluster_ip(i),
            "selector": {"app": "a%d" % i},
            "ports": [{"name": "p", "port": SERVICE_PORT, "protocol": "UDP", "targetPort": port}],
        },
    }


def endpoint_slice(i, addrs):
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name(i) + "-1",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": name(i)},
        },
        "addressType": "IPv4",
        "ports": [{"name": "p", "protocol": "UDP", "port": endpoint(i, 0)[1]}],
        "endpoints": [
            {"addresses": [a], "conditions": {"ready": True}, "nodeName": "node-b"} for a in addrs
        ],
    }


def applied(obj):
    """`obj` as `kubectl apply` would have created it: with its own
    last-applied-configuration annotation (so a later apply computes its
    three-way patch as it would in a cluster)."""
    ann = json.dumps(obj, separators=(",", ":"), sort_keys=True) + "\n"
    out = json.loads(json.dumps(obj))
    out["metadata"].setdefault("annotations", {})[LAST_APPLIED] = ann
    return out


def node():
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-a", "labels": {"kubernetes.io/hostname": "node-a"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.18.1.1"}]},
    }


def probed_backends(services, changes):
    """(address, port, role) of every backend that answers."""
    out = []
    for k in range(changes):
        i = changed(k, services, changes)
        for j in range(ENDPOINTS):
            out.append(endpoint(i, j) + ("old",))
            out.append(new_endpoint(i, k, j) + ("new",))
    return out


# ---------------------------------------------------------------- addrs


def cmd_addrs(a):
    check_sizes(a.services, a.changes)
    for addr in sorted({b[0] for b in probed_backends(a.services, a.changes)}):
        print(addr)


# ---------------------------------------------------------------- load


def cmd_load(a):
    """POSTs the Node, SERVICES Services and their slices over a few
    keep-alive connections; prints the time it took."""
    check_sizes(a.services, 1)
    url = a.url.removeprefix("http://").rstrip("/")
    host, port = url.split(":")
    work = [("/api/v1/nodes", node())]
    for i in range(a.services):
        work.append(("/api/v1/namespaces/default/services", applied(service(i))))
        addrs = [endpoint(i, j)[0] for j in range(ENDPOINTS)]
        work.append(
            ("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", applied(endpoint_slice(i, addrs)))
        )
    errors = []
    lock = threading.Lock()
    nxt = [0]

    def worker():
        c = http.client.HTTPConnection(host, int(port), timeout=30)
        while True:
            with lock:
                if nxt[0] >= len(work) or errors:
                    return
                path, obj = work[nxt[0]]
                nxt[0] += 1
            body = json.dumps(obj).encode()
            c.request("POST", path, body, {"Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
            if r.status != 201:
                with lock:
                    errors.append("POST %s %s: %d %s" % (path, obj["metadata"]["name"], r.status, data[:300]))
                return

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(a.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    if errors:
        sys.exit("loading failed: " + errors[0])
    print(
        "loaded %d objects (%d Services, %d EndpointSlices x %d endpoints, 1 Node) in %.1f s (%.0f objects/s, %d connections)"
        % (len(work), a.services, a.services, ENDPOINTS, took, len(work) / took, a.connections)
    )


# ---------------------------------------------------------------- respond


def cmd_respond(a):
    """Binds a UDP socket on every probed backend (old and new endpoints of
    the changed Services); each answers a datagram with "ADDR ROLE PAYLOAD"."""
    check_sizes(a.services, a.changes)
    backends = probed_backends(a.services, a.changes)
    raise_nofile(len(backends) + 64)
    sel = selectors.DefaultSelector()
    for addr, port, role in backends:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, ("%s %s " % (addr, role)).encode())
    with open(a.ready, "w") as f:
        f.write("%d\n" % len(backends))
    t_end = time.monotonic() + a.max_seconds
    while time.monotonic() < t_end:
        for key, _ in sel.select(timeout=1.0):
            for _ in range(64):
                try:
                    d, peer = key.fileobj.recvfrom(2048)
                except BlockingIOError:
                    break
                try:
                    key.fileobj.sendto(key.data + d, peer)
                except OSError:
                    pass


# ---------------------------------------------------------------- drive


def pct(v, p):
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, round((len(v) - 1) * p))]


def parse_rfc3339(s):
    """'2026-11-23T15:04:05.123456789Z' → Unix seconds (float)."""
    m = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z$", s)
    if not m:
        return None
    y, mo, d, h, mi, se = (int(x) for x in m.groups()[:6])
    frac = float("0." + m.group(7)) if m.group(7) else 0.0
    return calendar.timegm((y, mo, d, h, mi, se)) + frac


KLOG = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+)\s")


def klog_time(line, year):
    """The time of a klog line (kubectl runs with TZ=UTC)."""
    m = KLOG.match(line)
    if not m:
        return None
    mo, d, h, mi, se = (int(x) for x in m.groups()[:5])
    return calendar.timegm((year, mo, d, h, mi, se)) + float("0." + m.group(6))


def patch_answered(stderr, year):
    """Wall time kubectl logged the answer to its PATCH (-v=6), and its
    status line, or (None, None)."""
    for line in stderr.splitlines():
        if "PATCH" in line and ("200 OK" in line or 'status="200 OK"' in line):
            return klog_time(line, year), line
    return None, None


def ep_log_events(path):
    """(unix time, message, fields) of every JSON line of the edgeplane log."""
    out = []
    try:
        f = open(path)
    except OSError:
        return out
    with f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                o = json.loads(line)
            except ValueError:
                continue
            t = parse_rfc3339(o.get("timestamp", ""))
            fields = o.get("fields", {})
            if t is not None:
                out.append((t, fields.get("message", ""), fields))
    return out


class NetnsSpawner:
    """Runs a command in another network namespace: setns(2) in the child
    before exec, so the child's start costs what a plain fork+exec costs
    (`ip netns exec` would add its own mount-namespace work). Falls back to
    `ip netns exec` if setns is not available."""

    CLONE_NEWNET = 0x40000000

    def __init__(self, ns):
        self.ns = ns
        self.fd = os.open("/run/netns/" + ns, os.O_RDONLY)
        libc = ctypes.CDLL(None, use_errno=True)
        self.setns = getattr(libc, "setns", None)

    def popen(self, argv, **kw):
        if self.setns is None:
            return subprocess.Popen(["ip", "netns", "exec", self.ns] + argv, **kw)
        fd, setns = self.fd, self.setns

        def enter():
            if setns(fd, self.CLONE_NEWNET) != 0:
                os._exit(127)

        return subprocess.Popen(argv, preexec_fn=enter, pass_fds=(fd,), **kw)


class Prober:
    """New UDP flows from the client address: every probe is a fresh socket
    bound to a new source port (so a new conntrack entry and a new Maglev
    choice in the dataplane), kept open `keep` seconds for the answer."""

    def __init__(self, keep=0.5):
        self.sel = selectors.DefaultSelector()
        self.live = collections.deque()
        self.port = 20000
        self.seq = 0
        self.keep = keep
        self.sent = 0

    def send(self, dst):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        for _ in range(100):
            self.port = 20000 + (self.port - 20000 + 1) % 40000
            try:
                s.bind((CLIENT, self.port))
                break
            except OSError:
                continue
        else:
            s.close()
            return
        self.seq += 1
        now = time.monotonic()
        try:
            s.sendto(b"%d" % self.seq, (dst, SERVICE_PORT))
        except OSError:
            s.close()
            return
        self.sent += 1
        self.sel.register(s, selectors.EVENT_READ, now)
        self.live.append((now, s))

    def expire(self, now):
        while self.live and now - self.live[0][0] > self.keep:
            _, s = self.live.popleft()
            self.sel.unregister(s)
            s.close()

    def poll(self, timeout):
        """[(sent_at, received_at, backend address, role)]"""
        out = []
        for key, _ in self.sel.select(timeout=max(0.0, timeout)):
            try:
                d = key.fileobj.recv(2048)
            except OSError:
                continue
            now = time.monotonic()
            parts = d.split(b" ", 2)
            if len(parts) >= 2:
                out.append((key.data, now, parts[0].decode(), parts[1].decode()))
        return out

    def close(self):
        self.expire(float("inf"))


def run_change(k, i, spawner, kubectl, change_file, a, prober):
    """One measured change; returns a dict of what was seen."""
    dst = cluster_ip(i)
    new_addrs = {new_endpoint(i, k, j)[0] for j in range(ENDPOINTS)}
    old_addrs = {endpoint(i, j)[0] for j in range(ENDPOINTS)}
    r = {"k": k, "service": name(i), "cluster_ip": dst, "old_before": 0}
    # Forwarding to the old backends is live before the change.
    t_end = time.monotonic() + 5.0
    nxt = time.monotonic()
    while r["old_before"] < 3 and time.monotonic() < t_end:
        now = time.monotonic()
        if now >= nxt:
            prober.send(dst)
            nxt += a.interval
        prober.expire(now)
        for _, _, addr, _ in prober.poll(nxt - time.monotonic()):
            if addr in old_addrs:
                r["old_before"] += 1
    # The change: kubectl apply, while new flows keep coming.
    t0 = time.monotonic()
    w0 = time.time()
    p = spawner.popen(
        kubectl + ["apply", "-f", change_file],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=a.kubectl_env,
    )
    first = None  # (sent_at, received_at, addr)
    stale_after = 0  # probes sent >= 5 ms after the first new answer, answered by an old backend
    new_after = 0
    t_limit = t0 + a.timeout
    nxt = time.monotonic()
    kubectl_done = None
    while True:
        now = time.monotonic()
        if kubectl_done is None and p.poll() is not None:
            kubectl_done = now
        if first is not None and now > first[1] + a.after and kubectl_done is not None:
            break
        if now > t_limit:
            break
        if now >= nxt:
            prober.send(dst)
            nxt += a.interval
            if nxt < now:
                nxt = now + a.interval
        prober.expire(now)
        for sent, got, addr, _ in prober.poll(min(nxt - time.monotonic(), 0.005)):
            if addr in new_addrs:
                if first is None:
                    first = (sent, got, addr)
                elif sent >= first[1] + 0.005:
                    new_after += 1
            elif addr in old_addrs and first is not None and sent >= first[1] + 0.005:
                stale_after += 1
    out, err = p.communicate()
    if kubectl_done is None:
        kubectl_done = time.monotonic()
    r["kubectl_rc"] = p.returncode
    r["kubectl_out"] = out.decode(errors="replace").strip()
    r["kubectl_s"] = kubectl_done - t0
    r["t0_wall"] = w0
    r["stale_after"] = stale_after
    r["new_after"] = new_after
    if first is not None:
        r["latency_s"] = first[1] - t0
        r["first_sent_s"] = first[0] - t0
        r["first_backend"] = first[2]
        r["first_wall"] = w0 + (first[1] - t0)
    patch_t, line = patch_answered(err.decode(errors="replace"), time.gmtime(w0).tm_year)
    if patch_t is not None:
        r["patch_wall"] = patch_t
    elif p.returncode != 0 or a.verbose:
        r["kubectl_err"] = err.decode(errors="replace")[-2000:]
    return r


def attach_log(results, events):
    """Matches each change to the first 'tables published' after its
    kubectl start and the 'tables adopted' line of that generation. Log
    timestamps are taken when the line is written: after the region write
    ('tables published'), after the hand-over and the XDP map update
    ('tables adopted', whose publish_us is that update)."""
    pubs = [(t, f) for t, m, f in events if m == "tables published"]
    adopts = {f.get("generation"): (t, f) for t, m, f in events if m == "tables adopted"}
    for n, r in enumerate(results):
        t_next = results[n + 1]["t0_wall"] if n + 1 < len(results) else float("inf")
        for t, f in pubs:
            if r["t0_wall"] <= t < t_next:
                g = f.get("generation")
                r["generation"] = g
                r["published_wall"] = t
                r["region_publish_us"] = f.get("publish_us")
                r["region_waited_us"] = f.get("waited_us")
                if g in adopts:
                    r["adopted_wall"] = adopts[g][0]
                    r["adopt_us"] = adopts[g][1].get("publish_us")
                    r["diff_us"] = adopts[g][1].get("diff_us")
                    # The dataplane hands the tables to the workers, updates
                    # the XDP maps (publish_us), computes the line's diff
                    # (diff_us; before the hand-over in older binaries, which
                    # do not log it), then writes the line.
                    r["handed_wall"] = adopts[g][0] - ((r["adopt_us"] or 0) + (r["diff_us"] or 0)) / 1e6
                break


def summary_rows(results):
    def span(r, a, b):
        if a in r and b in r:
            return (r[b] - r[a]) * 1000.0
        return None

    rows = [
        ("kubectl apply start → first answer from a new backend", [r["latency_s"] * 1000 for r in results if "latency_s" in r]),
        ("  kubectl start → PATCH answered (kubectl -v=6)", [span(r, "t0_wall", "patch_wall") for r in results]),
        ("  PATCH answered → tables published (watch, coalescing, compile, region)", [span(r, "patch_wall", "published_wall") for r in results]),
        ("    of which: writing the region (published publish_us)", [r["region_publish_us"] / 1000 for r in results if r.get("region_publish_us") is not None]),
        ("  tables published → workers have them (dataplane poll, region read)", [span(r, "published_wall", "handed_wall") for r in results]),
        ("  workers have them → first answer (next probe, round trip)", [span(r, "handed_wall", "first_wall") for r in results]),
        ("XDP map update after the hand-over (adopted publish_us)", [r["adopt_us"] / 1000 for r in results if r.get("adopt_us") is not None]),
        ("log line's diff, after the hand-over (adopted diff_us)", [r["diff_us"] / 1000 for r in results if r.get("diff_us") is not None]),
        ("PATCH answered → first answer from a new backend", [span(r, "patch_wall", "first_wall") for r in results]),
        ("kubectl apply start → kubectl exited", [r["kubectl_s"] * 1000 for r in results]),
    ]
    return [(label, [x for x in v if x is not None]) for label, v in rows]


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, hard), max(want, hard)))


def cmd_drive(a):
    check_sizes(a.services, a.changes)
    # One socket per probe, kept 0.5 s: 500 open at the default interval.
    raise_nofile(int(0.5 / a.interval) + 256)
    os.makedirs(a.work, exist_ok=True)
    a.kubectl_env = dict(os.environ, KUBECONFIG=a.kubeconfig, HOME=a.work, TZ="UTC")
    kubectl = ["kubectl", "--kubeconfig", a.kubeconfig, "--cache-dir", os.path.join(a.work, "kcache"), "-v=6"]
    spawner = NetnsSpawner(a.node_ns)
    # Warm kubectl's discovery cache, as on an operator's machine.
    w = spawner.popen(kubectl[:-1] + ["get", "endpointslices", name(0) + "-1", "-o", "name"],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=a.kubectl_env)
    out, err = w.communicate(timeout=60)
    if w.returncode != 0:
        sys.exit("kubectl get failed: %s" % err.decode(errors="replace")[-1000:])
    prober = Prober()
    results = []
    for k in range(a.changes):
        i = changed(k, a.services, a.changes)
        addrs = [new_endpoint(i, k, j)[0] for j in range(ENDPOINTS)]
        f = os.path.join(a.work, "change-%03d.json" % k)
        with open(f, "w") as fh:
            json.dump(endpoint_slice(i, addrs), fh, indent=1)
        r = run_change(k, i, spawner, kubectl, f, a, prober)
        results.append(r)
        lat = "%.1f ms" % (r["latency_s"] * 1000) if "latency_s" in r else "NOT SEEN"
        print(
            "change %3d %s %-15s kubectl rc %d %6.1f ms, first answer from new backend %s %s"
            % (k, r["service"], r["cluster_ip"], r["kubectl_rc"], r["kubectl_s"] * 1000, r.get("first_backend", "-"), lat),
            flush=True,
        )
        time.sleep(a.pause)
    prober.close()
    # The edgeplane log lines of the changes (written by now).
    time.sleep(0.2)
    attach_log(results, ep_log_events(a.ep_log))
    with open(os.path.join(a.work, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)

    print()
    print("%-76s %5s %9s %9s %9s" % ("figure (ms)", "n", "p50", "p99", "max"))
    for label, v in summary_rows(results):
        if v:
            print("%-76s %5d %9.1f %9.1f %9.1f" % (label, len(v), pct(v, 0.5), pct(v, 0.99), max(v)))
        else:
            print("%-76s %5d %9s %9s %9s" % (label, 0, "-", "-", "-"))

    # Sanity: every change seen, positive and bounded, nothing stale.
    fails = []
    seen = [r for r in results if "latency_s" in r]
    lats = [r["latency_s"] * 1000 for r in seen]
    if len(seen) != len(results):
        fails.append("%d of %d changes never reached a new backend within %.0f s" % (len(results) - len(seen), len(results), a.timeout))
    if any(x <= 0 or x > a.bound_ms for x in lats):
        fails.append("latencies outside (0, %d] ms: %s" % (a.bound_ms, [round(x, 1) for x in lats if x <= 0 or x > a.bound_ms]))
    if any(r["kubectl_rc"] != 0 for r in results):
        bad = [r for r in results if r["kubectl_rc"] != 0][0]
        fails.append("kubectl apply failed (change %d): %s" % (bad["k"], bad.get("kubectl_err", "")[-500:]))
    if any(r["old_before"] == 0 for r in results):
        fails.append("changes whose Service did not answer from its old backends before: %s" % [r["k"] for r in results if r["old_before"] == 0])
    stale = sum(r["stale_after"] for r in results)
    if stale:
        fails.append("%d new flows went to an old backend after the switch" % stale)
    missing = [r["k"] for r in results if "adopted_wall" not in r or "patch_wall" not in r]
    if missing:
        fails.append("no PATCH / published / adopted timestamps for changes %s" % missing[:10])
    print()
    print(
        "RESULT services=%d changes=%d observed=%d p50_ms=%.1f p99_ms=%.1f max_ms=%.1f min_ms=%.1f stale=%d probes=%d"
        % (a.services, a.changes, len(seen), pct(lats, 0.5), pct(lats, 0.99), max(lats, default=float("nan")),
           min(lats, default=float("nan")), stale, prober.sent)
    )
    for f in fails:
        print("FAIL  " + f)
    if fails:
        sys.exit(1)
    print("kube-latency: all passed")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("addrs")
    p.add_argument("services", type=int)
    p.add_argument("changes", type=int)
    p = sub.add_parser("load")
    p.add_argument("url")
    p.add_argument("services", type=int)
    p.add_argument("--connections", type=int, default=2)
    p = sub.add_parser("respond")
    p.add_argument("services", type=int)
    p.add_argument("changes", type=int)
    p.add_argument("ready")
    p.add_argument("--max-seconds", type=float, default=3600)
    p = sub.add_parser("drive")
    p.add_argument("--services", type=int, required=True)
    p.add_argument("--changes", type=int, required=True)
    p.add_argument("--node-ns", required=True, help="namespace kubectl runs in (the API is its 127.0.0.1)")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--ep-log", required=True, help="edgeplane's --log-format json log")
    p.add_argument("--interval", type=float, default=0.001, help="seconds between new flows")
    p.add_argument("--timeout", type=float, default=30.0, help="longest wait for one change, s")
    p.add_argument("--after", type=float, default=0.05, help="keep probing this long after the first new answer, s")
    p.add_argument("--pause", type=float, default=0.2, help="pause between changes, s")
    p.add_argument("--bound-ms", type=float, default=30000, help="sanity bound on every latency")
    p.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    {"addrs": cmd_addrs, "load": cmd_load, "respond": cmd_respond, "drive": cmd_drive}[a.cmd](a)


if __name__ == "__main__":
    main()
