// Package election runs a leader election on etcd for the region servers
// and the rack agents. Run campaigns with concurrency.Election under a
// session of a short, chosen TTL (etcd's default of 60s would leave a
// dead leader in place for a minute), calls lead for each term won, and
// ends that term's context the moment the session closes or the leader
// key is deleted, so a deposed leader stops at once; its Term carries the
// leader key and create revision that fence every leader write. On the
// way out the key is resigned and the lease revoked within a short
// timeout, so a standby takes over without waiting for the TTL.
package election
