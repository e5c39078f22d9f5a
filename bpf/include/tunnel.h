/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* VXLAN overlay: which node a remote pod lives on (mbr_tunnel), and the
 * encapsulation towards it. The datapath does not build outer headers
 * itself: it attaches tunnel metadata (bpf_skb_set_tunnel_key) and
 * redirects the Ethernet frame to the node's collect_md VXLAN device
 * (mbr_vxlan), whose driver encapsulates. The VNI carries the security
 * identity of the source, so the receiving node applies its policy without
 * knowing the sender's addresses.
 */
#ifndef __MBR_TUNNEL_H
#define __MBR_TUNNEL_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "common.h"
#include "drop.h"
#include "maps.h"
#include "eth.h"
#include "metrics.h"
#include "events.h"

/* TTL of the outer IPv4 header. */
#define MBR_TUNNEL_TTL 64

/* Inner destination MAC of encapsulated frames: locally administered and
 * fixed ("mbr" + 1). The receiving node rewrites it before delivery. */
#define MBR_OVERLAY_MAC0 0x02
#define MBR_OVERLAY_MAC1 0x6d
#define MBR_OVERLAY_MAC2 0x62
#define MBR_OVERLAY_MAC3 0x72
#define MBR_OVERLAY_MAC4 0x00
#define MBR_OVERLAY_MAC5 0x01

/* skb->pkt_type for bpf_skb_change_type (linux/if_packet.h). */
#define MBR_PACKET_HOST 0

/* The run-time settings of mbr_config (never NULL in practice: an array). */
static __always_inline struct dp_config *dp_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&mbr_config, &zero);
}

/* The node that owns the pod CIDR containing addr (network byte order), or
 * NULL if none. */
static __always_inline struct tunnel_value *lookup_tunnel4(__be32 addr)
{
	struct ipcache_key key = {
		.prefixlen = MBR_IPCACHE_PREFIX4,
		.family = MBR_FAMILY_IPV4,
	};

	__builtin_memcpy(key.addr, &addr, sizeof(addr));
	return bpf_map_lookup_elem(&mbr_tunnel, &key);
}

/* The overlay device to encapsulate addr's packets through, or 0 if addr is
 * not behind a tunnel in the current routing mode (native routing, or no
 * mbr_tunnel entry): then the caller goes on as without overlay. *tun gets
 * the tunnel entry; an entry whose overlay cannot be used (no device set,
 * not an IPv4 node) yields -1: the caller drops the packet with
 * MBR_DROP_NO_TUNNEL rather than let it leak unencapsulated. */
static __always_inline int overlay_for4(__be32 addr, struct tunnel_value **tun)
{
	struct dp_config *c = dp_config_get();

	*tun = lookup_tunnel4(addr);
	if (!*tun || !c || c->routing_mode != MBR_ROUTING_VXLAN)
		return 0;
	if (!c->overlay_ifindex || (*tun)->family != MBR_FAMILY_IPV4)
		return -1;
	return c->overlay_ifindex;
}

/* Encapsulate the frame towards the node of tun with the VNI identity and
 * redirect it to the overlay device ifindex (from overlay_for4). src_mac,
 * if not NULL, becomes the inner source MAC; the inner destination MAC is
 * MBR_OVERLAY_MAC. With dec_ttl the IPv4 TTL is decremented (the caller
 * has checked ttl > 1): the datapath routes the packet, not the stack.
 * Traces TO_OVERLAY and counts the verdict in direction dir. */
static __always_inline int to_overlay4(struct __sk_buff *skb, struct pkt_obs *o,
				       struct ethhdr *eth, struct iphdr *ip4,
				       const struct tunnel_value *tun, int ifindex,
				       __u32 identity, const __u8 *src_mac, int dec_ttl, __u8 dir)
{
	struct bpf_tunnel_key key = {};
	__be32 node_ip;

	/* 0 would read as "no identity" on the other side, and the VNI has
	 * 24 bits: an identity beyond them cannot be sent. */
	if (identity == MBR_ID_ANY || identity > MBR_VNI_MAX)
		return drop_packet(skb, o, MBR_DROP_INVALID_IDENTITY, dir);

	__builtin_memcpy(&node_ip, tun->node_ip, sizeof(node_ip));
	key.remote_ipv4 = bpf_ntohl(node_ip); /* the helper wants host order */
	key.tunnel_id = identity;
	key.tunnel_ttl = MBR_TUNNEL_TTL;

	/* Direct writes first; ip4_dec_ttl invalidates packet pointers. */
	if (src_mac)
		mac_copy(eth->h_source, src_mac);
	eth->h_dest[0] = MBR_OVERLAY_MAC0;
	eth->h_dest[1] = MBR_OVERLAY_MAC1;
	eth->h_dest[2] = MBR_OVERLAY_MAC2;
	eth->h_dest[3] = MBR_OVERLAY_MAC3;
	eth->h_dest[4] = MBR_OVERLAY_MAC4;
	eth->h_dest[5] = MBR_OVERLAY_MAC5;
	if (dec_ttl && ip4_dec_ttl(skb, ip4) < 0)
		return drop_packet(skb, o, MBR_DROP_INVALID_PACKET, dir);

	/* A zero UDP checksum is what VXLAN over IPv4 uses (RFC 7348). */
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return drop_packet(skb, o, MBR_DROP_NO_TUNNEL, dir);

	trace_packet(skb, o, MBR_OBS_TO_OVERLAY, dir);
	return pass(skb, bpf_redirect(ifindex, 0), dir);
}

#endif /* __MBR_TUNNEL_H */
