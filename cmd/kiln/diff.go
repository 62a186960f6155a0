package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/spec"
)

func runDiff(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("diff", "PATH [flags]", errOut)
	var cf clientFlags
	cf.register(fs)
	dir, res, code, ok := loadArg("diff", fs, args, errOut, exitTrouble)
	if !ok {
		return code
	}
	if res.Problems.Errors() > 0 {
		fmt.Fprint(errOut, res.Problems.String())
		fmt.Fprintf(errOut, "kiln diff: %s is invalid (%d errors): it would be rejected whole\n", dir, res.Problems.Errors())
		return exitTrouble
	}
	store, _, closeFn, ok := cf.open("diff", errOut)
	if !ok {
		return exitTrouble
	}
	defer closeFn()
	rctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	snap, err := store.Snapshot(rctx)
	switch {
	case errors.Is(err, inventory.ErrNotFound):
		snap = &inventory.Snapshot{Inventory: spec.NewInventory()}
		fmt.Fprintln(out, "# nothing applied yet: everything is new")
	case err != nil:
		fmt.Fprintln(errOut, "kiln diff:", explain(cf, err))
		return exitTrouble
	default:
		fmt.Fprintf(out, "# against revision %s applied %s\n", short(snap.Pointer.Revision), snap.Pointer.AppliedAt.Format("2006-01-02 15:04:05Z07:00"))
	}
	changes := diffInventories(snap.Inventory, res.Inventory)
	destructive := 0
	for _, c := range changes {
		fmt.Fprintln(out, c.String())
		if c.destructive() {
			destructive++
		}
	}
	if len(changes) == 0 {
		fmt.Fprintln(out, "no differences")
		return exitOK
	}
	fmt.Fprintf(out, "# %d objects differ; %d changes touch machines' disks or power (marked !)\n", len(changes), destructive)
	return exitFail
}

// change is one object that differs.
type change struct {
	op     byte // + ~ -
	kind   string
	name   string
	origin string
	fields []string
	notes  []reconciler.Note
}

func (c change) destructive() bool {
	for _, n := range c.notes {
		if n.Destructive {
			return true
		}
	}
	return false
}

func (c change) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%c %s %s", c.op, c.kind, c.name)
	if c.origin != "" {
		fmt.Fprintf(&b, " (%s)", c.origin)
	}
	for _, f := range c.fields {
		fmt.Fprintf(&b, "\n    %s", f)
	}
	for _, n := range c.notes {
		mark := " "
		if n.Destructive {
			mark = "!"
		}
		fmt.Fprintf(&b, "\n  %s %s", mark, n.Text)
	}
	return b.String()
}

func diffInventories(old, cur *spec.Inventory) []change {
	var out []change
	for _, kind := range spec.Kinds {
		before, after := byName(old.OfKind(kind)), byName(cur.OfKind(kind))
		names := map[string]bool{}
		for n := range before {
			names[n] = true
		}
		for n := range after {
			names[n] = true
		}
		for _, n := range spec.SortedNames(names) {
			a, b := before[n], after[n]
			switch {
			case a == nil:
				c := change{op: '+', kind: kind, name: n, origin: b.GetHeader().Origin.String()}
				if m, ok := b.(*spec.Machine); ok {
					c.notes = reconciler.Plan(nil, m)
				}
				out = append(out, c)
			case b == nil:
				c := change{op: '-', kind: kind, name: n}
				if m, ok := a.(*spec.Machine); ok {
					c.notes = reconciler.Plan(m, nil)
				}
				out = append(out, c)
			default:
				fields := fieldDiff(a, b)
				if len(fields) == 0 {
					continue
				}
				c := change{op: '~', kind: kind, name: n, origin: b.GetHeader().Origin.String(), fields: fields}
				if kind == spec.KindMachine {
					m := b.(*spec.Machine)
					c.notes = reconciler.PlanWith(a.(*spec.Machine), m, cur.Profiles[m.Spec.Profile])
				}
				if kind == spec.KindSubnet && a.(*spec.Subnet).Spec.CIDR != b.(*spec.Subnet).Spec.CIDR {
					c.notes = append(c.notes, reconciler.Note{Text: "the subnet's addresses change: machines on it get new leases"})
				}
				out = append(out, c)
			}
		}
	}
	return out
}

func byName(objs []spec.Object) map[string]spec.Object {
	m := make(map[string]spec.Object, len(objs))
	for _, o := range objs {
		m[o.GetHeader().Metadata.Name] = o
	}
	return m
}

// fieldDiff lists changed leaf fields as "path: old → new", ignoring where
// the object was read from.
func fieldDiff(a, b spec.Object) []string {
	fa, fb := flatten(a), flatten(b)
	keys := map[string]bool{}
	for k := range fa {
		keys[k] = true
	}
	for k := range fb {
		keys[k] = true
	}
	var out []string
	for _, k := range spec.SortedNames(keys) {
		if strings.HasPrefix(k, "origin.") || fa[k] == fb[k] {
			continue
		}
		out = append(out, fmt.Sprintf("%s: %s → %s", k, orAbsent(fa[k]), orAbsent(fb[k])))
	}
	return out
}

func orAbsent(s string) string {
	if s == "" {
		return "(absent)"
	}
	if len(s) > 60 {
		return s[:57] + "..."
	}
	return s
}

func flatten(o spec.Object) map[string]string {
	b, _ := json.Marshal(o)
	var v any
	json.Unmarshal(b, &v)
	out := map[string]string{}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case map[string]any:
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				walk(join(path, k), x[k])
			}
		case []any:
			for i, e := range x {
				walk(fmt.Sprintf("%s[%d]", path, i), e)
			}
		default:
			s, _ := json.Marshal(x)
			if path == "spec.bmc.password.value" {
				// Never shown; stored in the rack's secrets, which
				// the desired state marks with fromSecret.
				path, s = "spec.bmc.password.fromSecret", []byte("true")
			}
			out[path] = string(s)
		}
	}
	walk("", v)
	return out
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}
