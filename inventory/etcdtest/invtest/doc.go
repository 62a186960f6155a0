// Package invtest loads an inventory from YAML and applies it to etcd,
// the setup most tests against a real etcd start with. It is apart from
// etcdtest because inventory's own tests use etcdtest, and this package
// imports inventory.
package invtest
