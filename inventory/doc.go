// Package inventory moves the desired inventory from its source (a watched
// directory or a git branch) into etcd, and reads it back.
//
// Key layout, all under one prefix (default "/kiln/"):
//
//	desired/current                 pointer: generation, source revision, counts
//	desired/gens/<gen>              one entry per generation that exists
//	desired/g/<gen>/<kind>/<name>   resolved objects (racks, subnets, images, profiles, machines)
//	desired/g/<gen>/unmanaged/<n>   machines removed from the source, kept visible
//	sources/<name>                  source status: observed and applied revision, problems
//	status/machines/<name>          observed state, written by reconcilers and agents
//
// A source revision is applied atomically at any size. A change that fits
// in one etcd transaction edits the current generation in place together
// with the pointer; a larger one is written as a new generation in chunks
// and published by one compare-and-swap of the pointer. Readers read the
// pointer and then the generation at the pointer's revision, so they always
// see one whole revision.
package inventory
