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
