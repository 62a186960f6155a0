package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/kilnhq/kiln/inventory/pki"
)

const certsUsage = `Usage: kiln certs COMMAND [flags]

Commands:
  init   make a lab CA in --dir: ca.pem and ca-key.pem (ECDSA P-256, 5 years)
  issue  sign a server (--host ...) or client (--client) certificate: NAME.pem, NAME-key.pem`

func runCerts(_ context.Context, args []string, out, errOut io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(errOut, certsUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	switch args[0] {
	case "init":
		return runCertsInit(args[1:], out, errOut)
	case "issue":
		return runCertsIssue(args[1:], out, errOut)
	}
	fmt.Fprintf(errOut, "kiln certs: unknown command %q (init, issue)\n", args[0])
	return exitUsage
}

func runCertsInit(args []string, out, errOut io.Writer) int {
	fs := newFlags("certs init", "--dir DIR", errOut)
	dir := fs.String("dir", "", "folder for ca.pem and ca-key.pem (created if needed)")
	cn := fs.String("name", "Kiln lab CA", "the CA's common name")
	if _, code, ok := parse(fs, args); !ok {
		return code
	}
	if *dir == "" {
		fmt.Fprintln(errOut, "kiln certs init: --dir is required")
		return exitUsage
	}
	if err := pki.Init(*dir, *cn, time.Now()); err != nil {
		fmt.Fprintln(errOut, "kiln certs init:", err)
		return exitFail
	}
	fmt.Fprintf(out, "wrote %s/%s and %s/%s (keep the key private; ca.pem goes to the ephemeral image: kiln image build-ephemeral --ca)\n", *dir, pki.CAFile, *dir, pki.CAKeyFile)
	return exitOK
}

func runCertsIssue(args []string, out, errOut io.Writer) int {
	fs := newFlags("certs issue", "--dir DIR --name NAME (--host H ... | --client) [--days N]", errOut)
	var hosts listFlag
	dir := fs.String("dir", "", "the CA's folder (kiln certs init); the certificate is written there")
	name := fs.String("name", "", "file base name and common name (for a client certificate: etcd's user name)")
	fs.Var(&hosts, "host", "DNS name or IP address the server is reached at (repeatable)")
	client := fs.Bool("client", false, "issue a client certificate instead of a server certificate")
	days := fs.Int("days", pki.DefaultDays, "validity in days")
	if _, code, ok := parse(fs, args); !ok {
		return code
	}
	switch {
	case *dir == "":
		fmt.Fprintln(errOut, "kiln certs issue: --dir is required")
		return exitUsage
	case *name == "":
		fmt.Fprintln(errOut, "kiln certs issue: --name is required")
		return exitUsage
	case *client && len(hosts) > 0:
		fmt.Fprintln(errOut, "kiln certs issue: --host is for server certificates; a client certificate (--client) names its user with --name")
		return exitUsage
	}
	ca, err := pki.Load(*dir)
	if err != nil {
		fmt.Fprintln(errOut, "kiln certs issue:", err)
		return exitFail
	}
	certPath, keyPath, err := ca.Issue(*dir, pki.IssueOptions{Name: *name, Hosts: hosts, Client: *client, Days: *days})
	if err != nil {
		fmt.Fprintln(errOut, "kiln certs issue:", err)
		return exitFail
	}
	kind := "server"
	if *client {
		kind = "client"
	}
	fmt.Fprintf(out, "wrote %s certificate %s and key %s (valid %d days)\n", kind, certPath, keyPath, *days)
	return exitOK
}
