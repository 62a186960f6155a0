// Package ratelimit holds keyed token buckets: one bucket per key (a MAC,
// a source address) for at most a bounded number of keys, the least
// recently seen key forgotten first, so a flood of fresh keys costs
// bounded memory and a fresh key starts with a full bucket. The caller
// passes the time, so tests drive it by hand. DHCP limits requests per
// MAC with it and the boot server script fetches per MAC and per address.
package ratelimit
