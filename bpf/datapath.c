// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Membrane datapath entry programs.
 *
 * from_container: tcx ingress of each endpoint's host-side veth (lxc...),
 *   i.e. packets leaving a pod. Answers ARP for the router, enforces the
 *   source address, tracks connections, applies the source's egress policy
 *   and, for a local destination, that endpoint's ingress policy to new
 *   connections, then delivers to local endpoints with bpf_redirect_peer,
 *   encapsulates traffic for pods on other nodes (mbr_tunnel, vxlan routing
 *   mode) through the overlay device with its identity as the VNI, and hands
 *   everything else to the host stack.
 * from_host: tcx ingress of mbr_net, the peer of mbr_host. The host stack
 *   routes the pod CIDR out of mbr_host, so host-originated and forwarded
 *   traffic for local pods arrives here; new connections pass the
 *   destination's ingress policy, then the packet is delivered to the pod.
 *   In vxlan routing mode the cluster CIDR is routed there too: host traffic
 *   for a pod on another node is encapsulated as remote-node (6).
 * from_overlay: tcx ingress of mbr_vxlan (collect_md). The VNI is the
 *   source's identity (0 and host are refused from the wire); new
 *   connections pass the destination's ingress policy with it, then the
 *   packet is delivered to the pod; packets for the router address go to the
 *   host stack.
 *
 * Replies and further packets of a tracked connection pass without policy
 * lookups. Every exit counts one verdict in mbr_metrics (metrics.h); drops,
 * policy verdicts and traces are reported as flow events in mbr_events as
 * far as the monitor level asks (events.h).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "common.h"
#include "drop.h"
#include "maps.h"
#include "eth.h"
#include "l4.h"
#include "ct.h"
#include "policy.h"
#include "metrics.h"
#include "events.h"
#include "tunnel.h"
#include "lb.h"
#include "nodeport.h"

/* Router IPv4 address (first address of the node's pod CIDR, on mbr_host),
 * network byte order. Set by the loader through CollectionSpec.Variables. */
volatile const __u32 ROUTER_IP4 = 0;

/* Answer an ARP request for the router from a known endpoint on its own lxc.
 * The reply names the lxc MAC (host_mac) as the router's MAC and goes back
 * out of the same lxc, i.e. into the pod. */
static __always_inline int handle_arp(struct __sk_buff *skb, struct pkt_obs *o)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arp_eth_ipv4 *arp = (void *)(eth + 1);
	struct endpoint_info *ep;
	__be32 sender_ip;

	/* Truncated ARP: not ours to judge, the stack discards it. */
	if ((void *)(arp + 1) > data_end)
		return pass(skb, TC_ACT_OK, MBR_DIR_EGRESS);

	/* Only Ethernet/IPv4 requests are answered here. */
	if (arp->hrd != bpf_htons(MBR_ARPHRD_ETHER) ||
	    arp->pro != bpf_htons(ETH_P_IP) ||
	    arp->hln != ETH_ALEN || arp->pln != 4 ||
	    arp->op != bpf_htons(MBR_ARPOP_REQUEST))
		return pass(skb, TC_ACT_OK, MBR_DIR_EGRESS);

	/* ARP for someone other than the router: leave it to the stack. */
	if (arp->tip != ROUTER_IP4)
		return pass(skb, TC_ACT_OK, MBR_DIR_EGRESS);

	/* Unknown sender, or a known one on the wrong lxc: drop. Passing it on
	 * would let the host stack answer (arp_ignore=0) for a spoofed sender. */
	sender_ip = arp->sip;
	ep = lookup_endpoint4(sender_ip);
	if (!ep || ep->ifindex != skb->ifindex)
		return drop_packet(skb, o, MBR_DROP_SPOOFED_SOURCE, MBR_DIR_EGRESS);

	/* Turn the request into a reply in place. */
	mac_copy(eth->h_dest, eth->h_source);
	mac_copy(eth->h_source, ep->host_mac);
	arp->op = bpf_htons(MBR_ARPOP_REPLY);
	mac_copy(arp->tha, arp->sha);
	arp->tip = sender_ip;
	mac_copy(arp->sha, ep->host_mac);
	arp->sip = ROUTER_IP4;

	return pass(skb, bpf_redirect(skb->ifindex, 0), MBR_DIR_EGRESS);
}

static __always_inline int ipv4_from_container(struct __sk_buff *skb, struct pkt_obs *o)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = (void *)(eth + 1);
	struct flow4 *flow = &o->flow;
	struct endpoint_info *src, *dst;
	struct tunnel_value *tun;
	__u32 peer_id, cidr_id, dst_ifindex;
	__u32 len = skb->len;
	__u64 now = bpf_ktime_get_ns();
	enum ct_status ct;
	__u16 ct_flags;
	int reason, overlay, svc, rewritten;

	/* Truncated or malformed IPv4 header: drop. */
	if ((void *)(ip4 + 1) > data_end)
		return drop_packet(skb, o, MBR_DROP_INVALID_PACKET, MBR_DIR_EGRESS);
	if (ip4->version != 4 || ip4->ihl < 5)
		return drop_packet(skb, o, MBR_DROP_INVALID_PACKET, MBR_DIR_EGRESS);
	obs_ip4(o, ip4->saddr, ip4->daddr, ip4->protocol);

	/* Anti-spoofing: the source must be the endpoint behind this lxc. */
	src = lookup_endpoint4(ip4->saddr);
	if (!src || src->ifindex != skb->ifindex)
		return drop_packet(skb, o, MBR_DROP_SPOOFED_SOURCE, MBR_DIR_EGRESS);
	o->src_ep = src->ep_id;
	o->src_identity = src->identity;

	/* Truncated L4 header of a first fragment: drop. */
	if (parse_flow4(skb, ip4, flow) < 0)
		return drop_packet(skb, o, MBR_DROP_INVALID_PACKET, MBR_DIR_EGRESS);

	/* A cluster IP that no socket hook translated: to its backend here. */
	svc = lb4_xlate_svc(skb, flow, ETH_HLEN + ip4->ihl * 4);
	if (svc < 0)
		return drop_packet(skb, o, -svc, MBR_DIR_EGRESS);
	if (svc > 0 && reload_ip4(skb, &eth, &ip4) < 0)
		return drop_packet(skb, o, MBR_DROP_INVALID_PACKET, MBR_DIR_EGRESS);

	dst = lookup_endpoint4(flow->daddr);
	if (dst) {
		o->dst_ep = dst->ep_id;
		o->dst_identity = dst->identity;
	}

	ct = ct_lookup4(flow, len, now, &o->report, &ct_flags);
	o->ct_state = ct + 1;
	trace_packet(skb, o, MBR_OBS_FROM_ENDPOINT, MBR_DIR_EGRESS);

	/* A reply of a translated connection: from the frontend again. To a
	 * NodePort client it leaves by the FIB (its source is the node's); to
	 * a pod it goes on as usual. */
	if (ct == CT_REPLY && (ct_flags & (MBR_CT_F_NODEPORT | MBR_CT_F_SVC))) {
		rewritten = lb4_reply_local(skb, flow, ETH_HLEN + ip4->ihl * 4);
		if (rewritten < 0 || reload_ip4(skb, &eth, &ip4) < 0)
			return drop_packet(skb, o, MBR_DROP_INVALID_PACKET, MBR_DIR_EGRESS);
		if (rewritten && (ct_flags & MBR_CT_F_NODEPORT))
			return fib_redirect4(skb, o, MBR_DIR_EGRESS);
	}

	/* Only the first packet of a connection meets policy. */
	if (ct == CT_NEW) {
		/* Egress policy of the source. A local destination's identity
		 * comes from the endpoint map, which is authoritative on this
		 * node; its CIDR identity from the ipcache. */
		if (src->flags & MBR_EP_F_EGRESS_ENFORCED) {
			ipcache_lookup4(flow->daddr, &peer_id, &cidr_id);
			if (dst && dst->identity)
				peer_id = dst->identity;
			o->dst_identity = peer_id;
			reason = policy_check(src->ep_id, 1, peer_id, cidr_id, flow->protocol,
					      flow->policy_dport, &o->cookie);
			policy_verdict(skb, o, reason, MBR_DIR_EGRESS);
			if (reason != MBR_FORWARDED)
				return drop_packet(skb, o, reason, MBR_DIR_EGRESS);
		}
		/* Ingress policy of a local destination, on its behalf: the
		 * packet is redirected straight into its pod. */
		if (dst && (dst->flags & MBR_EP_F_INGRESS_ENFORCED)) {
			ipcache_lookup4(flow->saddr, &peer_id, &cidr_id);
			reason = policy_check(dst->ep_id, 0, src->identity, cidr_id, flow->protocol,
					      flow->policy_dport, &o->cookie);
			policy_verdict(skb, o, reason, MBR_DIR_INGRESS);
			if (reason != MBR_FORWARDED)
				return drop_packet(skb, o, reason, MBR_DIR_INGRESS);
		}
		/* Never pass an untracked connection: its replies would be
		 * judged as new connections of the peer. */
		if (ct_create4(flow, src->identity, len, now, svc > 0 ? MBR_CT_F_SVC : 0) < 0)
			return drop_packet(skb, o, MBR_DROP_CT_MAP_FULL, MBR_DIR_EGRESS);
	}

	/* Not a local endpoint: a pod on another node goes through the overlay
	 * (every packet, not only new connections); the rest, and everything in
	 * native routing mode, to the host stack, which routes it. With TTL 1
	 * the stack answers time exceeded. */
	if (!dst) {
		overlay = overlay_for4(flow->daddr, &tun);
		if (overlay < 0)
			return drop_packet(skb, o, MBR_DROP_NO_TUNNEL, MBR_DIR_EGRESS);
		if (overlay > 0 && tun && ip4->ttl > 1)
			return to_overlay4(skb, o, eth, ip4, tun, overlay, src->identity, src->host_mac, 1,
					   MBR_DIR_EGRESS);
		trace_packet(skb, o, MBR_OBS_TO_STACK, MBR_DIR_EGRESS);
		return pass(skb, TC_ACT_OK, MBR_DIR_EGRESS);
	}

	/* TTL expires here: the stack drops it and sends ICMP time exceeded. */
	if (ip4->ttl <= 1) {
		trace_packet(skb, o, MBR_OBS_TO_STACK, MBR_DIR_EGRESS);
		return pass(skb, TC_ACT_OK, MBR_DIR_EGRESS);
	}

	/* Direct writes first; ip4_dec_ttl invalidates packet pointers. */
	eth_to_endpoint(eth, dst);
	dst_ifindex = dst->ifindex;
	if (ip4_dec_ttl(skb, ip4) < 0)
		return drop_packet(skb, o, MBR_DROP_INVALID_PACKET, MBR_DIR_EGRESS);

	trace_packet(skb, o, MBR_OBS_TO_ENDPOINT, MBR_DIR_INGRESS);
	return pass(skb, bpf_redirect_peer(dst_ifindex, 0), MBR_DIR_EGRESS);
}

SEC("tcx/ingress")
int from_container(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct pkt_obs o = {};

	obs_init(&o, MBR_OBS_FROM_ENDPOINT);

	/* Shorter than an Ethernet header: drop. */
	if ((void *)(eth + 1) > data_end)
		return drop_packet(skb, &o, MBR_DROP_INVALID_PACKET, MBR_DIR_EGRESS);

	switch (eth->h_proto) {
	case bpf_htons(ETH_P_ARP):
		return handle_arp(skb, &o);
	case bpf_htons(ETH_P_IP):
		return ipv4_from_container(skb, &o);
	default:
		/* IPv6 and the rest: the host stack, until they are handled here
		 * (no policy for them yet). */
		return pass(skb, TC_ACT_OK, MBR_DIR_EGRESS);
	}
}

/* Ethernet and IPv4 headers of a packet entering from outside this node's
 * pods (the host stack, the overlay): 0, or why to drop it. Only IPv4 is
 * carried there; ARP, IPv6 and the rest are refused. */
static __always_inline int check_eth_ip4(struct ethhdr *eth, struct iphdr *ip4, void *data_end)
{
	/* Shorter than an Ethernet header. */
	if ((void *)(eth + 1) > data_end)
		return MBR_DROP_INVALID_PACKET;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return MBR_DROP_UNSUPPORTED_L3;
	/* Truncated or malformed IPv4 header. */
	if ((void *)(ip4 + 1) > data_end)
		return MBR_DROP_INVALID_PACKET;
	if (ip4->version != 4 || ip4->ihl < 5)
		return MBR_DROP_INVALID_PACKET;
	return 0;
}

/* Delivers a packet from outside this node's pods to local endpoint dst:
 * conntrack lets replies and established flows pass; a new connection meets
 * dst's ingress policy with the peer identity wire_id (the VNI) or, when
 * wire_id is 0, the ipcache's identity of the source, together with the
 * source's CIDR identity. The sender already decremented the TTL. */
static __always_inline int ingress_to_endpoint4(struct __sk_buff *skb, struct pkt_obs *o,
						struct ethhdr *eth, struct iphdr *ip4,
						struct endpoint_info *dst, __u8 obs_point,
						__u32 wire_id, __u16 new_ct_flags)
{
	struct flow4 *flow = &o->flow;
	__u32 peer_id, cidr_id, dst_ifindex;
	__u32 len = skb->len;
	__u64 now = bpf_ktime_get_ns();
	enum ct_status ct;
	__u16 ct_flags;
	int reason;

	o->dst_ep = dst->ep_id;
	o->dst_identity = dst->identity;

	/* Truncated L4 header of a first fragment: drop. */
	if (parse_flow4(skb, ip4, flow) < 0)
		return drop_packet(skb, o, MBR_DROP_INVALID_PACKET, MBR_DIR_INGRESS);

	ct = ct_lookup4(flow, len, now, &o->report, &ct_flags);
	o->ct_state = ct + 1;
	trace_packet(skb, o, obs_point, MBR_DIR_INGRESS);

	/* A remote backend's reply to a pod whose service connection the
	 * packet path translated: from the service address again. */
	if (ct == CT_REPLY && (ct_flags & MBR_CT_F_SVC)) {
		if (lb4_reply_local(skb, flow, ETH_HLEN + ip4->ihl * 4) < 0 ||
		    reload_ip4(skb, &eth, &ip4) < 0)
			return drop_packet(skb, o, MBR_DROP_INVALID_PACKET, MBR_DIR_INGRESS);
	}

	if (ct == CT_NEW) {
		ipcache_lookup4(flow->saddr, &peer_id, &cidr_id);
		if (wire_id)
			peer_id = wire_id;
		o->src_identity = peer_id;
		if (dst->flags & MBR_EP_F_INGRESS_ENFORCED) {
			reason = policy_check(dst->ep_id, 0, peer_id, cidr_id, flow->protocol,
					      flow->policy_dport, &o->cookie);
			policy_verdict(skb, o, reason, MBR_DIR_INGRESS);
			if (reason != MBR_FORWARDED)
				return drop_packet(skb, o, reason, MBR_DIR_INGRESS);
		}
		if (ct_create4(flow, peer_id, len, now, new_ct_flags) < 0)
			return drop_packet(skb, o, MBR_DROP_CT_MAP_FULL, MBR_DIR_INGRESS);
	}

	eth_to_endpoint(eth, dst);
	dst_ifindex = dst->ifindex;
	trace_packet(skb, o, MBR_OBS_TO_ENDPOINT, MBR_DIR_INGRESS);
	return pass(skb, bpf_redirect_peer(dst_ifindex, 0), MBR_DIR_INGRESS);
}

SEC("tcx/ingress")
int from_host(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = (void *)(eth + 1);
	struct pkt_obs o = {};
	struct endpoint_info *dst;
	struct tunnel_value *tun;
	int reason, overlay;

	obs_init(&o, MBR_OBS_FROM_HOST);

	/* mbr_host is NOARP and carries just pod routes: IPv4 or nothing. */
	reason = check_eth_ip4(eth, ip4, data_end);
	if (reason)
		return drop_packet(skb, &o, reason, MBR_DIR_INGRESS);
	obs_ip4(&o, ip4->saddr, ip4->daddr, ip4->protocol);

	dst = lookup_endpoint4(ip4->daddr);
	if (!dst) {
		/* A pod on another node (vxlan mode routes the cluster CIDR here):
		 * host traffic is a remote node for the receiver. Not tracked
		 * here; the receiving node tracks and judges it. The stack has
		 * decremented the TTL already. */
		overlay = overlay_for4(ip4->daddr, &tun);
		if (overlay < 0)
			return drop_packet(skb, &o, MBR_DROP_NO_TUNNEL, MBR_DIR_INGRESS);
		if (overlay > 0 && tun) {
			if (parse_flow4(skb, ip4, &o.flow) < 0)
				return drop_packet(skb, &o, MBR_DROP_INVALID_PACKET, MBR_DIR_INGRESS);
			trace_packet(skb, &o, MBR_OBS_FROM_HOST, MBR_DIR_INGRESS);
			return to_overlay4(skb, &o, eth, ip4, tun, overlay, MBR_ID_REMOTE_NODE, NULL, 0,
					   MBR_DIR_INGRESS);
		}
		/* No such endpoint (e.g. just deleted): drop rather than loop back. */
		return drop_packet(skb, &o, MBR_DROP_UNKNOWN_ENDPOINT, MBR_DIR_INGRESS);
	}
	/* Source identity from the ipcache (the node's addresses are host). */
	return ingress_to_endpoint4(skb, &o, eth, ip4, dst, MBR_OBS_FROM_HOST, 0, 0);
}

SEC("tcx/ingress")
int from_overlay(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = (void *)(eth + 1);
	struct bpf_tunnel_key key = {};
	struct pkt_obs o = {};
	struct endpoint_info *dst;
	__u32 identity;
	int reason;

	obs_init(&o, MBR_OBS_FROM_OVERLAY);

	/* At tc ingress of a collect_md VXLAN device the data starts at the
	 * inner Ethernet header. Only IPv4 crosses the overlay; senders address
	 * frames without ARP (the receiver rewrites MACs), so ARP here is noise
	 * or a probe. */
	reason = check_eth_ip4(eth, ip4, data_end);
	if (reason)
		return drop_packet(skb, &o, reason, MBR_DIR_INGRESS);
	obs_ip4(&o, ip4->saddr, ip4->daddr, ip4->protocol);

	/* The VNI is the source's identity. No metadata: not from a collect_md
	 * device. Identity 0 is no identity, and the host identity is only
	 * ever local: a remote host is remote-node (6). Both are refused. */
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return drop_packet(skb, &o, MBR_DROP_NO_TUNNEL, MBR_DIR_INGRESS);
	identity = key.tunnel_id;
	o.src_identity = identity;
	if (identity == MBR_ID_ANY || identity == MBR_ID_HOST)
		return drop_packet(skb, &o, MBR_DROP_INVALID_IDENTITY, MBR_DIR_INGRESS);

	/* For the node itself (replies to host connections into remote pods,
	 * remote pods reaching this router address): the host stack. The inner
	 * destination MAC is not the device's, so the frame was classed as for
	 * another host; the stack would discard it as such. */
	if (ip4->daddr == ROUTER_IP4) {
		bpf_skb_change_type(skb, MBR_PACKET_HOST);
		trace_packet(skb, &o, MBR_OBS_TO_STACK, MBR_DIR_INGRESS);
		return pass(skb, TC_ACT_OK, MBR_DIR_INGRESS);
	}

	/* Not for a pod of this node: drop, never route it on. */
	dst = lookup_endpoint4(ip4->daddr);
	if (!dst)
		return drop_packet(skb, &o, MBR_DROP_UNKNOWN_ENDPOINT, MBR_DIR_INGRESS);
	return ingress_to_endpoint4(skb, &o, eth, ip4, dst, MBR_OBS_FROM_OVERLAY, identity, 0);
}

/* NodePort from outside: a new connection to a NodePort frontend gets a
 * backend (its Maglev slot for the client flow, or a random one), then
 * every packet of it is translated the same way. */
static __always_inline int nodeport_fwd4(struct __sk_buff *skb, struct pkt_obs *o, struct iphdr *ip4,
					 struct lb4_service *svc)
{
	struct flow4 *f = &o->flow;
	struct lb4_nat_key rk = {
		.daddr = f->daddr, .proto = f->protocol, .dir = 1,
	};
	struct lb4_nat fwd = {}, rev = {};
	struct endpoint_info *dst;
	struct tunnel_value *tun;
	struct ethhdr *eth;
	__u32 l4_off = ETH_HLEN + ip4->ihl * 4;
	__u32 hash = 0, i, port;
	__be32 new_saddr = f->saddr;
	__be16 new_sport = f->sport;
	int ret, remote = 0, overlay;

	/* A local backend sees the client; a remote one is reached from a
	 * free SNAT port of this node address, so that its replies come back
	 * here (reverse entry: client and frontend). */
	ret = lb4_track(svc, f, &fwd, &hash, 1, &remote);
	if (ret > 0 && remote) {
		rk.saddr = fwd.addr;
		rk.sport = fwd.port;
		rev.addr = f->saddr;
		rev.port = f->sport;
		rev.nat_addr = f->daddr;
		rev.nat_port = f->dport;
		for (i = 0; i < MBR_SNAT_RETRIES; i++) {
			port = MBR_SNAT_PORT_MIN + (hash + i * 7919) % MBR_SNAT_PORT_COUNT;
			rk.dport = bpf_htons((__u16)port);
			if (bpf_map_update_elem(&mbr_lb4_nat, &rk, &rev, BPF_NOEXIST) == 0)
				break;
		}
		if (i == MBR_SNAT_RETRIES)
			ret = -MBR_DROP_CT_MAP_FULL;
		fwd.nat_addr = f->daddr;
		fwd.nat_port = rk.dport;
	}
	if (ret > 0)
		ret = lb4_track_commit(f, &fwd);
	if (ret < 0)
		return drop_packet(skb, o, -ret, MBR_DIR_INGRESS);
	if (fwd.nat_port) {
		new_saddr = fwd.nat_addr;
		new_sport = fwd.nat_port;
	}
	if (lb4_rewrite(skb, l4_off, f->protocol, f->saddr, new_saddr, f->daddr, fwd.addr,
			f->sport, new_sport, f->dport, fwd.port) < 0 ||
	    reload_ip4(skb, &eth, &ip4) < 0)
		return drop_packet(skb, o, MBR_DROP_INVALID_PACKET, MBR_DIR_INGRESS);
	obs_ip4(o, ip4->saddr, ip4->daddr, ip4->protocol);
	dst = lookup_endpoint4(fwd.addr);
	if (dst)
		return ingress_to_endpoint4(skb, o, eth, ip4, dst, MBR_OBS_FROM_NETDEV, 0,
					    MBR_CT_F_NODEPORT);
	/* To the backend's node: through the overlay as the node itself, or
	 * routed. */
	overlay = overlay_for4(fwd.addr, &tun);
	if (overlay < 0)
		return drop_packet(skb, o, MBR_DROP_NO_TUNNEL, MBR_DIR_INGRESS);
	if (overlay > 0 && tun)
		return to_overlay4(skb, o, eth, ip4, tun, overlay, MBR_ID_REMOTE_NODE, NULL, 1,
				   MBR_DIR_INGRESS);
	return fib_redirect4(skb, o, MBR_DIR_INGRESS);
}

/* A remote backend's reply (state rev) to a NodePort connection: back to
 * the client, from the frontend. */
static __always_inline int nodeport_rev4(struct __sk_buff *skb, struct pkt_obs *o, __u32 l4_off,
					 const struct lb4_nat *rev)
{
	struct flow4 *f = &o->flow;
	__be32 caddr, faddr;
	__be16 cport, fport;

	caddr = rev->addr;
	cport = rev->port;
	faddr = rev->nat_addr;
	fport = rev->nat_port;
	if (lb4_rewrite(skb, l4_off, f->protocol, f->saddr, faddr, f->daddr, caddr,
			f->sport, fport, f->dport, cport) < 0)
		return drop_packet(skb, o, MBR_DROP_INVALID_PACKET, MBR_DIR_EGRESS);
	return fib_redirect4(skb, o, MBR_DIR_EGRESS);
}

/* from_netdev: tcx ingress of the node's external devices. Only NodePort
 * traffic and its replies are touched; everything else passes. */
SEC("tcx/ingress")
int from_netdev(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = (void *)(eth + 1);
	struct pkt_obs o = {};
	struct lb4_service *svc;
	struct lb4_nat *rev;
	__u16 dport;

	/* Not IPv4 TCP/UDP, or a non-first fragment: not ours. */
	if (check_eth_ip4(eth, ip4, data_end) ||
	    (ip4->protocol != IPPROTO_TCP && ip4->protocol != IPPROTO_UDP) ||
	    (ip4->frag_off & bpf_htons(MBR_IP_OFFSET)))
		return TC_ACT_OK;
	obs_init(&o, MBR_OBS_FROM_NETDEV);
	obs_ip4(&o, ip4->saddr, ip4->daddr, ip4->protocol);
	if (parse_flow4(skb, ip4, &o.flow) < 0)
		return TC_ACT_OK;
	dport = bpf_ntohs(o.flow.dport);
	if (dport >= NODEPORT_MIN && dport <= NODEPORT_MAX) {
		svc = lb4_lookup_service(o.flow.daddr, o.flow.dport, o.flow.protocol);
		if (!svc || !(svc->flags & MBR_LB_F_NODEPORT))
			return TC_ACT_OK;
		return nodeport_fwd4(skb, &o, ip4, svc);
	}
	if (dport >= MBR_SNAT_PORT_MIN) { /* the SNAT ports run to 65535 */
		/* The same key shape as a local reply's state; only a remote
		 * backend's has a client address. */
		rev = lb4_reply_state(&o.flow);
		if (rev && rev->addr)
			return nodeport_rev4(skb, &o, ETH_HLEN + ip4->ihl * 4, rev);
	}
	return TC_ACT_OK;
}

/* ---- Socket-level service load balancing (cgroup hooks) ----
 *
 * Attached to the node's cgroup v2 root, these run for every socket of the
 * node's processes and pods when it connects or sends: a service address is
 * replaced by a backend's before the kernel routes anything, so TCP packets
 * carry the backend address from the first SYN and the packet path never
 * sees the service. recvmsg and getpeername translate back, so that the
 * application sees the address it asked for.
 */

/* Translate ctx's destination if it is a service port: 1 to go on (also when
 * it is no service), 0 to refuse (no active backend). */
static __always_inline int sock4_translate(struct bpf_sock_addr *ctx, int sendmsg)
{
	__be32 addr = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
	__u8 proto = ctx->protocol;
	struct lb4_service *svc;
	struct lb4_backend *b;
	struct lb4_sk_key sk = {}, fwd = {};
	struct lb4_revnat rn = {};
	__u32 backend_id = 0, *last;
	__u64 netns;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	svc = lb4_lookup_service(addr, port, proto);
	if (!svc)
		return 1;
	/* A socket that sent to this service before keeps its backend while
	 * that backend is active (unconnected UDP). */
	fwd.cookie = bpf_get_socket_cookie(ctx);
	fwd.address = addr;
	fwd.port = port;
	b = NULL;
	last = bpf_map_lookup_elem(&mbr_lb4_sk_fwd, &fwd);
	if (last) {
		backend_id = *last;
		b = bpf_map_lookup_elem(&mbr_lb4_backends, &backend_id);
		if (b && b->state != MBR_LB_BACKEND_ACTIVE)
			b = NULL;
	}
	if (!b) {
		netns = bpf_get_netns_cookie(ctx);
		b = lb4_select(svc, addr, port, proto, netns, 1, 0, 0, &backend_id);
		if (!b) {
			/* msg_src_ip4 exists only for sendmsg. */
			sock_drop(MBR_DROP_NO_SERVICE_BACKEND, sendmsg ? ctx->msg_src_ip4 : 0, addr,
				  port, proto);
			return 0;
		}
		bpf_map_update_elem(&mbr_lb4_sk_fwd, &fwd, &backend_id, BPF_ANY);
	}
	ctx->user_ip4 = b->address;
	ctx->user_port = b->port;

	/* Remember the frontend for replies (UDP) and getpeername. */
	sk.cookie = fwd.cookie;
	sk.address = b->address;
	sk.port = b->port;
	rn.address = addr;
	rn.port = port;
	bpf_map_update_elem(&mbr_lb4_sk_revnat, &sk, &rn, BPF_ANY);
	return 1;
}

/* Show the frontend instead of the backend a socket was translated to. */
static __always_inline void sock4_reverse(struct bpf_sock_addr *ctx)
{
	struct lb4_sk_key sk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct lb4_revnat *rn = bpf_map_lookup_elem(&mbr_lb4_sk_revnat, &sk);

	if (!rn)
		return;
	ctx->user_ip4 = rn->address;
	ctx->user_port = rn->port;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock4_translate(ctx, 0);
}

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_translate(ctx, 1);
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	sock4_reverse(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	sock4_reverse(ctx);
	return 1;
}

char __license[] SEC("license") = "Dual BSD/GPL";
