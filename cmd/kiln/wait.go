package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/reconciler/api"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/term"
)

// waitFor is what kiln wait waits for: phase=X or condition=Type[=Status].
type waitFor struct {
	phase, condition, status string
}

func parseWaitFor(s string) (waitFor, error) {
	k, v, ok := strings.Cut(s, "=")
	switch {
	case ok && k == "phase" && v != "":
		return waitFor{phase: v}, nil
	case ok && k == "condition" && v != "":
		typ, st, _ := strings.Cut(v, "=")
		if st == "" {
			st = "True"
		}
		return waitFor{condition: typ, status: st}, nil
	}
	return waitFor{}, fmt.Errorf("--for %q: want phase=PHASE or condition=TYPE[=STATUS]", s)
}

func (w waitFor) met(st inventory.MachineStatus) bool {
	if w.phase != "" {
		return st.Phase == w.phase
	}
	c := st.Condition(w.condition)
	return c != nil && c.Status == w.status
}

// runWait waits until a machine's status meets --for, showing where it
// stands on one line (a terminal) or a line per change.
func runWait(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("wait", "machine NAME --for phase=deployed [--timeout 30m]", errOut)
	var cf clientFlags
	cf.register(fs)
	forFlag := fs.String("for", "", "phase=PHASE, or condition=TYPE[=STATUS] (STATUS default True)")
	// Here --timeout bounds the whole wait, not one etcd call.
	tf := fs.Lookup("timeout")
	tf.Usage, tf.DefValue = "give up after this long (exit 1)", "30m0s"
	tf.Value.Set("30m")
	limit := &cf.timeout
	pos, code, ok := parseArgs(fs, args, func(pos []string) bool {
		return len(pos) == 2 && resources[strings.ToLower(pos[0])] == "Machine"
	})
	if !ok {
		return code
	}
	want, err := parseWaitFor(*forFlag)
	if err != nil {
		fmt.Fprintln(errOut, "kiln wait:", err)
		return exitUsage
	}
	name := pos[1]
	r, store, closeFn, ok := cf.open("wait", errOut)
	if !ok {
		return exitFail
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, *limit)
	defer cancel()
	line := newStatusLine(out)
	start := time.Now()
	show := func(st inventory.MachineStatus) {
		msg := st.Message
		if st.Reason != "" {
			msg = st.Reason
		}
		line.show(fmt.Sprintf("%s: %s%s %s [%s]", name, dash(st.Phase), stepOf(st), clean(msg), time.Since(start).Round(time.Second)))
	}
	statuses := make(chan inventory.MachineStatus, 16)
	go func() {
		defer close(statuses)
		var err error
		if store != nil {
			err = followEtcd(ctx, store, name, statuses)
		} else {
			err = followAPI(ctx, r.(*apiReader), name, statuses)
		}
		if err != nil && ctx.Err() == nil {
			line.done()
			fmt.Fprintln(errOut, "kiln wait:", explain(cf, err))
		}
	}()
	tick := time.NewTicker(time.Second) // the elapsed time, on a terminal
	defer tick.Stop()
	var last *inventory.MachineStatus
	for done := false; !done; {
		select {
		case st, ok := <-statuses:
			if !ok {
				done = true
				break
			}
			show(st)
			if want.met(st) {
				line.done()
				fmt.Fprintf(out, "%s: %s after %s\n", name, *forFlag, time.Since(start).Round(time.Second))
				return exitOK
			}
			last = &st
		case <-tick.C:
			if last != nil && line.tty {
				show(*last)
			}
		}
	}
	line.done()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		fmt.Fprintf(errOut, "kiln wait: %s: no %s within %s\n", name, *forFlag, *limit)
	}
	return exitFail
}

func stepOf(st inventory.MachineStatus) string {
	if st.Step == "" {
		return ""
	}
	return "/" + st.Step
}

// followEtcd sends the machine's status now and at each change.
func followEtcd(ctx context.Context, store *inventory.Store, name string, to chan<- inventory.MachineStatus) error {
	key := store.Keys().MachineStatus(name)
	resp, err := store.Client().Get(ctx, key)
	if err != nil {
		return err
	}
	if len(resp.Kvs) > 0 {
		var st inventory.MachineStatus
		if json.Unmarshal(resp.Kvs[0].Value, &st) == nil {
			to <- st
		}
	}
	for wr := range store.Client().Watch(clientv3.WithRequireLeader(ctx), key, clientv3.WithRev(resp.Header.Revision+1)) {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			var st inventory.MachineStatus
			if json.Unmarshal(ev.Kv.Value, &st) == nil {
				to <- st
			}
		}
	}
	return ctx.Err()
}

// followAPIChanges calls fn for each change of the API's watch after
// revision since ("" from now on), resuming after a dropped stream, until
// ctx ends; a 410 resumes from now on (say so with gone).
func (a *apiReader) followChanges(ctx context.Context, since string, gone func(), fn func(api.Change)) error {
	last := since
	for ctx.Err() == nil {
		err := a.stream(ctx, last, func(id string, c api.Change) {
			if id != "" {
				last = id
			}
			fn(c)
		})
		var e errAPI
		if errors.As(err, &e) && e.code != http.StatusGone {
			return err
		}
		if errors.As(err, &e) {
			last = ""
			if gone != nil {
				gone()
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return ctx.Err()
}

// followAPI sends the machine's status now and at each change the API's
// watch reports, reconnecting from the last revision when the stream
// drops.
func followAPI(ctx context.Context, a *apiReader, name string, to chan<- inventory.MachineStatus) error {
	st, err := a.Status(ctx, name)
	if err != nil && !errors.Is(err, inventory.ErrNotFound) {
		return err
	}
	if err == nil {
		to <- st
	}
	return a.followChanges(ctx, "", nil, func(c api.Change) {
		if c.Type != "machine" || c.Name != name || c.Machine == nil {
			return
		}
		// The summary has what the line shows; the full status when met.
		if st, err := a.Status(ctx, name); err == nil {
			to <- st
		}
	})
}

// stream reads the API's watch from revision since ("" from now on).
func (a *apiReader) stream(ctx context.Context, since string, fn func(id string, c api.Change)) error {
	req, err := http.NewRequestWithContext(ctx, "GET", a.base+"/api/v1/watch", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	if since != "" {
		req.Header.Set("Last-Event-ID", since)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return errAPI{code: resp.StatusCode, msg: strings.TrimSpace(string(b))}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	id, event := "", ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			id, event = "", ""
		case strings.HasPrefix(line, "id: "):
			id = line[4:]
		case strings.HasPrefix(line, "event: "):
			event = line[7:]
		case strings.HasPrefix(line, "data: ") && event != "hello":
			var c api.Change
			if json.Unmarshal([]byte(line[6:]), &c) == nil {
				fn(id, c)
			}
		}
	}
	return sc.Err()
}

// statusLine rewrites one line on a terminal; elsewhere it prints a line
// per change.
type statusLine struct {
	w    io.Writer
	tty  bool
	last string
}

func newStatusLine(w io.Writer) *statusLine {
	f, ok := w.(*os.File)
	return &statusLine{w: w, tty: ok && term.IsTerminal(int(f.Fd()))}
}

func (l *statusLine) show(s string) {
	if s == l.last {
		return
	}
	if l.tty {
		fmt.Fprintf(l.w, "\r\x1b[K%s", s)
	} else {
		fmt.Fprintln(l.w, s)
	}
	l.last = s
}

func (l *statusLine) done() {
	if l.tty && l.last != "" {
		fmt.Fprintln(l.w)
		l.last = ""
	}
}
