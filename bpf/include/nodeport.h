/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Packet-level load balancing for NodePort services: traffic from outside
 * the node's cgroup (other hosts) arrives on an external device, where
 * from_netdev translates it. A local backend is reached by DNAT alone (the
 * client address is kept; from_container translates the replies back); a
 * backend on another node by DNAT and SNAT to the node's address, so that
 * its replies come back here, where from_netdev translates them back and
 * sends them to the client. Everything else on the device passes untouched.
 */
#ifndef __MBR_NODEPORT_H
#define __MBR_NODEPORT_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "common.h"
#include "drop.h"
#include "eth.h"
#include "events.h"
#include "lb.h"
#include "metrics.h"

#define MBR_AF_INET 2
#define IP4_SADDR_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP4_DADDR_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))

/* Rewrites addresses and ports of an IPv4 TCP or UDP packet whose L4 header
 * starts at l4_off, fixing both checksums. Packet pointers are invalid
 * afterwards. < 0 on error. */
static __always_inline int lb4_rewrite(struct __sk_buff *skb, __u32 l4_off, __u8 proto,
				       __be32 old_saddr, __be32 new_saddr,
				       __be32 old_daddr, __be32 new_daddr,
				       __be16 old_sport, __be16 new_sport,
				       __be16 old_dport, __be16 new_dport)
{
	__u32 csum_off = l4_off + (proto == IPPROTO_TCP ? 16 : 6);
	__u64 l4f = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (old_saddr != new_saddr) {
		if (bpf_l4_csum_replace(skb, csum_off, old_saddr, new_saddr, l4f | BPF_F_PSEUDO_HDR | 4) < 0 ||
		    bpf_l3_csum_replace(skb, IP4_CSUM_OFF, old_saddr, new_saddr, 4) < 0 ||
		    bpf_skb_store_bytes(skb, IP4_SADDR_OFF, &new_saddr, 4, 0) < 0)
			return -1;
	}
	if (old_daddr != new_daddr) {
		if (bpf_l4_csum_replace(skb, csum_off, old_daddr, new_daddr, l4f | BPF_F_PSEUDO_HDR | 4) < 0 ||
		    bpf_l3_csum_replace(skb, IP4_CSUM_OFF, old_daddr, new_daddr, 4) < 0 ||
		    bpf_skb_store_bytes(skb, IP4_DADDR_OFF, &new_daddr, 4, 0) < 0)
			return -1;
	}
	if (old_sport != new_sport) {
		if (bpf_l4_csum_replace(skb, csum_off, old_sport, new_sport, l4f | 2) < 0 ||
		    bpf_skb_store_bytes(skb, l4_off, &new_sport, 2, 0) < 0)
			return -1;
	}
	if (old_dport != new_dport) {
		if (bpf_l4_csum_replace(skb, csum_off, old_dport, new_dport, l4f | 2) < 0 ||
		    bpf_skb_store_bytes(skb, l4_off + 2, &new_dport, 2, 0) < 0)
			return -1;
	}
	return 0;
}

/* Sends a translated packet (whose source may now be a node address, which
 * the stack would refuse as martian) straight out of the device the FIB
 * names for its destination, resolving the neighbour if needed. */
static __always_inline int fib_redirect4(struct __sk_buff *skb, struct pkt_obs *o, __u8 dir)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = (void *)(eth + 1);
	struct bpf_fib_lookup p = {};
	long rc;

	if ((void *)(ip4 + 1) > data_end)
		return drop_packet(skb, o, MBR_DROP_INVALID_PACKET, dir);
	p.family = MBR_AF_INET;
	p.l4_protocol = ip4->protocol;
	p.tot_len = bpf_ntohs(ip4->tot_len);
	p.ipv4_src = ip4->saddr;
	p.ipv4_dst = ip4->daddr;
	p.ifindex = skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex;
	rc = bpf_fib_lookup(skb, &p, sizeof(p), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		mac_copy(eth->h_dest, p.dmac);
		mac_copy(eth->h_source, p.smac);
		return pass(skb, bpf_redirect(p.ifindex, 0), dir);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return pass(skb, bpf_redirect_neigh(p.ifindex, NULL, 0, 0), dir);
	return drop_packet(skb, o, MBR_DROP_NO_ROUTE, dir);
}

/* The translation state of a local backend's reply to a NodePort client
 * (conntrack flagged the connection), or NULL. */
static __always_inline struct lb4_nat *nodeport_local_reply_state(const struct flow4 *f)
{
	struct lb4_nat_key k = {
		.saddr = f->saddr, .daddr = f->daddr, .sport = f->sport, .dport = f->dport,
		.proto = f->protocol, .dir = 1,
	};

	return bpf_map_lookup_elem(&mbr_lb4_nat, &k);
}

/* Such a reply appears to come from the frontend and leaves by the FIB. */
static __always_inline int nodeport_reply_local4(struct __sk_buff *skb, struct pkt_obs *o,
						 __u32 l4_off, const struct flow4 *f,
						 const struct lb4_nat *rn)
{
	__be32 new_saddr = rn->nat_addr;
	__be16 new_sport = rn->nat_port;

	if (lb4_rewrite(skb, l4_off, f->protocol, f->saddr, new_saddr, f->daddr, f->daddr,
			f->sport, new_sport, f->dport, f->dport) < 0)
		return drop_packet(skb, o, MBR_DROP_INVALID_PACKET, MBR_DIR_EGRESS);
	return fib_redirect4(skb, o, MBR_DIR_EGRESS);
}

/* The service network (--service-cidr), network byte order; set at load.
 * Packets to it that no socket hook translated are translated here. */
volatile const __be32 SVC_NET4 = 0;
volatile const __be32 SVC_MASK4 = 0xffffffff;

/* Packet-level translation of a pod's connection to a cluster IP that no
 * socket hook translated (a raw socket, a process outside the node's
 * cgroup tree): the flow's backend is kept in mbr_lb4_nat (chosen once,
 * Maglev or random), the destination rewritten to it, and a reverse entry
 * lets the reply path restore the service address. Returns 1 if f was
 * translated (f now holds the backend), 0 if it is no service, or -reason
 * to drop. Packet pointers are invalid after 1. */
static __always_inline int lb4_xlate_svc(struct __sk_buff *skb, struct flow4 *f, __u32 l4_off)
{
	struct lb4_nat_key fk = {
		.saddr = f->saddr, .daddr = f->daddr, .sport = f->sport, .dport = f->dport,
		.proto = f->protocol,
	};
	struct lb4_nat_key rk = { .saddr = 0 };
	struct lb4_nat fwd = {}, rev = {}, *cur;
	struct lb4_service *svc;
	struct lb4_backend *b;
	__u32 backend_id = 0;

	if ((f->daddr & SVC_MASK4) != SVC_NET4 ||
	    (f->protocol != IPPROTO_TCP && f->protocol != IPPROTO_UDP))
		return 0;
	svc = lb4_lookup_service(f->daddr, f->dport, f->protocol);
	if (!svc)
		return 0;
	cur = bpf_map_lookup_elem(&mbr_lb4_nat, &fk);
	if (cur && bpf_map_lookup_elem(&mbr_lb4_backends, &cur->backend_id)) {
		fwd = *cur;
	} else {
		b = lb4_select(svc, f->daddr, f->dport, f->protocol, f->saddr, 0,
			       lb4_flow_hash(f->saddr, f->sport, f->dport, f->protocol), 1, &backend_id);
		if (!b)
			return -MBR_DROP_NO_SERVICE_BACKEND;
		fwd.addr = b->address;
		fwd.port = b->port;
		fwd.backend_id = backend_id;
		rk.saddr = b->address;
		rk.daddr = f->saddr;
		rk.sport = b->port;
		rk.dport = f->sport;
		rk.proto = f->protocol;
		rk.dir = 1;
		rev.nat_addr = f->daddr;
		rev.nat_port = f->dport;
		if (bpf_map_update_elem(&mbr_lb4_nat, &rk, &rev, BPF_ANY) < 0 ||
		    bpf_map_update_elem(&mbr_lb4_nat, &fk, &fwd, BPF_ANY) < 0)
			return -MBR_DROP_CT_MAP_FULL;
	}
	if (lb4_rewrite(skb, l4_off, f->protocol, f->saddr, f->saddr, f->daddr, fwd.addr,
			f->sport, f->sport, f->dport, fwd.port) < 0)
		return -MBR_DROP_INVALID_PACKET;
	f->daddr = fwd.addr;
	f->dport = fwd.port;
	f->policy_dport = fwd.port;
	return 1;
}

/* A reply on a connection that lb4_xlate_svc translated: its source becomes
 * the service address again. 1 if rewritten (f updated, packet pointers
 * invalid), 0 if there is no state, -1 on error. */
static __always_inline int lb4_reply_svc(struct __sk_buff *skb, struct flow4 *f, __u32 l4_off)
{
	struct lb4_nat *rn = nodeport_local_reply_state(f);
	__be32 vip;
	__be16 vport;

	if (!rn)
		return 0;
	vip = rn->nat_addr;
	vport = rn->nat_port;
	if (lb4_rewrite(skb, l4_off, f->protocol, f->saddr, vip, f->daddr, f->daddr,
			f->sport, vport, f->dport, f->dport) < 0)
		return -1;
	f->saddr = vip;
	f->sport = vport;
	return 1;
}

#endif /* __MBR_NODEPORT_H */
