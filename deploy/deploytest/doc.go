// Package deploytest holds the static checks of factsync's deployment
// artefacts, run by CI where there is no Docker engine, no cluster and no
// Tilt: the kustomize builds of deploy/k8s render and validate against the
// Kubernetes schemas with kubeconform, deploy/compose.yaml loads with the
// Compose specification's own loader, the Tiltfile runs as Starlark with
// Tilt's functions stubbed, the Dockerfiles pass BuildKit's linter, the
// NATS configs load in nats-server and enforce the permission model, and
// the Grafana dashboard uses only the metric names docs/operations.md
// lists.
//
// The package has only tests: go test ./deploy/deploytest/
package deploytest
