package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/reconciler/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// runEvents lists lifecycle events, of one machine or all, and follows
// new ones with --watch.
func runEvents(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("events", "[MACHINE] [flags]", errOut)
	var cf clientFlags
	cf.register(fs)
	watch := fs.Bool("watch", false, "after listing, print new events as they happen")
	fs.BoolVar(watch, "w", false, "short for --watch")
	format := fs.String("o", "text", "output: text or json (one object per line)")
	pos, code, ok := parseArgs(fs, args, func(pos []string) bool {
		return len(pos) <= 1 && (*format == "text" || *format == "json")
	})
	if !ok {
		return code
	}
	machine := ""
	if len(pos) == 1 {
		machine = pos[0]
	}
	r, store, closeFn, ok := cf.open("events", errOut)
	if !ok {
		return exitFail
	}
	defer closeFn()

	lctx, cancel := context.WithTimeout(ctx, cf.timeout)
	evs, rev, err := r.Events(lctx, machine)
	cancel()
	if err != nil {
		fmt.Fprintln(errOut, "kiln events:", explain(cf, err))
		return exitFail
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	print := func(ev inventory.Event) {
		if *format == "json" {
			b, _ := json.Marshal(ev)
			fmt.Fprintln(w, string(b))
			return
		}
		phase := ev.To
		if ev.From != ev.To {
			phase = dash(ev.From) + " → " + ev.To
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", ev.Time.Local().Format("2006-01-02 15:04:05"), ev.Machine, ev.Type, clean(ev.Reason), phase, clean(ev.Message))
	}
	if *format == "text" {
		fmt.Fprintln(w, "TIME\tMACHINE\tTYPE\tREASON\tPHASE\tMESSAGE")
	}
	for _, ev := range evs {
		print(ev)
	}
	w.Flush()
	if len(evs) == 0 && !*watch && *format == "text" {
		fmt.Fprintln(errOut, "no events (they are kept for a week, at most 100 per machine)")
	}
	if !*watch {
		return exitOK
	}
	if store == nil {
		err := r.(*apiReader).followChanges(ctx, strconv.FormatInt(rev, 10), func() {
			fmt.Fprintln(errOut, "kiln events: some events may have been missed (the API no longer kept them); following from now")
		}, func(c api.Change) {
			if c.Type == "event" && c.Event != nil && (machine == "" || c.Event.Machine == machine) {
				print(*c.Event)
				w.Flush()
			}
		})
		if ctx.Err() == nil {
			fmt.Fprintln(errOut, "kiln events: watch:", err)
			return exitFail
		}
		return exitOK
	}
	for resp := range store.Client().Watch(clientv3.WithRequireLeader(ctx), store.Keys().Events(machine), clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := resp.Err(); err != nil {
			fmt.Fprintln(errOut, "kiln events: watch:", err)
			return exitFail
		}
		for _, e := range resp.Events {
			if e.Type != clientv3.EventTypePut {
				continue
			}
			var ev inventory.Event
			if json.Unmarshal(e.Kv.Value, &ev) == nil {
				print(ev)
			}
		}
		w.Flush()
	}
	if ctx.Err() == nil {
		fmt.Fprintln(errOut, "kiln events: watch ended: etcd went away")
		return exitFail
	}
	return exitOK
}

// runRetry asks the region to try a failed machine's phase again.
func runRetry(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("retry", "MACHINE [flags]", errOut)
	var cf clientFlags
	cf.register(fs)
	pos, code, ok := parseArgs(fs, args, nArgs(1, 1))
	if !ok {
		return code
	}
	name := pos[0]
	store, _, closeFn, ok := cf.open("retry", errOut)
	if !ok {
		return exitFail
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	phase, err := store.Retry(ctx, name)
	switch {
	case errors.Is(err, reconciler.ErrNotFailed):
		fmt.Fprintf(errOut, "kiln retry: %s is %s, not failed: nothing to retry\n", name, dash(phase))
		return exitFail
	case err != nil:
		fmt.Fprintln(errOut, "kiln retry:", explain(cf, err))
		return exitFail
	}
	fmt.Fprintf(out, "%s: retry of %s requested at %s; follow it with: kiln events --watch %s\n", name,
		strings.TrimPrefix(phase, reconciler.FailedPrefix), time.Now().Format(time.RFC3339), name)
	return exitOK
}
