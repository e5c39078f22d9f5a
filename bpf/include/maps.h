/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Map definitions of the Membrane datapath. Each size is a default that the
 * agent overrides at load time (MapSpec.MaxEntries); the #ifndef lets a test
 * build pick another. Every map is pinned by name so that a restarted agent
 * keeps it and traffic continues.
 */
#ifndef __MBR_MAPS_H
#define __MBR_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "common.h"

#ifndef MBR_ENDPOINTS_MAP_SIZE
#define MBR_ENDPOINTS_MAP_SIZE 65536
#endif
#ifndef MBR_IPCACHE_MAP_SIZE
#define MBR_IPCACHE_MAP_SIZE 524288
#endif
#ifndef MBR_POLICY_MAP_SIZE
#define MBR_POLICY_MAP_SIZE 16384 /* entries of one endpoint's policy map */
#endif
#ifndef MBR_CT_TCP_MAP_SIZE
#define MBR_CT_TCP_MAP_SIZE 1048576
#endif
#ifndef MBR_CT_ANY_MAP_SIZE
#define MBR_CT_ANY_MAP_SIZE 262144
#endif
#ifndef MBR_TUNNEL_MAP_SIZE
#define MBR_TUNNEL_MAP_SIZE 65536
#endif
/* Bytes of the event ring buffer: a power of two and a multiple of the page
 * size. */
#ifndef MBR_EVENTS_RING_SIZE
#define MBR_EVENTS_RING_SIZE (4 * 1024 * 1024)
#endif
/* One entry per (reason, direction); 256 reasons fit a __u8. */
#define MBR_METRICS_MAP_SIZE 512

/* mbr_endpoints: local endpoint IP -> delivery info (lxc ifindex, MACs),
 * endpoint id, policy enforcement flags and security identity. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, MBR_ENDPOINTS_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_endpoints SEC(".maps");

/* mbr_ipcache: IP prefix (longest match) -> security identity of the peer. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, MBR_IPCACHE_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_ipcache SEC(".maps");

/* mbr_tunnel: remote node's pod CIDR (longest match) -> that node's IP, the
 * outer destination of the VXLAN overlay. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct tunnel_value);
	__uint(max_entries, MBR_TUNNEL_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_tunnel SEC(".maps");

/* Template of one endpoint's policy map: (peer identity, direction, protocol,
 * port prefix) -> allow/deny and rule cookie. Created per endpoint from Go. */
struct mbr_policy_inner {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, MBR_POLICY_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
};

/* clang 14 emits the key and value types of an inner map definition (two
 * pointers deep) only as forward declarations, which no loader can size.
 * One full use anywhere in the object makes it emit them: these anchors, in
 * a section that the loader ignores and that is never loaded. */
struct policy_key __mbr_btf_policy_key SEC(".mbr_btf_anchors");
struct policy_value __mbr_btf_policy_value SEC(".mbr_btf_anchors");

/* mbr_policy: endpoint id -> that endpoint's policy map. Its pin keeps the
 * inner maps alive across agent restarts. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, MBR_ENDPOINTS_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct mbr_policy_inner);
} mbr_policy SEC(".maps");

/* mbr_ct_tcp: TCP connection (original-direction tuple) -> state, lifetime. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, MBR_CT_TCP_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_ct_tcp SEC(".maps");

/* mbr_ct_any: every other flow (UDP, SCTP, ICMP, ...) -> state, lifetime. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, MBR_CT_ANY_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_ct_any SEC(".maps");

/* mbr_metrics: (verdict reason, direction) -> packets and bytes, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(max_entries, MBR_METRICS_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_metrics SEC(".maps");

/* mbr_events: flow events (struct flow_event of events.h) to the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, MBR_EVENTS_RING_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_events SEC(".maps");

/* mbr_events_lost: flow events that did not fit mbr_events, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_events_lost SEC(".maps");

/* mbr_config: run-time settings (struct dp_config), written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct dp_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_config SEC(".maps");

#endif /* __MBR_MAPS_H */
