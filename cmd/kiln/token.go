package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kilnhq/kiln/inventory"
)

const tokenUsage = `Usage: kiln token COMMAND [flags]

Tokens for the region API (docs/api.md), stored hashed in etcd. Needs
etcd access (--etcd-endpoints): an administrator's.

Commands:
  create  --name NAME --role viewer|operator|orchestrator [--expires 720h]: print a new token, once
  list    the tokens: name, role, created, expires, revoked (never the token)
  revoke  NAME|ID: refused by every server within a second`

func runToken(ctx context.Context, args []string, out, errOut io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(errOut, tokenUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	switch args[0] {
	case "create":
		return runTokenCreate(ctx, args[1:], out, errOut)
	case "list":
		return runTokenList(ctx, args[1:], out, errOut)
	case "revoke":
		return runTokenRevoke(ctx, args[1:], out, errOut)
	}
	fmt.Fprintf(errOut, "kiln token: unknown command %q (create, list, revoke)\n", args[0])
	return exitUsage
}

func runTokenCreate(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("token create", "--name NAME --role ROLE [--expires 720h]", errOut)
	var cf clientFlags
	cf.register(fs)
	name := fs.String("name", "", "who or what holds it (a-z, 0-9, -._@): events name it")
	role := fs.String("role", "", "viewer (reads), operator (also retry, sync, power) or orchestrator")
	expires := fs.Duration("expires", 720*time.Hour, "lifetime; 0: until revoked")
	if _, code, ok := parseArgs(fs, args, nArgs(0, 0)); !ok {
		return code
	}
	if err := inventory.CheckAPITokenName(*name); err != nil {
		fmt.Fprintln(errOut, "kiln token create: --name:", err)
		return exitUsage
	}
	store, closeFn, ok := cf.connect("token create", errOut)
	if !ok {
		return exitFail
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	tok, rec, err := store.CreateAPIToken(ctx, *name, *role, *expires, time.Now())
	if err != nil {
		fmt.Fprintln(errOut, "kiln token create:", explain(cf, err))
		return exitFail
	}
	fmt.Fprintln(out, tok)
	exp := "never expires"
	if !rec.Expires.IsZero() {
		exp = "expires " + rec.Expires.Format(time.RFC3339)
	}
	fmt.Fprintf(errOut, "token %s (%s, %s): shown once, keep it secret; use it as KILN_TOKEN or Authorization: Bearer\n", rec.Name, rec.Role, exp)
	return exitOK
}

func runTokenList(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("token list", "", errOut)
	var cf clientFlags
	cf.register(fs)
	if _, code, ok := parseArgs(fs, args, nArgs(0, 0)); !ok {
		return code
	}
	store, closeFn, ok := cf.connect("token list", errOut)
	if !ok {
		return exitFail
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	toks, err := store.APITokens(ctx)
	if err != nil {
		fmt.Fprintln(errOut, "kiln token list:", explain(cf, err))
		return exitFail
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tID\tROLE\tCREATED\tEXPIRES\tSTATE")
	now := time.Now()
	for _, t := range toks {
		state := "valid"
		if err := t.Valid(now); err != nil {
			state = strings.TrimPrefix(err.Error(), "token "+t.Name+" ")
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, t.ID, t.Role, t.CreatedAt.Format(time.RFC3339), orNever(t.Expires), state)
	}
	w.Flush()
	return exitOK
}

func orNever(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Format(time.RFC3339)
}

func runTokenRevoke(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("token revoke", "NAME|ID", errOut)
	var cf clientFlags
	cf.register(fs)
	pos, code, ok := parseArgs(fs, args, nArgs(1, 1))
	if !ok {
		return code
	}
	store, closeFn, ok := cf.connect("token revoke", errOut)
	if !ok {
		return exitFail
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	t, err := store.RevokeAPIToken(ctx, pos[0], time.Now())
	if err != nil {
		fmt.Fprintln(errOut, "kiln token revoke:", explain(cf, err))
		return exitFail
	}
	fmt.Fprintf(out, "token %s (%s) revoked\n", t.Name, t.ID)
	return exitOK
}
