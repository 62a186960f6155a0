// Package reconciler is the region leader: region servers elect one
// leader on etcd (a 2 s session, stepping down the moment it is lost),
// which applies the inventory source and moves every machine through its
// lifecycle — commissioning, ready, deploying, deployed, releasing,
// erasing, failed-<phase>, maintenance. Decide is the whole state machine
// as a pure function; the controller feeds it from etcd watches through a
// de-duplicating work queue and writes each decision (status, power task,
// events) in one fenced transaction, group-committed. See
// docs/lifecycle.md.
package reconciler
