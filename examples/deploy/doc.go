// Package deploy holds no code: it is the home of Kiln's deployment
// examples (systemd units in systemd/, the Helm chart in helm/kiln, the
// plain Kubernetes manifests rendered from that chart in manifests/) and of
// the test that renders the chart with Helm's own engine, decodes every
// object strictly into the Kubernetes API types, checks the security
// properties of every pod, and keeps manifests/kiln.yaml in step with the
// chart (go test ./examples/deploy -run TestManifests -update rewrites it).
package deploy
