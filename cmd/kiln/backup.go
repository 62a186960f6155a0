package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/kilnhq/kiln/inventory/etcd"
)

// runBackup writes a snapshot of etcd, everything Kiln keeps beyond the
// inventory in git, to a new file.
func runBackup(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("backup", "--out FILE [etcd flags]", errOut)
	var cf clientFlags
	cf.register(fs)
	file := fs.String("out", "", "the snapshot file to write (must not exist); keep it as secret as etcd: it holds BMC passwords and token hashes")
	timeout := fs.Duration("snapshot-timeout", 10*time.Minute, "how long the whole snapshot may take")
	if _, code, ok := parseArgs(fs, args, nArgs(0, 0)); !ok {
		return code
	}
	if *file == "" {
		fmt.Fprintln(errOut, "kiln backup: --out is required")
		return exitUsage
	}
	store, closeFn, ok := cf.connect("backup", errOut)
	if !ok {
		return exitFail
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	st, err := etcd.Backup(ctx, store.Client(), *file)
	if err != nil {
		fmt.Fprintln(errOut, "kiln backup:", err)
		return exitFail
	}
	fmt.Fprintf(out, "%s: revision %d, %d keys, %d bytes\n", *file, st.Revision, st.TotalKey, st.TotalSize)
	return exitOK
}

// runRestore makes a fresh embedded-etcd data folder for kiln server
// from a snapshot.
func runRestore(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("restore", "--snapshot FILE --data-dir DIR", errOut)
	snap := fs.String("snapshot", "", "the file kiln backup wrote")
	dataDir := fs.String("data-dir", "", "kiln server's --data-dir: the member is made in DIR/etcd, which must not exist")
	name := fs.String("name", "kiln", "the member's name: kiln for kiln server's embedded etcd; an external member's own name when restoring one")
	peer := fs.String("etcd-listen-peer", "http://127.0.0.1:2380", "the member's peer URL, as kiln server's --etcd-listen-peer")
	cluster := fs.String("initial-cluster", "", "name=peerURL,... of every member when restoring a cluster started together (each member restores the same snapshot); default just this one")
	bump := fs.Uint64("bump-revision", etcd.DefaultRevisionBump, "raise the revision by this much, so that watchers never see it go back (0: keep it)")
	if _, code, ok := parseArgs(fs, args, nArgs(0, 0)); !ok {
		return code
	}
	if *snap == "" || *dataDir == "" {
		fmt.Fprintln(errOut, "kiln restore: --snapshot and --data-dir are required")
		return exitUsage
	}
	dir := filepath.Join(*dataDir, "etcd")
	if err := etcd.Restore(etcd.RestoreConfig{Snapshot: *snap, DataDir: dir, Name: *name, PeerURL: *peer, InitialCluster: *cluster, RevisionBump: *bump}); err != nil {
		fmt.Fprintln(errOut, "kiln restore:", err)
		return exitFail
	}
	fmt.Fprintf(out, "restored %s into %s (member %s); start kiln server --data-dir %s\n", *snap, dir, *name, *dataDir)
	return exitOK
}
