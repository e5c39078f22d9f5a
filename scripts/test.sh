#!/usr/bin/env bash
# The test command of the README and of CI: installs what it needs, checks
# that the committed BPF objects match the C sources, vets, builds and runs
# every test (unit, BPF_PROG_RUN, namespace integration, cnitool end to end).
# Needs root for the privileged tiers; with CI=true they fail rather than skip.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
# scripts/deps.sh plus the tools of the benchmark smoke test.
bench/deps.sh

echo "== regenerate BPF objects and compare with the committed ones"
go generate ./internal/datapath/loader/
if git rev-parse --git-dir >/dev/null 2>&1; then
	if ! git diff --exit-code --stat -- internal/datapath/loader/; then
		echo "FAIL: generated BPF objects differ from the committed ones; run 'make generate' and commit" >&2
		exit 1
	fi
fi

echo "== vet and build"
go vet ./...
go build -o bin/ ./cmd/...

echo "== tests"
go test -count=1 -timeout 20m -p 2 ./... 2>&1 | tee /tmp/membrane-test.log
