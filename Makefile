.PHONY: generate tools test ci

# generate regenerates all generated code with the pinned tools.
generate: tools
	tools/generate.sh

tools:
	tools/install.sh

test:
	go test -race ./...

ci:
	bash .ci/run
