// Package inventory moves the desired inventory from its source (a watched
// directory or a git branch) into etcd, and reads it back.
//
// Every key lives under one prefix (default "/kiln/") and is computed by
// package keys (Store.Keys); docs/keys.md lists each key family, its
// writer, readers and lifetime. The desired state is a pointer
// (desired/current) to a generation of resolved objects
// (desired/g/<gen>/<kind>/<name>, and unmanaged/<name> for machines
// removed from the source).
//
// A source revision is applied atomically at any size. A change that fits
// in one etcd transaction edits the current generation in place together
// with the pointer; a larger one is written as a new generation in chunks
// and published by one compare-and-swap of the pointer. Readers read the
// pointer and then the generation at the pointer's revision, so they always
// see one whole revision.
package inventory
