/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Map definitions of the Membrane datapath. Each size is a default that the
 * agent overrides at load time; the #ifndef lets a test build pick another.
 */
#ifndef __MBR_MAPS_H
#define __MBR_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "common.h"

#ifndef MBR_ENDPOINTS_MAP_SIZE
#define MBR_ENDPOINTS_MAP_SIZE 65536
#endif

/* mbr_endpoints: local endpoint IP -> delivery info (lxc ifindex, MACs).
 * Pinned by name so that a restarted agent keeps it and traffic continues. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, MBR_ENDPOINTS_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_endpoints SEC(".maps");

#endif /* __MBR_MAPS_H */
