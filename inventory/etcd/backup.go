package etcd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"
)

// SnapshotStatus describes a snapshot file: its revision, keys and size.
type SnapshotStatus = snapshot.Status

// Backup streams a snapshot of the cluster cli reaches (one member's
// consistent copy of the whole key space) into path, through a temporary
// file that is synced, read back to check it, and linked as path only once
// complete. An existing path is never overwritten.
func Backup(ctx context.Context, cli *clientv3.Client, path string) (SnapshotStatus, error) {
	if _, err := os.Stat(path); err == nil {
		return SnapshotStatus{}, fmt.Errorf("%s exists; choose a new file", path)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".kiln-backup-*")
	if err != nil {
		return SnapshotStatus{}, err
	}
	defer os.Remove(tmp.Name()) // path keeps its own link
	rc, err := cli.Snapshot(ctx)
	if err != nil {
		tmp.Close()
		return SnapshotStatus{}, fmt.Errorf("snapshot: %w", err)
	}
	_, err = io.Copy(tmp, rc)
	rc.Close()
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return SnapshotStatus{}, fmt.Errorf("snapshot: %w", err)
	}
	st, err := snapshot.NewV3(zap.NewNop()).Status(tmp.Name())
	if err != nil {
		return SnapshotStatus{}, fmt.Errorf("snapshot received but unreadable: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o600); err != nil {
		return SnapshotStatus{}, err
	}
	// A link, not a rename: it fails if path appeared meanwhile.
	if err := os.Link(tmp.Name(), path); err != nil {
		return SnapshotStatus{}, err
	}
	return st, nil
}

// RestoreConfig says where Restore makes the new member.
type RestoreConfig struct {
	Snapshot string // the file Backup wrote
	DataDir  string // the new member's etcd data folder; must not exist
	Name     string // member name; default kiln, the embedded server's
	PeerURL  string // default http://127.0.0.1:2380, the embedded server's
	// InitialCluster lists every member (name=peerURL,...) when
	// restoring a cluster started together; default just this one.
	InitialCluster string
	// RevisionBump raises the restored revision so that watchers never
	// see it go back; the revisions in between are marked compacted, so
	// a watch resuming from one is told to read again.
	RevisionBump uint64
}

// DefaultRevisionBump is etcd's advice for restores: more revisions than
// any cluster writes between a backup and its restore.
const DefaultRevisionBump = 1_000_000_000

// Restore makes a new etcd data folder from a snapshot with etcd's own
// restore code (what etcdutl snapshot restore runs): a new cluster ID and
// membership, the snapshot's keys, users and roles. A kiln server (or
// etcd) started on DataDir then serves them.
func Restore(cfg RestoreConfig) error {
	if cfg.Snapshot == "" || cfg.DataDir == "" {
		return errors.New("restore: a snapshot file and a data folder are needed")
	}
	if _, err := os.Stat(cfg.DataDir); err == nil {
		return fmt.Errorf("restore: %s exists; move it away first (a restore never overwrites etcd data)", cfg.DataDir)
	}
	if _, err := snapshot.NewV3(zap.NewNop()).Status(cfg.Snapshot); err != nil {
		return fmt.Errorf("restore: %s is not a readable etcd snapshot (one kiln backup wrote): %w", cfg.Snapshot, err)
	}
	if cfg.Name == "" {
		cfg.Name = "kiln"
	}
	if cfg.PeerURL == "" {
		cfg.PeerURL = "http://127.0.0.1:2380"
	}
	if cfg.InitialCluster == "" {
		cfg.InitialCluster = cfg.Name + "=" + cfg.PeerURL
	}
	err := snapshot.NewV3(zap.NewNop()).Restore(snapshot.RestoreConfig{
		SnapshotPath:        cfg.Snapshot,
		Name:                cfg.Name,
		OutputDataDir:       cfg.DataDir,
		PeerURLs:            []string{cfg.PeerURL},
		InitialCluster:      cfg.InitialCluster,
		InitialClusterToken: "kiln",
		RevisionBump:        cfg.RevisionBump,
		MarkCompacted:       cfg.RevisionBump > 0,
	})
	if err != nil {
		os.RemoveAll(cfg.DataDir) // nothing half-made is left to start on
		return fmt.Errorf("restore %s into %s: %w", cfg.Snapshot, cfg.DataDir, err)
	}
	return nil
}
