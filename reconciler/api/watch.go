package api

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/kilnhq/kiln/inventory"
)

// watchBuffer is how many watch responses a watcher may fall behind by
// before it is cut off (it resumes from its last revision).
const watchBuffer = 1024

// heartbeat keeps idle watch connections (and proxies) alive.
const heartbeat = 15 * time.Second

// watch streams changes as Server-Sent Events: "event: machine" (or
// source, event: a machine's new lifecycle event, image, discovered,
// lease: a rack record) with the Change as
// JSON. The id of the last event of each etcd
// revision is that revision, so a client that reconnects with
// Last-Event-ID (or ?since=) gets every change after the last revision it
// saw whole; one too old for the kept changes gets 410 and lists again.
func (s *Server) watch(w http.ResponseWriter, r *http.Request, _ inventory.APIToken) {
	since := int64(0)
	v := r.Header.Get("Last-Event-ID")
	if q := r.URL.Query().Get("since"); q != "" {
		v = q
	}
	if v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("since %q: want an etcd revision", v))
			return
		}
		since = n
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	past, rev, ch, cancel, err := s.cache.subscribe(since, watchBuffer)
	if errors.Is(err, errGone) {
		writeError(w, http.StatusGone, err.Error())
		return
	}
	defer cancel()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	// hello carries the revision the stream starts after: since, or now.
	from := rev
	if since > 0 {
		from = since
	}
	fmt.Fprintf(w, "retry: 1000\nid: %d\nevent: hello\ndata: {\"revision\":%d}\n\n", from, from)
	// A batch holds whole revisions: the id goes on the last change of
	// each, so a resume never starts inside one.
	send := func(batch []Change) error {
		for i, c := range batch {
			id := ""
			if i == len(batch)-1 || batch[i+1].Revision != c.Revision {
				id = "id: " + strconv.FormatInt(c.Revision, 10) + "\n"
			}
			if _, err := fmt.Fprintf(w, "%sevent: %s\ndata: %s\n\n", id, c.Type, c.data); err != nil {
				return err
			}
		}
		fl.Flush()
		return nil
	}
	if err := send(past); err != nil {
		return
	}
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
			if _, err := fmt.Fprint(w, ": heartbeat\n\n"); err != nil {
				return
			}
			fl.Flush()
		case batch, ok := <-ch:
			if !ok {
				return // fell behind, or the cache reloaded: the client resumes
			}
			if err := send(batch); err != nil {
				return
			}
		}
	}
}
