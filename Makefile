# Developer entry points. `make test` is exactly what CI runs.
.PHONY: test lint unit generate faults fuzz

# Every check: gofmt, go vet, golangci-lint, go test -race with fuzz seeds.
test:
	.ci/run

# gofmt, go vet and golangci-lint only.
lint:
	.ci/run lint

# go test -race only.
unit:
	.ci/run test

# Lint events/v1's .proto files and regenerate their Go (commit the result).
generate:
	go tool buf lint
	go tool buf generate

# Simulation, crash and fault-injection tests, run long: faults/... with
# FACTSYNC_LONG=1 (5000 simulator seeds of 7 peers and 150 facts, 6000
# hostile inputs, 100,000 facts through 10 kill -9s of factsync serve,
# 20,000 facts through 10 node kills of a 3-node R3 cluster; without
# -race, which would make them 5x slower), then the tests of other
# packages that honour FACTSYNC_LONG=1.
faults:
	FACTSYNC_LONG=1 go test -count=1 -timeout 60m -v ./faults/...
	FACTSYNC_LONG=1 go test -run 'Sim|Crash|Fault' -count=1 -timeout 60m $$(go list ./... | grep -v /faults/)

# Every fuzz target, one after another, FUZZTIME each (default 60s);
# prints the inputs tried and any crash per target. FUZZPARALLEL=1 keeps
# to one worker on a shared machine.
FUZZTIME ?= 60s
fuzz:
	FUZZTIME=$(FUZZTIME) .ci/fuzz
