#!/usr/bin/env bash
# Installs what the benchmark harness (membrane-bench, `make bench`, and the
# smoke test in internal/bench) needs on Debian, on top of scripts/deps.sh:
#   iperf3                       TCP stream
#   sockperf                     TCP and UDP request/response
#   wrk, nginx-light             connect/request/close rate
#   iptables, nftables           the IPTABLES-N and NFT-SET-N baselines
#   containernetworking-plugins  bridge, ptp, host-local in /usr/lib/cni
#   util-linux (taskset, nsenter), iproute2 (ip, ss), procps (sysctl), iputils-ping
# Idempotent; quiet when all is there. nginx-light is installed without
# starting the distribution's nginx service: the harness runs its own nginx
# inside a benchmark namespace, and nothing may listen on the machine itself.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

need=()
command -v iperf3 >/dev/null || need+=(iperf3)
command -v sockperf >/dev/null || need+=(sockperf)
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v iptables-restore >/dev/null || need+=(iptables)
command -v nft >/dev/null || need+=(nftables)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/ptp ] && [ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
command -v taskset >/dev/null || need+=(util-linux)
command -v ss >/dev/null || need+=(iproute2)
command -v sysctl >/dev/null || need+=(procps)
command -v ping >/dev/null || need+=(iputils-ping)
if [ ${#need[@]} -gt 0 ]; then
	echo "bench deps: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Keep package scripts from starting services (nginx) while installing,
	# unless the machine already has a policy of its own.
	policy=/usr/sbin/policy-rc.d
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		trap 'rm -f "$policy"' EXIT
	fi
	apt-get update -q >/dev/null
	apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
