/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Ethernet and IPv4 helpers: MAC rewrite, TTL decrement, endpoint lookup. */
#ifndef __MBR_ETH_H
#define __MBR_ETH_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "common.h"
#include "maps.h"

/* Offset of the IPv4 header checksum in an Ethernet frame. */
#define IP4_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))

static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, ETH_ALEN);
}

/* Look up a local endpoint by IPv4 address (network byte order). */
static __always_inline struct endpoint_info *lookup_endpoint4(__be32 addr)
{
	struct endpoint_key key = {};

	__builtin_memcpy(key.addr, &addr, sizeof(addr));
	key.family = MBR_FAMILY_IPV4;
	return bpf_map_lookup_elem(&mbr_endpoints, &key);
}

/* Rewrite Ethernet addresses for delivery into ep: the frame appears to come
 * from the endpoint's router MAC (its lxc) and goes to the pod's eth0. */
static __always_inline void eth_to_endpoint(struct ethhdr *eth,
					    const struct endpoint_info *ep)
{
	mac_copy(eth->h_dest, ep->pod_mac);
	mac_copy(eth->h_source, ep->host_mac);
}

/* Decrement the IPv4 TTL and fix the header checksum. The caller has checked
 * ttl > 1. Invalidates all packet pointers (bpf_l3_csum_replace may change
 * packet data), so call it after all direct writes. Returns 0 or < 0. */
static __always_inline int ip4_dec_ttl(struct __sk_buff *skb, struct iphdr *ip4)
{
	/* TTL and protocol share one 16-bit word of the header. */
	__be16 old = *(__be16 *)&ip4->ttl;
	__be16 new;

	ip4->ttl--;
	new = *(__be16 *)&ip4->ttl;
	return bpf_l3_csum_replace(skb, IP4_CSUM_OFF, old, new, sizeof(new));
}

#endif /* __MBR_ETH_H */
