#!/usr/bin/env bash
# The README's main command: installs what it needs, builds Membrane, and
# runs the demo lab on the embedded default (one node, embedded etcd):
# pods in two namespaces attached by the real membrane-cni, then endpoints,
# the BPF endpoint map and pod×pod connectivity matrices.
#
# The lab stays up afterwards so you can explore it; remove it with
#   bin/membrane lab down
# Set DEMO_KEEP=0 to tear it down at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
scripts/deps.sh

go build -o bin/ ./cmd/...
M=bin/membrane
export MEMBRANE_LAB=demo

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# A demo lab left over from an earlier run is replaced.
$M lab down >/dev/null 2>&1 || true

step "lab up: node namespace + membrane-agent (embedded etcd)"
$M lab up

step "pods: attached by membrane-cni, exactly as a container runtime calls it"
$M lab pod add web-1   --namespace shop --labels app=web,tier=frontend --port http:8080/tcp
$M lab pod add web-2   --namespace shop --labels app=web,tier=frontend --port http:8080/tcp
$M lab pod add db      --namespace shop --labels app=db --port pg:9090/tcp
$M lab pod add client  --namespace tools --labels app=client
$M lab pod list

# Point the agent commands at the lab node's agent.
SOCK=$($M lab status -o json | sed -n 's/.*"socket": *"\([^"]*\)".*/\1/p' | head -1)
export MEMBRANE_SOCKET=$SOCK

step "membrane status"
$M status

step "membrane endpoint list"
$M endpoint list

step "membrane bpf endpoint list (the datapath's endpoint map)"
$M bpf endpoint list

step "connectivity matrix: TCP 8080 (rows: from, columns: to)"
$M lab probe --port 8080 --proto tcp
step "connectivity matrix: UDP 9090"
$M lab probe --port 9090 --proto udp
step "connectivity matrix: ICMP"
$M lab probe --proto icmp

step "by hand: a pod pings the node's router address, then another pod"
ROUTER=$($M status -o json | sed -n 's/.*"routerIP": *"\([^"]*\)".*/\1/p')
DB=$($M endpoint get shop/db -o json | sed -n 's/.*"ipv4": *"\([^"]*\)".*/\1/p')
$M lab exec tools/client -- ping -c 1 -W 1 "$ROUTER"
$M lab exec tools/client -- ping -c 1 -W 1 "$DB"

step "policy: only shop's web pods may reach shop/db, on TCP 9090"
cat >/tmp/membrane-demo-policy.yaml <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{protocol: TCP, port: 9090}]
YAML
$M apply -f /tmp/membrane-demo-policy.yaml
$M lab probe --port 9090 --proto tcp
step "why can't tools/client reach shop/db?"
$M policy trace --from tools/client --to shop/db --port 9090/tcp
$M observe --to shop/db --verdict DROPPED --last 3
$M delete -f /tmp/membrane-demo-policy.yaml
rm -f /tmp/membrane-demo-policy.yaml

if [ "${DEMO_KEEP:-1}" = 0 ]; then
	step "lab down"
	$M lab down
else
	cat <<MSG

The lab is still up. Try:
  export MEMBRANE_SOCKET=$SOCK MEMBRANE_LAB=demo
  bin/membrane endpoint get shop/web-1
  bin/membrane lab exec shop/web-1 -- ip route
  bin/membrane lab pod del db --namespace shop
  bin/membrane lab down
MSG
fi
