#!/usr/bin/env python3
"""Writes, for N Services x B backends, what bench/compare loads on the node:

  services.yaml   Services + EndpointSlices for `edgeplane run --manifests`
  nft.rules       the ruleset kube-proxy's nftables proxier writes
                  (pkg/proxy/nftables/proxier.go: table ip kube-proxy, the
                  service-ips verdict map, one service-* chain per Service
                  port with `numgen random mod N vmap`, one endpoint-* chain
                  per endpoint with `dnat to`, mark-for-masquerade and
                  `masquerade fully-random` in nat-postrouting)
  iptables.rules  the iptables-restore input kube-proxy's iptables proxier
                  writes (KUBE-SERVICES with one rule per Service port,
                  KUBE-SVC-* with `-m statistic --mode random --probability`,
                  KUBE-SEP-* DNAT, KUBE-MARK-MASQ, KUBE-POSTROUTING
                  MASQUERADE --random-fully, KUBE-FORWARD)
  backends.txt    every backend as `ADDRESS PORT` (the sink's check list)

Every Service has port 80 over PROTO (tcp or udp), target port 8080. Addresses (all in 198.18.0.0/15):
  Service i (0-based):   ClusterIP 198.18.64.1 + i      (service CIDR 198.18.64.0/18)
  backend j of i:        198.19.0.1 + ((i*B + j) % 65000) (pod CIDR 198.19.0.0/16)

usage: rulesets.py N B PROTO OUTDIR
"""
import base64
import hashlib
import ipaddress
import os
import sys

n, b, proto_arg, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.makedirs(out, exist_ok=True)
VIP0 = int(ipaddress.IPv4Address("198.18.64.1"))
BE0 = int(ipaddress.IPv4Address("198.19.0.1"))
POD_CIDR = "198.19.0.0/16"
SVC_CIDR = "198.18.64.0/18"
PROTOS = [(proto_arg, proto_arg.upper())]
if proto_arg not in ("tcp", "udp"):
    sys.exit(f"PROTO must be tcp or udp, not {proto_arg!r}")


def vip(i):
    return str(ipaddress.IPv4Address(VIP0 + i))


def backend(i, j):
    return str(ipaddress.IPv4Address(BE0 + (i * b + j) % 65000))


def h(s, n=16):
    # kube-proxy's chain-name hash: base32(sha256(...)) truncated.
    return base64.b32encode(hashlib.sha256(s.encode()).digest()).decode()[:n]


with open(f"{out}/services.yaml", "w") as y:
    for i in range(n):
        y.write(
            f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{i}, namespace: bench}}\n"
            f"spec:\n  type: ClusterIP\n  clusterIP: {vip(i)}\n  selector: {{app: svc{i}}}\n"
            f"  ports: [{{name: {proto_arg}, port: 80, protocol: {proto_arg.upper()}, targetPort: 8080}}]\n"
            f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            f"metadata: {{name: svc{i}-1, namespace: bench, labels: {{kubernetes.io/service-name: svc{i}}}}}\n"
            f"addressType: IPv4\nports: [{{name: {proto_arg}, port: 8080, protocol: {proto_arg.upper()}}}]\n"
            "endpoints:\n"
        )
        for j in range(b):
            y.write(f"- {{addresses: [\"{backend(i, j)}\"], conditions: {{ready: true}}}}\n")

with open(f"{out}/backends.txt", "w") as f:
    seen = set()
    for i in range(n):
        for j in range(b):
            a = backend(i, j)
            if a not in seen:
                seen.add(a)
                f.write(f"{a} 8080\n")

# ---- nftables mode -------------------------------------------------------
T = "ip kube-proxy"
L = []
L.append(f'add table {T} {{ comment "rules for kube-proxy" ; }}')
L.append(f"flush table {T}")
L.append(f'add set {T} cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}')
L.append(f'add set {T} nodeport-ips {{ type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }}')
for m, typ, c in [
    ("firewall-ips", "ipv4_addr . inet_proto . inet_service", "destinations that are subject to LoadBalancerSourceRanges"),
    ("no-endpoint-nodeports", "inet_proto . inet_service", "vmap to drop or reject packets to service nodeports with no endpoints"),
    ("no-endpoint-services", "ipv4_addr . inet_proto . inet_service", "vmap to drop or reject packets to services with no endpoints"),
    ("service-ips", "ipv4_addr . inet_proto . inet_service", "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    ("service-nodeports", "inet_proto . inet_service", "NodePort traffic"),
]:
    L.append(f'add map {T} {m} {{ type {typ} : verdict ; comment "{c}" ; }}')
for ch, spec in [
    ("cluster-ips-check", ""),
    ("filter-prerouting-pre-dnat", "{ type filter hook prerouting priority -110 ; }"),
    ("filter-output-pre-dnat", "{ type filter hook output priority -110 ; }"),
    ("filter-forward", "{ type filter hook forward priority 0 ; }"),
    ("filter-input", "{ type filter hook input priority 0 ; }"),
    ("filter-output", "{ type filter hook output priority 0 ; }"),
    ("firewall-check", ""),
    ("mark-for-masquerade", ""),
    ("masquerading", ""),
    ("nat-output", "{ type nat hook output priority -100 ; }"),
    ("nat-postrouting", "{ type nat hook postrouting priority 100 ; }"),
    ("nat-prerouting", "{ type nat hook prerouting priority -100 ; }"),
    ("nodeport-endpoints-check", ""),
    ("reject-chain", '{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }'),
    ("services", ""),
    ("service-endpoints-check", ""),
]:
    L.append(f"add chain {T} {ch} {spec}".rstrip())
L += [
    f'add rule {T} cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
    f'add rule {T} cluster-ips-check ip daddr {{ {SVC_CIDR} }} drop comment "Drop traffic to unallocated ClusterIPs"',
    f"add rule {T} filter-prerouting-pre-dnat ct state new jump firewall-check",
    f"add rule {T} filter-forward ct state new jump service-endpoints-check",
    f"add rule {T} filter-forward ct state new jump cluster-ips-check",
    f"add rule {T} filter-input ct state new jump nodeport-endpoints-check",
    f"add rule {T} filter-input ct state new jump service-endpoints-check",
    f"add rule {T} filter-output ct state new jump service-endpoints-check",
    f"add rule {T} filter-output-pre-dnat ct state new jump firewall-check",
    f"add rule {T} filter-output ct state new jump cluster-ips-check",
    f"add rule {T} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
    f"add rule {T} mark-for-masquerade mark set mark or 0x4000",
    f"add rule {T} masquerading mark and 0x4000 == 0 return",
    f"add rule {T} masquerading mark set mark xor 0x4000",
    f"add rule {T} masquerading masquerade fully-random",
    f"add rule {T} nat-output jump services",
    f"add rule {T} nat-postrouting jump masquerading",
    f"add rule {T} nat-prerouting jump services",
    f"add rule {T} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
    f"add rule {T} reject-chain reject",
    f"add rule {T} services ip daddr . meta l4proto . th dport vmap @service-ips",
    f"add rule {T} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
    f"add element {T} nodeport-ips {{ 198.18.1.1 }}",
    f"add rule {T} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
]
for i in range(n):
    for proto, _ in PROTOS:
        spn = f"bench/svc{i}/{proto}/{proto}"
        sc = f"service-{h(spn, 8)}-{spn}"
        eps = []
        for j in range(b):
            a = backend(i, j)
            ec = f"endpoint-{h(spn + a, 8)}-{spn}__{a}/8080"
            eps.append(ec)
            L.append(f"add chain {T} {ec}")
            L.append(f"add rule {T} {ec} ip saddr {a} jump mark-for-masquerade")
            L.append(f"add rule {T} {ec} meta l4proto {proto} dnat to {a}:8080")
        L.append(f"add chain {T} {sc}")
        L.append(f"add rule {T} {sc} ip daddr {vip(i)} {proto} dport 80 ip saddr != {POD_CIDR} jump mark-for-masquerade")
        vm = " , ".join(f"{k} : goto {e}" for k, e in enumerate(eps))
        L.append(f"add rule {T} {sc} numgen random mod {b} vmap {{ {vm} }}")
        L.append(f"add element {T} service-ips {{ {vip(i)} . {proto} . 80 : goto {sc} }}")
    L.append(f"add element {T} cluster-ips {{ {vip(i)} }}")
with open(f"{out}/nft.rules", "w") as f:
    f.write("\n".join(L) + "\n")

# ---- iptables mode -------------------------------------------------------
nat_chains = ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-NODEPORTS"]
nat_rules = [
    '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
    "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
    "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
    '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
    "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
]
svc_rules = []
for i in range(n):
    for proto, _ in PROTOS:
        spn = f"bench/svc{i}:{proto}"
        svc = "KUBE-SVC-" + h(spn + proto)
        nat_chains.append(svc)
        svc_rules.append(
            f'-A KUBE-SERVICES -m comment --comment "{spn} cluster IP" -m {proto} -p {proto} -d {vip(i)}/32 --dport 80 -j {svc}'
        )
        nat_rules.append(
            f'-A {svc} -m comment --comment "{spn} cluster IP" -m {proto} -p {proto} -d {vip(i)}/32 --dport 80 ! -s {POD_CIDR} -j KUBE-MARK-MASQ'
        )
        for j in range(b):
            a = backend(i, j)
            sep = "KUBE-SEP-" + h(spn + proto + a)
            nat_chains.append(sep)
            left = b - j
            stat = f" -m statistic --mode random --probability {1.0 / left:.10f}" if left > 1 else ""
            nat_rules.append(f'-A {svc} -m comment --comment "{spn} -> {a}:8080"{stat} -j {sep}')
            nat_rules.append(f'-A {sep} -m comment --comment {spn} -s {a}/32 -j KUBE-MARK-MASQ')
            nat_rules.append(f"-A {sep} -m comment --comment {spn} -m {proto} -p {proto} -j DNAT --to-destination {a}:8080")
svc_rules.append(
    '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
)
with open(f"{out}/iptables.rules", "w") as f:
    f.write("*filter\n")
    for c in ["KUBE-FORWARD", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"]:
        f.write(f":{c} - [0:0]\n")
    f.write(
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL\n'
        '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS\n'
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES\n'
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL\n'
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD\n'
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n'
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES\n'
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n"
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT\n'
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n'
        "COMMIT\n*nat\n"
    )
    for c in nat_chains:
        f.write(f":{c} - [0:0]\n")
    f.write("\n".join(svc_rules + nat_rules) + "\nCOMMIT\n")
