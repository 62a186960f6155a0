package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcd"
	"github.com/kilnhq/kiln/spec"
)

// runEtcd runs the etcd administration subcommands.
func runEtcd(ctx context.Context, args []string, out, errOut io.Writer) int {
	if len(args) == 0 || args[0] != "init-roles" {
		fmt.Fprintln(errOut, "Usage: kiln etcd init-roles [flags]\n\nCreates the etcd roles and users of the region, each rack and a read-only viewer; see docs/operations.md, Access control.")
		return exitUsage
	}
	fs := newFlags("etcd init-roles", "[flags]", errOut)
	var (
		cf          clientFlags
		racks       listFlag
		fromDesired = fs.Bool("from-desired", true, "also create a role for every Rack in the applied desired state")
		pwDir       = fs.String("password-dir", "", "folder of password files, one per user named like the user (root, kiln-region, kiln-rack-NAME, kiln-viewer); users without a file authenticate by client certificate only")
		enableAuth  = fs.Bool("enable-auth", false, "turn etcd authentication on once the roles exist (then every client needs a certificate or a user)")
	)
	fs.Var(&racks, "rack", "create the role of this rack (repeatable)")
	cf.register(fs)
	if _, code, ok := parse(fs, args[1:]); !ok {
		return code
	}
	store, closeFn, ok := cf.connect("etcd init-roles", errOut)
	if !ok {
		return exitFail
	}
	defer closeFn()
	rctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	names, code, ok := roleRacks(rctx, store, cf, racks, *fromDesired, out, errOut)
	if !ok {
		return code
	}
	pw, err := readPasswords(*pwDir)
	if err != nil {
		fmt.Fprintln(errOut, "kiln etcd init-roles:", err)
		return exitUsage
	}
	// Without a root password, only a root client certificate can
	// administer etcd once auth is on: refuse to lock everyone out.
	if _, ok := pw[etcd.RootUser]; *enableAuth && !ok && cf.cert == "" {
		fmt.Fprintln(errOut, "kiln etcd init-roles: --enable-auth would lock etcd: root has no password (give a file root in --password-dir) and this command holds no client certificate (--etcd-cert, CN root)")
		return exitUsage
	}
	err = etcd.InitRoles(rctx, store.Client(), etcd.RolesConfig{Layout: store.Keys(), Racks: names, Passwords: pw, EnableAuth: *enableAuth},
		func(s string) { fmt.Fprintln(out, s) })
	if err != nil {
		fmt.Fprintln(errOut, "kiln etcd init-roles:", err)
		return exitFail
	}
	reportRoles(out, names, *enableAuth)
	return exitOK
}

// roleRacks are the racks to create roles for: those given with --rack
// and, with --from-desired, every Rack of the applied desired state.
func roleRacks(ctx context.Context, store *inventory.Store, cf clientFlags, racks []string, fromDesired bool, out, errOut io.Writer) ([]string, int, bool) {
	all := map[string]bool{}
	for _, r := range racks {
		all[r] = true
	}
	if fromDesired {
		snap, err := store.Snapshot(ctx, spec.KindRack)
		switch {
		case errors.Is(err, inventory.ErrNotFound):
			fmt.Fprintln(out, "no desired state applied yet: only the racks given with --rack get roles")
		case err != nil:
			fmt.Fprintln(errOut, "kiln etcd init-roles: read racks:", etcd.Unreachable(cf.config().Endpoints, err))
			return nil, exitFail, false
		default:
			for name := range snap.Inventory.Racks {
				all[name] = true
			}
		}
	}
	names := make([]string, 0, len(all))
	for r := range all {
		// A '/' would let one rack's prefix cover another's keys.
		if r == "" || strings.ContainsAny(r, "/ \t\n") {
			fmt.Fprintf(errOut, "kiln etcd init-roles: rack %q: not a rack name\n", r)
			return nil, exitUsage, false
		}
		names = append(names, r)
	}
	sort.Strings(names)
	return names, 0, true
}

// reportRoles says what init-roles left in place.
func reportRoles(out io.Writer, names []string, enableAuth bool) {
	fmt.Fprintf(out, "roles up to date: %s, %s, %d rack(s)", etcd.RegionUser, etcd.ViewerUser, len(names))
	if len(names) > 0 {
		fmt.Fprintf(out, " (%s)", strings.Join(names, ", "))
	}
	fmt.Fprintln(out)
	if !enableAuth {
		fmt.Fprintln(out, "authentication not enabled: pass --enable-auth when every component has its credentials")
	}
}

// readPasswords reads DIR/<user> for every file in dir; a trailing
// newline is not part of the password.
func readPasswords(dir string) (map[string]string, error) {
	pw := map[string]string{}
	if dir == "" {
		return pw, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("password dir: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("password of %s: %w", e.Name(), err)
		}
		p := strings.TrimRight(string(b), "\r\n")
		if p == "" {
			return nil, fmt.Errorf("password file %s is empty", filepath.Join(dir, e.Name()))
		}
		pw[e.Name()] = p
	}
	return pw, nil
}
