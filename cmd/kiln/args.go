package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
)

// parseArgs parses flags (also after positional arguments) and prints the
// usage when valid rejects the positional arguments. ok false: the
// command exits with code.
func parseArgs(fs *flag.FlagSet, args []string, valid func(pos []string) bool) (pos []string, code int, ok bool) {
	pos, code, ok = parse(fs, args)
	if !ok {
		return nil, code, false
	}
	if !valid(pos) {
		fs.Usage()
		return nil, exitUsage, false
	}
	return pos, 0, true
}

// nArgs accepts from min to max positional arguments.
func nArgs(min, max int) func([]string) bool {
	return func(pos []string) bool { return len(pos) >= min && len(pos) <= max }
}

// connect connects command cmd to etcd; on failure it says why on errOut
// and ok is false. The caller calls closeFn.
func (c *clientFlags) connect(cmd string, errOut io.Writer) (store *inventory.Store, closeFn func(), ok bool) {
	store, closeFn, err := c.store()
	if err != nil {
		fmt.Fprintf(errOut, "kiln %s: %v\n", cmd, err)
		return nil, nil, false
	}
	return store, closeFn, true
}

// open returns where command cmd reads: the region API when --server is
// set (store is then nil), else etcd; on failure it says why on errOut.
func (c *clientFlags) open(cmd string, errOut io.Writer) (r reader, store *inventory.Store, closeFn func(), ok bool) {
	if err := c.resolve(); err != nil {
		fmt.Fprintf(errOut, "kiln %s: %v\n", cmd, err)
		return nil, nil, nil, false
	}
	if c.server != "" {
		a, err := newAPIReader(c.server, c.token, c.serverCA)
		if err != nil {
			fmt.Fprintf(errOut, "kiln %s: %v\n", cmd, err)
			return nil, nil, nil, false
		}
		return a, nil, func() {}, true
	}
	store, closeFn, ok = c.connect(cmd, errOut)
	if !ok {
		return nil, nil, nil, false
	}
	return etcdReader{store}, store, closeFn, true
}

// errEtcdOnly: what the region API does not serve yet.
func errEtcdOnly(what string) error {
	return fmt.Errorf("%s is read from etcd only, not through the region API yet: unset --server/KILN_SERVER and give --etcd-endpoints", what)
}

// loadArg parses the flags of command cmd, whose one argument is an
// inventory folder, and loads the folder; on failure it says why on
// errOut and the command exits with code (failCode when the folder
// cannot be read).
func loadArg(cmd string, fs *flag.FlagSet, args []string, errOut io.Writer, failCode int) (dir string, res *spec.Result, code int, ok bool) {
	pos, code, ok := parseArgs(fs, args, nArgs(1, 1))
	if !ok {
		return "", nil, code, false
	}
	res, err := loadDir(pos[0])
	if err != nil {
		fmt.Fprintf(errOut, "kiln %s: %v\n", cmd, err)
		return "", nil, failCode, false
	}
	return pos[0], res, 0, true
}
