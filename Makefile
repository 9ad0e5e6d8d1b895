# Developer entry points. `make test` is exactly what CI runs.
.PHONY: test lint unit generate faults

# Every check: gofmt, go vet, golangci-lint, go test -race with fuzz seeds.
test:
	.ci/run

# gofmt, go vet and golangci-lint only.
lint:
	.ci/run lint

# go test -race only.
unit:
	.ci/run test

# Regenerate events/v1 from its .proto files (commit the result).
generate:
	go tool buf generate

# Simulation, crash and fault-injection tests, run long: tests that honour
# FACTSYNC_LONG=1 raise their seed counts and durations.
faults:
	FACTSYNC_LONG=1 go test -run 'Sim|Crash|Fault' -count=1 -timeout 60m ./...
