/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Peer identities (ipcache) and the per-endpoint policy verdict. */
#ifndef __MBR_POLICY_H
#define __MBR_POLICY_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "common.h"
#include "drop.h"
#include "maps.h"

/* Identity and CIDR identity of an IPv4 address (network byte order): the
 * longest ipcache prefix containing it, or world and no CIDR identity. */
static __always_inline void ipcache_lookup4(__be32 addr, __u32 *identity, __u32 *cidr_identity)
{
	struct ipcache_key key = {
		.prefixlen = MBR_IPCACHE_PREFIX4,
		.family = MBR_FAMILY_IPV4,
	};
	struct ipcache_value *v;

	__builtin_memcpy(key.addr, &addr, sizeof(addr));
	v = bpf_map_lookup_elem(&mbr_ipcache, &key);
	if (!v) {
		*identity = MBR_ID_WORLD;
		*cidr_identity = 0;
		return;
	}
	*identity = v->identity;
	*cidr_identity = v->cidr_identity;
}

/* Look up one identity in an endpoint's policy map and fold the result into
 * *verdict: a deny is final, an allow turns "no rule" into "forwarded". */
static __always_inline void policy_match(void *pmap, struct policy_key *key, __u32 identity,
					 int *verdict, __u32 *cookie)
{
	struct policy_value *v;

	key->identity = bpf_htonl(identity);
	v = bpf_map_lookup_elem(pmap, key);
	if (!v)
		return;
	if (v->deny) {
		*verdict = MBR_DROP_POLICY_DENIED;
		*cookie = v->cookie;
	} else if (*verdict == MBR_DROP_POLICY_NO_RULE) {
		*verdict = MBR_FORWARDED;
		*cookie = v->cookie;
	}
}

/* Verdict of endpoint ep_id's policy for one direction of a new connection
 * with a peer of identity peer_id and CIDR identity cidr_id: the peer
 * identity, then the CIDR identity (if set and different), then ANY are
 * looked up with full prefix length; any deny wins, else any allow, else no
 * rule. *cookie gets the deciding entry's cookie (for flow events). Returns
 * MBR_FORWARDED, MBR_DROP_POLICY_DENIED or MBR_DROP_POLICY_NO_RULE. */
static __always_inline int policy_check(__u16 ep_id, __u8 egress, __u32 peer_id,
					__u32 cidr_id, __u8 protocol, __be16 dport,
					__u32 *cookie)
{
	__u32 outer_key = ep_id;
	struct policy_key key = {
		.prefixlen = MBR_POLICY_PREFIX_FULL,
		.egress = egress,
		.protocol = protocol,
		.dport = dport,
	};
	int verdict = MBR_DROP_POLICY_NO_RULE;
	void *pmap;

	*cookie = 0;
	/* Enforced without a policy map (not yet written): nothing is allowed. */
	pmap = bpf_map_lookup_elem(&mbr_policy, &outer_key);
	if (!pmap)
		return MBR_DROP_POLICY_NO_RULE;

	policy_match(pmap, &key, peer_id, &verdict, cookie);
	if (verdict == MBR_DROP_POLICY_DENIED)
		return verdict;
	if (cidr_id != 0 && cidr_id != peer_id) {
		policy_match(pmap, &key, cidr_id, &verdict, cookie);
		if (verdict == MBR_DROP_POLICY_DENIED)
			return verdict;
	}
	if (peer_id != MBR_ID_ANY)
		policy_match(pmap, &key, MBR_ID_ANY, &verdict, cookie);
	return verdict;
}

#endif /* __MBR_POLICY_H */
