// Package backoff is the jittered exponential backoff every retry loop of
// Kiln uses: a Policy doubles its Base per attempt up to Max, and Delay
// spreads the wait over its upper half so that agents failing together do
// not retry together.
package backoff
