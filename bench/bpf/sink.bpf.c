// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The `edgeplane pktgen sink` XDP program: every IPv4/IPv6 TCP or UDP frame
 * goes to this queue's AF_XDP socket (where the sink counts and checks it,
 * then drops it); everything else (ARP, ICMPv6 neighbour discovery, ICMP)
 * goes to the kernel, so the sink namespace still answers ARP and ND.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
    __uint(type, BPF_MAP_TYPE_XSKMAP);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u32);
} xsks SEC(".maps");

SEC("xdp")
int pktgen_sink(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    __u8 proto;

    if ((void *)(eth + 1) > end)
        return XDP_PASS;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end)
            return XDP_PASS;
        proto = ip->protocol;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end)
            return XDP_PASS;
        proto = ip6->nexthdr;
    } else {
        return XDP_PASS;
    }
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
        return XDP_PASS;
    return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
