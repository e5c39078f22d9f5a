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

/* Re-derives the Ethernet and IPv4 headers after a helper that changed the
 * packet (checksum and store helpers invalidate packet pointers). 0, or -1
 * if the headers are no longer in the linear data. */
static __always_inline int reload_ip4(struct __sk_buff *skb, struct ethhdr **eth, struct iphdr **ip4)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	*eth = data;
	*ip4 = (void *)(*eth + 1);
	if ((void *)(*ip4 + 1) > data_end)
		return -1;
	return 0;
}

/* The reverse translation state of a packet (mbr_lb4_nat, dir 1), keyed by
 * the packet's own tuple, or NULL. Replies of a local backend (to a NodePort
 * client or to a pod whose service connection the packet path translated)
 * find only the frontend in it; replies of a remote NodePort backend (to
 * the node's SNAT port) also the client. */
static __always_inline struct lb4_nat *lb4_reply_state(const struct flow4 *f)
{
	struct lb4_nat_key k = {
		.saddr = f->saddr, .daddr = f->daddr, .sport = f->sport, .dport = f->dport,
		.proto = f->protocol, .dir = 1,
	};

	return bpf_map_lookup_elem(&mbr_lb4_nat, &k);
}

/* The backend of the packet-path flow f to service port svc: the one its
 * forward entry names while that backend exists (every packet of a
 * connection goes to one backend), else a new choice, Maglev slot of the
 * flow hash or random, written to fwd, with the reverse entry that gives
 * the backend's replies the frontend again (lb4_reply_local) — for every
 * backend, or with local_only for a local one only, setting *remote when
 * it left the entry out. Returns 1 for a new choice (*hash holds the flow
 * hash), 0 for an existing one, -reason to drop. The caller writes the
 * forward entry of a new choice (after adding what only it knows, such as
 * an SNAT port) with lb4_track_commit. */
static __always_inline int lb4_track(struct lb4_service *svc, const struct flow4 *f,
				     struct lb4_nat *fwd, __u32 *hash, int local_only, int *remote)
{
	struct lb4_nat_key fk = {
		.saddr = f->saddr, .daddr = f->daddr, .sport = f->sport, .dport = f->dport,
		.proto = f->protocol,
	};
	struct lb4_nat_key rk = { .dir = 1 };
	struct lb4_nat rev = {}, *cur;
	struct lb4_backend *b;
	__u32 backend_id = 0;

	cur = bpf_map_lookup_elem(&mbr_lb4_nat, &fk);
	if (cur && bpf_map_lookup_elem(&mbr_lb4_backends, &cur->backend_id)) {
		*fwd = *cur;
		return 0;
	}
	*hash = lb4_flow_hash(f->saddr, f->sport, f->dport, f->protocol);
	b = lb4_select(svc, f->daddr, f->dport, f->protocol, f->saddr, 0, *hash, 1, &backend_id);
	if (!b)
		return -MBR_DROP_NO_SERVICE_BACKEND;
	fwd->addr = b->address;
	fwd->port = b->port;
	fwd->backend_id = backend_id;
	if (local_only && !lookup_endpoint4(b->address)) {
		*remote = 1;
		return 1;
	}
	rk.saddr = b->address;
	rk.daddr = f->saddr;
	rk.sport = b->port;
	rk.dport = f->sport;
	rk.proto = f->protocol;
	rev.nat_addr = f->daddr;
	rev.nat_port = f->dport;
	if (bpf_map_update_elem(&mbr_lb4_nat, &rk, &rev, BPF_ANY) < 0)
		return -MBR_DROP_CT_MAP_FULL;
	return 1;
}

/* Writes the forward entry of flow f's new choice. 0, or -reason. */
static __always_inline int lb4_track_commit(const struct flow4 *f, const struct lb4_nat *fwd)
{
	struct lb4_nat_key fk = {
		.saddr = f->saddr, .daddr = f->daddr, .sport = f->sport, .dport = f->dport,
		.proto = f->protocol,
	};

	if (bpf_map_update_elem(&mbr_lb4_nat, &fk, fwd, BPF_ANY) < 0)
		return -MBR_DROP_CT_MAP_FULL;
	return 0;
}

/* The service network (--service-cidr), network byte order; set at load.
 * Packets to it that no socket hook translated are translated here. */
volatile const __be32 SVC_NET4 = 0;
volatile const __be32 SVC_MASK4 = 0xffffffff;

/* Packet-level translation of a pod's connection to a cluster IP that no
 * socket hook translated (a raw socket, a process outside the node's
 * cgroup tree): the destination becomes the flow's backend (lb4_track).
 * Returns 1 if f was translated (f now holds the backend), 0 if it is no
 * service, or -reason to drop. Packet pointers are invalid after 1. */
static __always_inline int lb4_xlate_svc(struct __sk_buff *skb, struct flow4 *f, __u32 l4_off)
{
	struct lb4_service *svc;
	struct lb4_nat fwd = {};
	__u32 hash = 0;
	int ret, remote = 0;

	if ((f->daddr & SVC_MASK4) != SVC_NET4 ||
	    (f->protocol != IPPROTO_TCP && f->protocol != IPPROTO_UDP))
		return 0;
	svc = lb4_lookup_service(f->daddr, f->dport, f->protocol);
	if (!svc)
		return 0;
	/* Every backend's replies are restored, in from_container or on the
	 * way into the pod: the reverse entry is needed for all. */
	ret = lb4_track(svc, f, &fwd, &hash, 0, &remote);
	if (ret > 0)
		ret = lb4_track_commit(f, &fwd);
	if (ret < 0)
		return ret;
	if (lb4_rewrite(skb, l4_off, f->protocol, f->saddr, f->saddr, f->daddr, fwd.addr,
			f->sport, f->sport, f->dport, fwd.port) < 0)
		return -MBR_DROP_INVALID_PACKET;
	f->daddr = fwd.addr;
	f->dport = fwd.port;
	f->policy_dport = fwd.port;
	return 1;
}

/* A reply whose reverse state names only the frontend (a local backend's,
 * see lb4_reply_state): its source becomes the frontend again. 1 if
 * rewritten (f updated, packet pointers invalid), 0 if there is no state,
 * -1 on error. */
static __always_inline int lb4_reply_local(struct __sk_buff *skb, struct flow4 *f, __u32 l4_off)
{
	struct lb4_nat *rn = lb4_reply_state(f);
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
