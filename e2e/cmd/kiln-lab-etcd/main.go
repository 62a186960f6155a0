// Command kiln-lab-etcd runs an etcd member (etcd's own server code, as
// `kiln server` embeds it) as a process of its own, so that the virtual
// lab (e2e/netlab.VMLab) can run `kiln server`s on an external etcd
// cluster and kill servers and members separately. It stops on SIGTERM or
// Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/kilnhq/kiln/inventory/etcd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

func run(ctx context.Context, args []string, errOut io.Writer) int {
	fs := flag.NewFlagSet("kiln-lab-etcd", flag.ContinueOnError)
	fs.SetOutput(errOut)
	var cfg etcd.Config
	fs.StringVar(&cfg.DataDir, "data-dir", "", "etcd's data folder (required)")
	fs.StringVar(&cfg.ClientURL, "listen-client", "http://127.0.0.1:2379", "client URL")
	fs.StringVar(&cfg.PeerURL, "listen-peer", "http://127.0.0.1:2380", "peer URL")
	fs.StringVar(&cfg.Name, "name", "", "member name (with --initial-cluster)")
	fs.StringVar(&cfg.InitialCluster, "initial-cluster", "", "the cluster's members, name=peerURL,… (empty: a single node)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(errOut, nil))
	e, err := etcd.StartEmbedded(ctx, cfg, log)
	if err != nil {
		fmt.Fprintln(errOut, "kiln-lab-etcd:", err)
		return 1
	}
	log.Info("etcd serving", "client", cfg.ClientURL)
	if err := e.Run(ctx); err != nil {
		log.Error("etcd stopped", "err", err)
		return 1
	}
	return 0
}
