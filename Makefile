# Convenience targets; the README's two commands are scripts/demo.sh and
# scripts/test.sh, which install their own dependencies.
.PHONY: build generate test demo lab-down

build:
	go build -o bin/ ./cmd/...

generate:
	go generate ./internal/datapath/loader/

test:
	scripts/test.sh

demo:
	scripts/demo.sh

lab-down: build
	bin/membrane lab down

# Benchmarks (see docs/performance.md): install the tools, build, run side by
# side in namespaces, write bench/results/*.json and regenerate
# docs/performance.md with its charts. Needs root. `bench` is the quick
# profile (about 10 minutes on a 2-core VM), `bench-full` the long one.
.PHONY: bench bench-full
bench bench-full: export PATH := /usr/local/go/bin:$(PATH)
bench:
	bench/deps.sh
	go build -o bin/ ./cmd/...
	bin/membrane-bench run --profile quick

bench-full:
	bench/deps.sh
	go build -o bin/ ./cmd/...
	bin/membrane-bench run --profile full
