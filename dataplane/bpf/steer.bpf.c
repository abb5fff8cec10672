// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * edgeplane XDP steering program.
 *
 * Decides, per frame, whether the frame belongs to the userspace dataplane
 * (redirect to this queue's AF_XDP socket) or to the kernel (XDP_PASS). It
 * never rewrites, and drops in two cases only (below); every policy
 * decision stays in the engine.
 *
 * While the dataplane is down (killed, restarting: its sockets have left the
 * XSKMAP but this program stays attached), frames of classes 1-3 below that
 * arrive on a queue the dataplane serves are dropped (drop_no_socket), not
 * passed: the kernel has no socket for a Service's translated flows and
 * would answer them with RSTs, killing the connections the restarted
 * dataplane is about to pick up again from its shared-memory conntrack. TCP
 * retransmits them once it is back. Everything else still fails open to the
 * kernel (the node's own traffic, ICMP, queues no worker serves).
 *
 * A frame is ours when, after Ethernet (+ up to two VLAN tags) and IPv4/IPv6
 * (IPv6 extension headers walked):
 *   1. its (dst addr, dst port, proto) is a frontend               (frontends)
 *   2. its dst addr is a SNAT address and dst port is in the SNAT
 *      port range: a backend's reply to a translated flow           (snat)
 *   3. its (src addr, src port, proto) is a backend of a frontend
 *      that does not SNAT: the reply of an externalTrafficPolicy
 *      Local flow comes back to the client's address               (nosnat_backends)
 *   4. ICMP/ICMPv6 *errors* addressed to a SNAT address (PMTU and
 *      unreachables quoting a translated flow)                      (snat)
 *   5. ICMP/ICMPv6 echo requests to a frontend address that is not
 *      a node address (the engine answers them)                     (vips)
 *   6. fragments to a frontend address that is not a node address
 *      (the engine counts and drops them: no reassembly)            (vips)
 * Everything else: XDP_PASS.
 *
 * SYN shedding: `shed[rx queue]` = N > 1 (a power of two) makes a TCP SYN
 * (no ACK) to a frontend on that queue go through with probability 1/N and
 * be dropped otherwise (drop_syn_shed). Userspace raises N while the queue's
 * worker is saturated and the kernel drops its frames (a SYN flood), and
 * lowers it back to 1 when the worker has room (src/shed.rs): the frames the
 * kernel would have dropped at random, established flows' included, are
 * then new connections only, which the client retries.
 *
 * Addresses are 16 bytes; IPv4 is stored IPv4-mapped (::ffff:a.b.c.d), the
 * same encoding the userspace side writes (src/afxdp/steer.rs).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* The XSKMAP is keyed by slot * MAX_QUEUES_PER_IF + rx queue; the slot of
 * an interface comes from `ifslots` (userspace numbers its interfaces). */
#define MAX_IFACES 8
#define MAX_QUEUES_PER_IF 64
#define MAX_FRONTENDS 65536
#define MAX_V6_EXT 6

/* Stable counter indices (userspace reads them by index). */
enum steer_counter {
	C_REDIRECT_FRONTEND = 0,
	C_REDIRECT_SNAT = 1,
	C_REDIRECT_NOSNAT_REPLY = 2,
	C_REDIRECT_ICMP = 3,
	C_REDIRECT_FRAGMENT = 4,
	C_PASS = 5,
	C_PASS_UNPARSED = 6,
	C_PASS_NO_SOCKET = 7,
	C_DROP_NO_SOCKET = 8,
	C_DROP_SYN_SHED = 9,
	C_MAX = 10,
};

/* (address, port, protocol); port in network byte order. */
struct ep_key {
	__u8 addr[16];
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct addr_key {
	__u8 addr[16];
};

/* SNAT port range, host byte order, inclusive. */
struct snat_range {
	__u16 lo;
	__u16 hi;
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_IFACES * MAX_QUEUES_PER_IF);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_IFACES);
	__type(key, __u32);   /* ifindex */
	__type(value, __u32); /* slot */
} ifslots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FRONTENDS);
	__type(key, struct ep_key);
	__type(value, __u32);
} frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FRONTENDS);
	__type(key, struct ep_key);
	__type(value, __u32);
} nosnat_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, struct addr_key);
	__type(value, struct snat_range);
} snat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FRONTENDS);
	__type(key, struct addr_key);
	__type(value, __u32);
} vips SEC(".maps");

/* [0]: RX queues per interface the dataplane serves (queue ids 0..n).
 * Written before the program is attached; never cleared while attached. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} served SEC(".maps");

/* SYN shedding level per rx queue: admit 1 in N (N a power of two; 0 or 1:
 * admit all). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_QUEUES_PER_IF);
	__type(key, __u32);
	__type(value, __u32);
} shed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

/* Redirects to this queue's socket. No socket: a queue the dataplane
 * serves has lost it (the dataplane is down or restarting) -> drop when
 * `hold` (Service traffic whose flows must survive), else pass; a queue no
 * worker serves -> pass (fail open). */
static __always_inline int to_socket(struct xdp_md *ctx, __u32 idx, int hold)
{
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 q = ctx->rx_queue_index;
	__u32 *slot = bpf_map_lookup_elem(&ifslots, &ifindex);
	if (!slot || q >= MAX_QUEUES_PER_IF) {
		count(C_PASS_NO_SOCKET);
		return XDP_PASS;
	}
	/* flags 0: XDP_ABORTED (0) when the XSKMAP has no socket at the key. */
	int rc = bpf_redirect_map(&xsks, *slot * MAX_QUEUES_PER_IF + q, 0);
	if (rc == XDP_REDIRECT) {
		count(idx);
		return rc;
	}
	__u32 zero = 0;
	__u32 *n = bpf_map_lookup_elem(&served, &zero);
	if (hold && n && q < *n) {
		count(C_DROP_NO_SOCKET);
		return XDP_DROP;
	}
	count(C_PASS_NO_SOCKET);
	return XDP_PASS;
}

static __always_inline int pass(__u32 idx)
{
	count(idx);
	return XDP_PASS;
}

/* The packet's L4 view after IP parsing. */
struct l4 {
	struct addr_key src;
	struct addr_key dst;
	void *hdr;     /* start of the L4 header */
	__u8 proto;    /* final next-header */
	__u8 fragment; /* any fragment (first or not) */
	__u8 later_fragment; /* not the first fragment: no L4 header */
};

static __always_inline void v4_mapped(struct addr_key *k, __be32 a)
{
	__builtin_memset(k->addr, 0, 10);
	k->addr[10] = 0xff;
	k->addr[11] = 0xff;
	__builtin_memcpy(&k->addr[12], &a, 4);
}

static __always_inline int is_icmp_error(__u8 proto, __u8 type)
{
	if (proto == IPPROTO_ICMP) /* dest unreach, time exceeded, param problem */
		return type == 3 || type == 11 || type == 12;
	/* ICMPv6: dest unreach, packet too big, time exceeded, param problem */
	return type >= 1 && type <= 4;
}

static __always_inline int is_echo_request(__u8 proto, __u8 type)
{
	return (proto == IPPROTO_ICMP && type == 8) ||
	       (proto == IPPROTO_ICMPV6 && type == 128);
}

SEC("xdp")
int edgeplane_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct l4 p = {};
	__u16 h_proto;
	void *cur;

	/* 1. Ethernet, up to two VLAN tags (802.1Q / 802.1ad). */
	if ((void *)(eth + 1) > end)
		return pass(C_PASS_UNPARSED);
	h_proto = eth->h_proto;
	cur = eth + 1;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (h_proto != bpf_htons(ETH_P_8021Q) && h_proto != bpf_htons(ETH_P_8021AD))
			break;
		struct { __be16 tci; __be16 proto; } *vlan = cur;
		if ((void *)(vlan + 1) > end)
			return pass(C_PASS_UNPARSED);
		h_proto = vlan->proto;
		cur = vlan + 1;
	}

	/* 2. IP: addresses, final protocol, fragment state. */
	if (h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = cur;
		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return pass(C_PASS_UNPARSED);
		v4_mapped(&p.src, ip->saddr);
		v4_mapped(&p.dst, ip->daddr);
		p.proto = ip->protocol;
		/* MF set or offset != 0 */
		p.fragment = (ip->frag_off & bpf_htons(0x3fff)) != 0;
		p.later_fragment = (ip->frag_off & bpf_htons(0x1fff)) != 0;
		p.hdr = (void *)ip + ip->ihl * 4;
	} else if (h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cur;
		if ((void *)(ip6 + 1) > end)
			return pass(C_PASS_UNPARSED);
		__builtin_memcpy(p.src.addr, &ip6->saddr, 16);
		__builtin_memcpy(p.dst.addr, &ip6->daddr, 16);
		__u8 nh = ip6->nexthdr;
		void *h = ip6 + 1;
#pragma unroll
		for (int i = 0; i < MAX_V6_EXT; i++) {
			if (nh == 0 /* hop-by-hop */ || nh == 43 /* routing */ ||
			    nh == 60 /* destination options */) {
				__u8 *ext = h;
				if ((void *)(ext + 2) > end)
					return pass(C_PASS_UNPARSED);
				nh = ext[0];
				h = h + (ext[1] + 1) * 8;
			} else if (nh == 44 /* fragment */) {
				__u8 *frag = h;
				if ((void *)(frag + 8) > end)
					return pass(C_PASS_UNPARSED);
				nh = frag[0];
				p.fragment = 1;
				/* offset is the top 13 bits of bytes 2..3 */
				p.later_fragment = ((frag[2] << 8 | frag[3]) & 0xfff8) != 0;
				h = h + 8;
			} else {
				break;
			}
		}
		p.proto = nh;
		p.hdr = h;
	} else {
		return pass(C_PASS); /* ARP, LLDP, ...: the kernel's */
	}

	/* 3. Fragments to a VIP: the engine drops and counts them. */
	if (p.later_fragment) {
		if (bpf_map_lookup_elem(&vips, &p.dst))
			return to_socket(ctx, C_REDIRECT_FRAGMENT, 0);
		return pass(C_PASS);
	}

	/* 4. ICMP: errors to the SNAT address, echo to VIPs. */
	if (p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6) {
		__u8 *icmp = p.hdr;
		if ((void *)(icmp + 1) > end)
			return pass(C_PASS_UNPARSED);
		if (is_icmp_error(p.proto, icmp[0]) && bpf_map_lookup_elem(&snat, &p.dst))
			return to_socket(ctx, C_REDIRECT_ICMP, 0);
		if (is_echo_request(p.proto, icmp[0]) && bpf_map_lookup_elem(&vips, &p.dst))
			return to_socket(ctx, C_REDIRECT_ICMP, 0);
		/* Errors quoting a non-SNAT (Local policy) flow: TODO, kernel's. */
		return pass(C_PASS);
	}

	if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP && p.proto != IPPROTO_SCTP)
		return pass(C_PASS);

	/* TCP, UDP and SCTP all start with source port, destination port. */
	__be16 *ports = p.hdr;
	if ((void *)(ports + 2) > end)
		return pass(C_PASS_UNPARSED);

	/* 5. A frontend. */
	struct ep_key k = {};
	__builtin_memcpy(k.addr, p.dst.addr, 16);
	k.port = ports[1];
	k.proto = p.proto;
	if (bpf_map_lookup_elem(&frontends, &k)) {
		/* A new TCP connection (SYN without ACK) while this queue sheds. */
		__u8 *tcp = p.hdr;
		if (p.proto == IPPROTO_TCP && (void *)(tcp + 14) <= end &&
		    (tcp[13] & 0x12) == 0x02) {
			__u32 q = ctx->rx_queue_index;
			__u32 *n = bpf_map_lookup_elem(&shed, &q);
			if (n && *n > 1 && (bpf_get_prandom_u32() & (*n - 1)) != 0) {
				count(C_DROP_SYN_SHED);
				return XDP_DROP;
			}
		}
		return to_socket(ctx, C_REDIRECT_FRONTEND, 1);
	}

	/* 6. A reply to a SNAT mapping. */
	struct snat_range *r = bpf_map_lookup_elem(&snat, &p.dst);
	if (r) {
		__u16 dport = bpf_ntohs(ports[1]);
		if (dport >= r->lo && dport <= r->hi)
			return to_socket(ctx, C_REDIRECT_SNAT, 1);
	}

	/* 7. A reply from a backend of a frontend without SNAT. */
	__builtin_memcpy(k.addr, p.src.addr, 16);
	k.port = ports[0];
	if (bpf_map_lookup_elem(&nosnat_backends, &k))
		return to_socket(ctx, C_REDIRECT_NOSNAT_REPLY, 1);

	/* A fragment (first) to a VIP without a frontend port. */
	if (p.fragment && bpf_map_lookup_elem(&vips, &p.dst))
		return to_socket(ctx, C_REDIRECT_FRAGMENT, 0);

	return pass(C_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
