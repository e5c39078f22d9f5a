/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Verdict counting: every exit of an entry program counts exactly one
 * (reason, direction) in mbr_metrics and returns its tc verdict. */
#ifndef __MBR_METRICS_H
#define __MBR_METRICS_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "common.h"
#include "drop.h"
#include "maps.h"

static __always_inline void metrics_count(__u8 reason, __u8 dir, __u32 len)
{
	struct metrics_key key = { .reason = reason, .dir = dir };
	struct metrics_value init = { .packets = 1, .bytes = len };
	struct metrics_value *v;

	/* Per-CPU values: plain increments, no atomics needed. */
	v = bpf_map_lookup_elem(&mbr_metrics, &key);
	if (v) {
		v->packets++;
		v->bytes += len;
		return;
	}
	/* First packet with this key on any CPU. Another CPU may win the
	 * insert race; then our CPU's slot exists and the lookup finds it. */
	if (bpf_map_update_elem(&mbr_metrics, &key, &init, BPF_NOEXIST) == 0)
		return;
	v = bpf_map_lookup_elem(&mbr_metrics, &key);
	if (v) {
		v->packets++;
		v->bytes += len;
	}
}

/* Count a packet that goes on (redirect, stack) and return ret. */
static __always_inline int pass(struct __sk_buff *skb, int ret, __u8 dir)
{
	metrics_count(MBR_FORWARDED, dir, skb->len);
	return ret;
}

/* Count a drop with its reason and return TC_ACT_SHOT. */
static __always_inline int drop(struct __sk_buff *skb, __u8 reason, __u8 dir)
{
	metrics_count(reason, dir, skb->len);
	return TC_ACT_SHOT;
}

#endif /* __MBR_METRICS_H */
