#!/usr/bin/env bash
# Installs what building, testing and the lab need on a fresh Debian machine:
# clang/llvm and libbpf headers (BPF regeneration), iproute2 and ping (the
# lab and tests), and checks for Go. Idempotent; quiet when all is there.
set -euo pipefail

need=()
command -v clang >/dev/null || need+=(clang)
command -v llvm-strip >/dev/null || need+=(llvm)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v nsenter >/dev/null || need+=(util-linux)
command -v make >/dev/null || need+=(make)
command -v bird >/dev/null || need+=(bird2)       # the lab's BGP router (native mode)
command -v etcd >/dev/null || need+=(etcd-server) # the lab's external 3-member etcd cluster
if [ ${#need[@]} -gt 0 ]; then
	echo "deps: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Keep package scripts from starting services (bird, etcd): the lab
	# runs its own instances inside namespaces.
	policy=/usr/sbin/policy-rc.d
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		trap 'rm -f "$policy"' EXIT
	fi
	apt-get update -q >/dev/null
	apt-get install -y -q "${need[@]}" >/dev/null
	# The lab runs bird and etcd itself, inside namespaces; the packages'
	# own services must not run on the machine.
	if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
		systemctl disable --now bird etcd >/dev/null 2>&1 || true
	fi
fi

if ! command -v go >/dev/null; then
	if [ -x /usr/local/go/bin/go ]; then
		export PATH=/usr/local/go/bin:$PATH
	else
		echo "deps: Go not found; install Go 1.26+ (https://go.dev/doc/install) and re-run" >&2
		exit 1
	fi
fi

# bpffs: the agent mounts it itself when missing, but tests that pin maps
# directly need it too.
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
	mkdir -p /sys/fs/bpf
	mount -t bpf bpf /sys/fs/bpf
fi
