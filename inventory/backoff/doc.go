// Package backoff is the jittered exponential backoff of Kiln's
// server-side retry loops (elections, the rack's etcd retries, the work
// queue, the syncer; power doubles with it and adds its own ±25 % jitter): a Policy doubles its Base per attempt up to Max, and Delay
// spreads the wait over its upper half so that agents failing together do
// not retry together.
package backoff
