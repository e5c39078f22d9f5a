/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared structs and constants of the Membrane datapath. The Go side gets
 * these types through bpf2go (-type ..., see internal/datapath/loader/gen.go),
 * so every layout change here is a change of the pinned map format: keep the
 * structs free of implicit padding and bump nothing silently.
 */
#ifndef __MBR_COMMON_H
#define __MBR_COMMON_H

#include <linux/types.h>

/* Address families used in endpoint_key.family. */
#define MBR_FAMILY_IPV4 4
#define MBR_FAMILY_IPV6 6

/* Key of mbr_endpoints. Family-agnostic: an IPv4 address is stored in the
 * first 4 bytes of addr in network byte order, bytes 4..15 are zero, and
 * family is MBR_FAMILY_IPV4. An IPv6 address will use all 16 bytes with
 * family MBR_FAMILY_IPV6. pad must be zero. 20 bytes, no implicit padding.
 */
struct endpoint_key {
	__u8 addr[16];
	__u8 family;
	__u8 pad[3];
};

/* endpoint_info.flags: which directions of the endpoint's traffic are
 * subject to its policy map. A direction without its flag allows everything
 * (Kubernetes: no policy selects the endpoint for that direction). */
#define MBR_EP_F_INGRESS_ENFORCED 0x1
#define MBR_EP_F_EGRESS_ENFORCED  0x2

/* Value of mbr_endpoints: how to deliver to a local endpoint, and who it is.
 * 24 bytes, 4-byte aligned, no implicit padding.
 */
struct endpoint_info {
	__u32 ifindex;     /* host-side (lxc) veth ifindex */
	__u8 pod_mac[6];   /* MAC of eth0 inside the pod */
	__u8 host_mac[6];  /* MAC of the host-side lxc veth; the pod's router MAC */
	__u16 ep_id;       /* endpoint id assigned by the agent; key of mbr_policy */
	__u16 flags;       /* MBR_EP_F_* */
	__u32 identity;    /* security identity of the endpoint */
};

/* Reserved security identities (the same on every node). Cluster identities
 * are 256..2^24-1; node-local CIDR identities have bit 24 set. */
#define MBR_ID_ANY         0 /* policy_key.identity: any peer */
#define MBR_ID_HOST        1
#define MBR_ID_WORLD       2
#define MBR_ID_UNMANAGED   3
#define MBR_ID_HEALTH      4
#define MBR_ID_INIT        5
#define MBR_ID_REMOTE_NODE 6

/* Key of mbr_ipcache (LPM trie). prefixlen counts the 32 bits of
 * family + pad and then the address prefix bits: an IPv4 /24 has prefixlen
 * 32 + 24, an IPv4 host 32 + 32. addr as in endpoint_key. pad must be zero.
 * 24 bytes. */
struct ipcache_key {
	__u32 prefixlen;
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

/* Full prefix length of an IPv4 ipcache lookup (family + pad + 32 bits). */
#define MBR_IPCACHE_PREFIX4 (32 + 32)

/* Value of mbr_ipcache. 16 bytes. */
struct ipcache_value {
	__u32 identity;        /* identity of the address or prefix */
	__u32 cidr_identity;   /* endpoint /32: CIDR identity of the most specific
				* policy CIDR containing it, 0 if none; other
				* prefixes: equal to identity */
	__u32 tunnel_endpoint; /* unused (0): future overlay */
	__u32 flags;           /* unused (0) */
};

/* Key of an endpoint's policy map (the inner LPM trie of mbr_policy). The
 * identity is in network byte order so that the byte-wise LPM match sees
 * identity, direction, protocol and port in that order. prefixlen is
 * 40 (identity + direction: any protocol and port), 48 (+ protocol: any port)
 * or 48 + n (n leading bits of dport, 1..16; 64 is one exact port).
 * Identity MBR_ID_ANY (0) matches any peer. For ICMP, dport holds the ICMP
 * type (bpf_htons(type)). 12 bytes. */
struct policy_key {
	__u32 prefixlen;
	__u32 identity;  /* network byte order */
	__u8 egress;     /* 1: egress of the endpoint, 0: ingress */
	__u8 protocol;   /* IPPROTO_*; 0 only with prefixlen 40 */
	__be16 dport;
};

/* Full prefix length of a policy lookup. */
#define MBR_POLICY_PREFIX_FULL 64

/* Value of an endpoint's policy map. 8 bytes. */
struct policy_value {
	__u8 deny;       /* 1: deny rule (wins over allows), 0: allow */
	__u8 pad[3];
	__u32 cookie;    /* identifies the deciding rule; opaque to BPF */
};

/* Key of mbr_ct_tcp and mbr_ct_any, always in the original direction of the
 * connection (the direction of its first packet); a reply is found by
 * looking up the reversed tuple. Addresses as in endpoint_key. For ICMP
 * echo, the echo id takes the place of a port: a request (type 8) has
 * sport = id, dport = 0, a reply (type 0) sport = 0, dport = id, so that the
 * reversed tuple of a reply is the tuple of its request. Other ICMP types
 * and other protocols, and non-first fragments, have both ports 0.
 * pad must be zero. 40 bytes. */
struct ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 protocol;
	__u8 family;
	__u8 pad[2];
};

/* ct_entry.flags */
#define MBR_CT_F_SEEN_REPLY 0x1 /* a packet in the reply direction passed */
#define MBR_CT_F_TX_CLOSING 0x2 /* FIN (or RST) in the original direction */
#define MBR_CT_F_RX_CLOSING 0x4 /* FIN (or RST) in the reply direction */
#define MBR_CT_F_CLOSING    (MBR_CT_F_TX_CLOSING | MBR_CT_F_RX_CLOSING)
#define MBR_CT_F_NODEPORT   0x8 /* a NodePort connection to a local backend: replies
				     * get their source translated back (mbr_lb4_nat) */
#define MBR_CT_F_SVC        0x10 /* a pod's connection to a service that the packet path
				      * translated: replies get the service address back */

/* Value of the conntrack maps. 32 bytes. flags was a __u32 before the
 * *_flags_seen bytes were carved out of its upper half: the layout and size
 * are unchanged (little endian), so older pinned maps stay usable and their
 * entries read as "no flags seen yet". */
struct ct_entry {
	__u64 expires;       /* bpf_ktime_get_ns() deadline; past it the entry is absent */
	__u16 flags;         /* MBR_CT_F_* */
	__u8 tx_flags_seen;  /* TCP flags seen (and reported) in the original direction */
	__u8 rx_flags_seen;  /* TCP flags seen (and reported) in the reply direction */
	__u32 src_identity;  /* identity of the original source */
	__u64 packets;       /* both directions */
	__u64 bytes;
};

/* Key of mbr_metrics. reason is 0 (forwarded) or an MBR_DROP_* reason of
 * drop.h; dir is the direction from the endpoint's point of view. 4 bytes. */
struct metrics_key {
	__u8 reason;
	__u8 dir;        /* MBR_DIR_INGRESS or MBR_DIR_EGRESS */
	__u8 pad[2];
};

#define MBR_DIR_INGRESS 0
#define MBR_DIR_EGRESS  1

/* Value of mbr_metrics, per CPU. 16 bytes. */
struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* Monitor levels (dp_config.monitor_level): which flow events the datapath
 * writes to mbr_events (events.h). */
#define MBR_MONITOR_OFF     0 /* none, not even drops (metrics still count) */
#define MBR_MONITOR_DROPS   1 /* drops and policy verdicts */
#define MBR_MONITOR_DEFAULT 2 /* + traces of the first packet of each direction
			       * of a connection and of new SYN/FIN/RST flags */
#define MBR_MONITOR_ALL     3 /* + a trace of every packet */

/* Routing modes (dp_config.routing_mode): how pod traffic reaches a pod on
 * another node. 0 is vxlan, so that a config written before the field
 * existed (zero) reads as the default. */
#define MBR_ROUTING_VXLAN  0 /* encapsulated by the datapath, identity in the VNI */
#define MBR_ROUTING_NATIVE 1 /* to the host stack unencapsulated, routed by the kernel */

/* Value of mbr_config (one entry): run-time settings the agent changes
 * without reloading the programs. The fields after monitor_level were its
 * pad words: the size (and so the pinned map) is unchanged, and a config
 * written by an older agent reads as vxlan without an overlay device.
 * pad must be zero. 16 bytes. */
struct dp_config {
	__u32 monitor_level;   /* MBR_MONITOR_* */
	__u32 routing_mode;    /* MBR_ROUTING_* */
	__u32 overlay_ifindex; /* ifindex of mbr_vxlan (collect_md), 0 if not set up */
	__u32 pad;
};

/* Key of mbr_tunnel: a remote node's pod CIDR, with the shape and rules of
 * struct ipcache_key (prefixlen = 32 + prefix bits). */

/* Value of mbr_tunnel: the node that owns the pod CIDR. An IPv4 node IP
 * takes the first 4 bytes of node_ip in network byte order, the rest zero,
 * family MBR_FAMILY_IPV4 (the only family the datapath encapsulates to yet).
 * pad must be zero. 20 bytes. */
struct tunnel_value {
	__u8 node_ip[16];
	__u8 family;
	__u8 pad[3];
};

/* A VXLAN VNI has 24 bits: the largest identity that fits. */
#define MBR_VNI_MAX 0xffffff

/* ARP constants (RFC 826). Defined here because <linux/if_arp.h> pulls in
 * libc headers that do not build for the bpf target. */
#define MBR_ARPHRD_ETHER  1
#define MBR_ARPOP_REQUEST 1
#define MBR_ARPOP_REPLY   2

/* ARP packet for Ethernet/IPv4 (RFC 826): fixed header and addresses. */
struct arp_eth_ipv4 {
	__be16 hrd;   /* hardware type, MBR_ARPHRD_ETHER */
	__be16 pro;   /* protocol type, ETH_P_IP */
	__u8 hln;     /* hardware address length, 6 */
	__u8 pln;     /* protocol address length, 4 */
	__be16 op;    /* MBR_ARPOP_* */
	__u8 sha[6];  /* sender hardware address */
	__be32 sip;   /* sender protocol address */
	__u8 tha[6];  /* target hardware address */
	__be32 tip;   /* target protocol address */
} __attribute__((packed));

#endif /* __MBR_COMMON_H */
