// Package cache is a rack's content-addressed image cache: kernels, initrds
// and disk images named by their SHA-256, fetched once from their origin
// (http, https or file URLs) or found in seed folders on offline sites,
// verified while they stream to disk and renamed into place only when the
// hash matches, then served over HTTP at /images/sha256/<hex> with Range
// requests and sendfile. A file is never served before it has been verified
// by this process: files left in the cache folder by an earlier run are
// hashed again on first use, and removed when they no longer match.
// Concurrent transfers are bounded so that a boot storm queues instead of
// failing.
package cache
