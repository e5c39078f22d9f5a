/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared structs and constants of the Membrane datapath. The Go side gets
 * these types through bpf2go (-type endpoint_key -type endpoint_info), so
 * every layout change here is a change of the pinned map format: keep the
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

/* Value of mbr_endpoints: how to deliver to a local endpoint.
 * 24 bytes, 4-byte aligned, no implicit padding.
 */
struct endpoint_info {
	__u32 ifindex;     /* host-side (lxc) veth ifindex */
	__u8 pod_mac[6];   /* MAC of eth0 inside the pod */
	__u8 host_mac[6];  /* MAC of the host-side lxc veth; the pod's router MAC */
	__u16 ep_id;       /* endpoint id assigned by the agent */
	__u16 flags;       /* reserved for endpoint flags, 0 today */
	__u32 reserved;    /* must be zero */
};

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
