#!/usr/bin/env python3
"""What the tables must hold for a set of Kubernetes objects, and a check
that they do (tests/netns/kube-faults.sh).

  kube-expect.py expect API.json
      prints the expected frontends, one per line, sorted:
      "FRONTEND KIND SERVICE BACKEND=new|old ..."
  kube-expect.py selftest
      checks on a built-in sample that the comparison finds a flipped
      ready flag, a removed endpoint, a changed port, a wrong backend...
  kube-expect.py compare API.json SERVICES.json BACKENDS.json
      exit 0 and "N frontends, M backends match" when `edgeplane inspect
      services --output json` and `inspect backends --output json` hold
      exactly the expected frontends (IP, port, protocol, kind, Service)
      and, per frontend, exactly the expected backends (address, whether it
      takes new flows); otherwise exit 1 and print the differences.

API.json is `kubectl get services,endpointslices -A -o json`. The expected
set follows control/src/compile.rs (kube-proxy's rules) for what the test
uses: one frontend per Service port x clusterIP, externalIP, load-balancer
ingress IP and (NodePort/LoadBalancer) node IP x nodePort; the backends are
the EndpointSlice ports of the same name and protocol, of the frontend's
family, deduplicated by (IP, port); new flows go to ready endpoints, else
to serving-and-terminating ones. Objects using what this checker does not
model (Local traffic policies, topology hints, ipMode, disabled
load-balancer node ports) are refused, so a pass always means an exact
comparison. The node IP is 198.18.1.1 (`--node-ip`).
"""
import ipaddress
import json
import sys

NODE_IPS = ["198.18.1.1"]
SKIP_LABELS = ("service.kubernetes.io/service-proxy-name", "service.kubernetes.io/headless")


def fail(msg):
    print("kube-expect: " + msg, file=sys.stderr)
    sys.exit(2)


def addr(ip, port):
    return "[%s]:%d" % (ip, port) if ":" in ip else "%s:%d" % (ip, port)


def family(ip):
    return "IPv%d" % ipaddress.ip_address(ip).version


def expected(api):
    items = api.get("items", [])
    slices = [o for o in items if o.get("kind") == "EndpointSlice"]
    out = {}
    for svc in (o for o in items if o.get("kind") == "Service"):
        meta, spec = svc["metadata"], svc.get("spec", {})
        ns, name = meta.get("namespace", "default"), meta["name"]
        labels = meta.get("labels") or {}
        if any(l in labels for l in SKIP_LABELS) or spec.get("type") == "ExternalName":
            continue
        cips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
        if not cips or cips[0] == "None":
            continue
        for field in ("externalTrafficPolicy", "internalTrafficPolicy"):
            if spec.get(field, "Cluster") != "Cluster":
                fail("%s/%s: %s is not modelled" % (ns, name, field))
        if spec.get("allocateLoadBalancerNodePorts") is False:
            fail("%s/%s: allocateLoadBalancerNodePorts is not modelled" % (ns, name))
        if (meta.get("annotations") or {}).get("service.kubernetes.io/topology-mode") or spec.get("trafficDistribution"):
            fail("%s/%s: topology is not modelled" % (ns, name))
        typ = spec.get("type", "ClusterIP")
        lb_ips = []
        if typ == "LoadBalancer":
            for ing in (svc.get("status", {}).get("loadBalancer", {}).get("ingress") or []):
                if ing.get("ipMode"):
                    fail("%s/%s: ipMode is not modelled" % (ns, name))
                if ing.get("ip"):
                    lb_ips.append(ing["ip"])
        mine = [s for s in slices
                if s["metadata"].get("namespace", "default") == ns
                and (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == name]
        for port in spec.get("ports", []):
            pname, proto = port.get("name", ""), port.get("protocol", "TCP")
            display = "%s/%s:%s" % (ns, name, pname) if pname else "%s/%s" % (ns, name)
            for cip in cips:
                fam = family(cip)
                eps = {}
                for s in mine:
                    if s.get("addressType") != fam:
                        continue
                    for sp in s.get("ports") or []:
                        if sp.get("name", "") != pname or sp.get("protocol", "TCP") != proto or not sp.get("port"):
                            continue
                        for ep in s.get("endpoints") or []:
                            if ep.get("hints"):
                                fail("%s: endpoint hints are not modelled" % display)
                            ip = ep["addresses"][0]
                            if family(ip) != fam:
                                continue
                            c = ep.get("conditions") or {}
                            ready = c.get("ready", True)
                            serving = c.get("serving", ready)
                            term = c.get("terminating", False)
                            eps.setdefault(addr(ip, sp["port"]), (ready, serving and term))
                new = {a for a, (r, _) in eps.items() if r} or {a for a, (_, st) in eps.items() if st}
                backends = tuple(sorted("%s=%s" % (a, "new" if a in new else "old") for a in eps))
                same = [ip for ip in (spec.get("externalIPs") or []) if family(ip) == fam]
                fronts = [(cip, port["port"], "ClusterIP")]
                fronts += [(ip, port["port"], "ExternalIP") for ip in same]
                fronts += [(ip, port["port"], "LoadBalancer") for ip in lb_ips if family(ip) == fam]
                if typ in ("NodePort", "LoadBalancer") and port.get("nodePort"):
                    fronts += [(ip, port["nodePort"], "NodePort") for ip in NODE_IPS if family(ip) == fam]
                for ip, p, kind in fronts:
                    key = "%s/%s" % (addr(ip, p), proto)
                    if key in out:
                        fail("frontend %s twice (%s and %s)" % (key, out[key][1], display))
                    out[key] = (kind, display, backends)
    return out


def actual(services, backends):
    out = {}
    svc_of = {}
    for s in services["services"]:
        for f in s["frontends"]:
            svc_of[f["frontend"]] = (f["kind"], s["service"], f["backends"], f["new_flow_backends"])
    for f in backends["frontends"]:
        bs = tuple(sorted("%s=%s" % (b["address"], "new" if b["new_flows"] else "old") for b in f["backends"]))
        kind, name, n_all, n_new = svc_of.get(f["frontend"], ("?", "?", -1, -1))
        if n_all != len(bs) or n_new != sum(b.endswith("=new") for b in bs) or name != f["service"]:
            fail("inspect services and inspect backends disagree on %s" % f["frontend"])
        out[f["frontend"]] = (kind, name, bs)
    if set(svc_of) != set(out):
        fail("inspect services and inspect backends list different frontends")
    return out


def show(key, v):
    return "%s %s %s %s" % (key, v[0], v[1], " ".join(v[2]) or "(no backends)")


def selftest():
    """The comparison can fail: a consistent sample matches, and each
    perturbation of it (API side or tables side) is found."""
    import copy
    api = {"items": [
        {"kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"type": "NodePort", "clusterIP": "198.18.200.10", "clusterIPs": ["198.18.200.10"],
                  "ports": [{"name": "echo", "port": 80, "protocol": "TCP", "nodePort": 30080}]}},
        {"kind": "EndpointSlice", "addressType": "IPv4",
         "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
         "ports": [{"name": "echo", "port": 8080, "protocol": "TCP"}],
         "endpoints": [{"addresses": ["198.18.2.2"], "conditions": {"ready": True}},
                       {"addresses": ["198.18.2.3"], "conditions": {"ready": False, "serving": True, "terminating": True}}]},
    ]}
    bs = [{"address": "198.18.2.2:8080", "new_flows": True}, {"address": "198.18.2.3:8080", "new_flows": False}]
    fes = [("198.18.200.10:80/TCP", "ClusterIP"), ("198.18.1.1:30080/TCP", "NodePort")]
    services = {"generation": 1, "services": [{"service": "default/web:echo", "frontends": [
        {"frontend": f, "kind": k, "backends": 2, "new_flow_backends": 1} for f, k in fes]}]}
    backends = {"generation": 1, "frontends": [
        {"frontend": f, "service": "default/web:echo", "backends": bs} for f, _ in fes]}
    assert expected(api) == actual(services, backends), "the sample must match"

    def api_perturbed(f):
        a = copy.deepcopy(api)
        f(a)
        return expected(a)
    cases = {
        "endpoint ready flipped": api_perturbed(lambda a: a["items"][1]["endpoints"][1]["conditions"].update(ready=True)),
        "endpoint removed": api_perturbed(lambda a: a["items"][1]["endpoints"].pop()),
        "port changed": api_perturbed(lambda a: a["items"][0]["spec"]["ports"][0].update(port=81)),
        "nodePort removed": api_perturbed(lambda a: a["items"][0]["spec"].update(type="ClusterIP")),
        "slice of another Service": api_perturbed(
            lambda a: a["items"][1]["metadata"]["labels"].update({"kubernetes.io/service-name": "other"})),
        "slice port renamed": api_perturbed(lambda a: a["items"][1]["ports"][0].update(name="http")),
    }
    act = actual(services, backends)
    for name, exp in cases.items():
        assert exp != act, "not found: " + name
    b2 = copy.deepcopy(backends)
    b2["frontends"][0]["backends"][1]["address"] = "198.18.2.4:8080"
    assert expected(api) != actual(services, b2), "not found: a wrong backend address"
    print("kube-expect selftest: the sample matches, %d perturbations found" % (len(cases) + 1))
    return 0


def main():
    if sys.argv[1:] == ["selftest"]:
        return selftest()
    if len(sys.argv) == 3 and sys.argv[1] == "expect":
        exp = expected(json.load(open(sys.argv[2])))
        for k in sorted(exp):
            print(show(k, exp[k]))
        return 0
    if len(sys.argv) == 5 and sys.argv[1] == "compare":
        exp = expected(json.load(open(sys.argv[2])))
        services, backends = json.load(open(sys.argv[3])), json.load(open(sys.argv[4]))
        if services["generation"] != backends["generation"]:
            # A generation was published between the two reads.
            print("generations %s and %s read; read again" % (services["generation"], backends["generation"]))
            return 1
        act = actual(services, backends)
        if exp == act:
            print("generation %d: %d frontends, %d backends match the API" % (
                services["generation"], len(exp), sum(len(v[2]) for v in exp.values())))
            return 0
        for k in sorted(set(exp) | set(act)):
            if exp.get(k) != act.get(k):
                print("want " + (show(k, exp[k]) if k in exp else k + " absent"))
                print("have " + (show(k, act[k]) if k in act else k + " absent"))
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
