/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* IPv4 flow parsing: the 5-tuple for conntrack and the port for policy. */
#ifndef __MBR_L4_H
#define __MBR_L4_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "common.h"

/* IP_MF/IP_OFFSET of <net/ip.h>, which is not a uapi header. */
#define MBR_IP_OFFSET 0x1fff

#define MBR_TCP_FIN 0x01
#define MBR_TCP_SYN 0x02
#define MBR_TCP_RST 0x04
#define MBR_TCP_ACK 0x10

#define MBR_ICMP_ECHOREPLY 0
#define MBR_ICMP_ECHO      8

/* One IPv4 packet as conntrack and policy see it. */
struct flow4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;        /* conntrack ports: see struct ct_key */
	__be16 dport;
	__be16 policy_dport; /* port for policy: dport; ICMP: bpf_htons(type) */
	__u8 protocol;
	__u8 tcp_flags;      /* MBR_TCP_*; 0 for other protocols */
};

/* First 14 bytes of a TCP header: ports, sequence numbers, offset, flags. */
struct tcp_head {
	__be16 sport;
	__be16 dport;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff;
	__u8 flags;
};

/* ICMP header with the echo fields. */
struct icmp_echo_head {
	__u8 type;
	__u8 code;
	__sum16 csum;
	__be16 id;
	__be16 seq;
};

/* Fill f from the IPv4 header ip4 (already bounds-checked, ihl >= 5) and the
 * L4 header behind it. Ports are read with bpf_skb_load_bytes, which needs
 * no bounds proofs for the variable header length and keeps packet pointers
 * valid. Returns 0, or -1 if the L4 header of a first fragment is truncated. */
static __always_inline int parse_flow4(struct __sk_buff *skb, const struct iphdr *ip4,
				       struct flow4 *f)
{
	__u32 l4_off = ETH_HLEN + ip4->ihl * 4;
	struct icmp_echo_head icmp;
	struct tcp_head tcp;
	__be16 ports[2];

	f->saddr = ip4->saddr;
	f->daddr = ip4->daddr;
	f->protocol = ip4->protocol;

	/* Non-first fragments carry no L4 header: ports stay 0. */
	if (ip4->frag_off & bpf_htons(MBR_IP_OFFSET))
		return 0;

	switch (f->protocol) {
	case IPPROTO_TCP:
		if (bpf_skb_load_bytes(skb, l4_off, &tcp, sizeof(tcp)) < 0)
			return -1;
		f->sport = tcp.sport;
		f->dport = tcp.dport;
		f->tcp_flags = tcp.flags;
		break;
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(skb, l4_off, ports, sizeof(ports)) < 0)
			return -1;
		f->sport = ports[0];
		f->dport = ports[1];
		break;
	case IPPROTO_ICMP:
		if (bpf_skb_load_bytes(skb, l4_off, &icmp, sizeof(icmp)) < 0)
			return -1;
		if (icmp.type == MBR_ICMP_ECHO)
			f->sport = icmp.id;
		else if (icmp.type == MBR_ICMP_ECHOREPLY)
			f->dport = icmp.id;
		f->policy_dport = bpf_htons(icmp.type);
		return 0;
	default:
		/* Other protocols: no ports. */
		return 0;
	}
	f->policy_dport = f->dport;
	return 0;
}

#endif /* __MBR_L4_H */
