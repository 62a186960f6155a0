// Package reconciler will hold the region leader's machine lifecycle:
// leader election on etcd, a de-duplicating work queue, and the state
// machine discovered → commissioning → ready → deploying → deployed →
// releasing → ready. It reads desired state through inventory.Store and
// writes status/machines/<name>. Not built yet; see docs/architecture.md.
package reconciler
