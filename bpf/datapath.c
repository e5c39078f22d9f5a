// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Membrane datapath entry programs.
 *
 * from_container: tcx ingress of each endpoint's host-side veth (lxc...),
 *   i.e. packets leaving a pod. Answers ARP for the router, enforces the
 *   source address, delivers to local endpoints with bpf_redirect_peer and
 *   hands everything else to the host stack.
 * from_host: tcx ingress of mbr_net, the peer of mbr_host. The host stack
 *   routes the pod CIDR out of mbr_host, so host-originated and forwarded
 *   traffic for local pods arrives here and is delivered to the pod.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "common.h"
#include "maps.h"
#include "eth.h"

/* Router IPv4 address (first address of the node's pod CIDR, on mbr_host),
 * network byte order. Set by the loader through CollectionSpec.Variables. */
volatile const __u32 ROUTER_IP4 = 0;

/* Answer an ARP request for the router from a known endpoint on its own lxc.
 * The reply names the lxc MAC (host_mac) as the router's MAC and goes back
 * out of the same lxc, i.e. into the pod. */
static __always_inline int handle_arp(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arp_eth_ipv4 *arp = (void *)(eth + 1);
	struct endpoint_info *ep;
	__be32 sender_ip;

	/* Truncated ARP: not ours to judge, the stack discards it. */
	if ((void *)(arp + 1) > data_end)
		return TC_ACT_OK;

	/* Only Ethernet/IPv4 requests are answered here. */
	if (arp->hrd != bpf_htons(MBR_ARPHRD_ETHER) ||
	    arp->pro != bpf_htons(ETH_P_IP) ||
	    arp->hln != ETH_ALEN || arp->pln != 4 ||
	    arp->op != bpf_htons(MBR_ARPOP_REQUEST))
		return TC_ACT_OK;

	/* ARP for someone other than the router: leave it to the stack. */
	if (arp->tip != ROUTER_IP4)
		return TC_ACT_OK;

	/* Unknown sender, or a known one on the wrong lxc: drop. Passing it on
	 * would let the host stack answer (arp_ignore=0) for a spoofed sender. */
	sender_ip = arp->sip;
	ep = lookup_endpoint4(sender_ip);
	if (!ep || ep->ifindex != skb->ifindex)
		return TC_ACT_SHOT;

	/* Turn the request into a reply in place. */
	mac_copy(eth->h_dest, eth->h_source);
	mac_copy(eth->h_source, ep->host_mac);
	arp->op = bpf_htons(MBR_ARPOP_REPLY);
	mac_copy(arp->tha, arp->sha);
	arp->tip = sender_ip;
	mac_copy(arp->sha, ep->host_mac);
	arp->sip = ROUTER_IP4;

	return bpf_redirect(skb->ifindex, 0);
}

static __always_inline int ipv4_from_container(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = (void *)(eth + 1);
	struct endpoint_info *src, *dst;
	__u32 dst_ifindex;

	/* Truncated or malformed IPv4 header: drop. */
	if ((void *)(ip4 + 1) > data_end)
		return TC_ACT_SHOT;
	if (ip4->version != 4 || ip4->ihl < 5)
		return TC_ACT_SHOT;

	/* Anti-spoofing: the source must be the endpoint behind this lxc. */
	src = lookup_endpoint4(ip4->saddr);
	if (!src || src->ifindex != skb->ifindex)
		return TC_ACT_SHOT;

	/* Not a local endpoint: the host stack routes it. */
	dst = lookup_endpoint4(ip4->daddr);
	if (!dst)
		return TC_ACT_OK;

	/* TTL expires here: the stack drops it and sends ICMP time exceeded. */
	if (ip4->ttl <= 1)
		return TC_ACT_OK;

	/* Direct writes first; ip4_dec_ttl invalidates packet pointers. */
	eth_to_endpoint(eth, dst);
	dst_ifindex = dst->ifindex;
	if (ip4_dec_ttl(skb, ip4) < 0)
		return TC_ACT_SHOT;

	return bpf_redirect_peer(dst_ifindex, 0);
}

SEC("tcx/ingress")
int from_container(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	/* Shorter than an Ethernet header: drop. */
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_SHOT;

	switch (eth->h_proto) {
	case bpf_htons(ETH_P_ARP):
		return handle_arp(skb);
	case bpf_htons(ETH_P_IP):
		return ipv4_from_container(skb);
	default:
		/* IPv6 and the rest: the host stack, until they are handled here. */
		return TC_ACT_OK;
	}
}

SEC("tcx/ingress")
int from_host(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = (void *)(eth + 1);
	struct endpoint_info *dst;

	/* Shorter than Ethernet + IPv4: drop. */
	if ((void *)(ip4 + 1) > data_end)
		return TC_ACT_SHOT;

	/* Only IPv4 for local pods belongs here: mbr_host is NOARP and carries
	 * just the pod CIDR route. ARP, IPv6 (e.g. link-local chatter of
	 * mbr_host) and anything else are dropped. */
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_SHOT;
	if (ip4->version != 4 || ip4->ihl < 5)
		return TC_ACT_SHOT;

	/* No such endpoint (e.g. just deleted): drop rather than loop back. */
	dst = lookup_endpoint4(ip4->daddr);
	if (!dst)
		return TC_ACT_SHOT;

	/* The host stack already decremented the TTL when it routed the packet. */
	eth_to_endpoint(eth, dst);
	return bpf_redirect_peer(dst->ifindex, 0);
}

char __license[] SEC("license") = "Dual BSD/GPL";
