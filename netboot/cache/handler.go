package cache

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// Handler serves verified images: GET and HEAD /images/sha256/<hex>, and
// /images/sha256/<hex>/<name> for clients that want a file name (kernels).
// Range, If-Modified-Since and If-None-Match (the ETag is the hash) are
// honoured, and bodies are sent with sendfile. Only verified images are
// served; anything else is 404. A request for an image being fetched, or
// left by an earlier run and not verified yet, waits for it. At most MaxServes GET transfers run at a
// time: the others wait up to QueueTimeout (or until the client leaves)
// and then get 503 with Retry-After.
func (c *Cache) Handler() http.Handler {
	return http.HandlerFunc(c.serve)
}

// RestrictedHandler is Handler for the clients whose source address allow
// accepts; others get 403 and are counted in kiln_http_image_refused_total.
// allow is asked on every request, so it may follow a changing view (a
// rack's subnets); a nil allow refuses every client.
//
// Images are not secrets in Kiln's model (secrets go in the user-data,
// which needs the machine's token), and iPXE and the machine agent fetch
// them before they hold anything that could be checked cheaply on every
// range request: the source address is what is checked.
func (c *Cache) RestrictedHandler(allow func(netip.Addr) bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		a := ap.Addr().Unmap()
		if err != nil || allow == nil || !allow(a) {
			c.m.refused.Inc()
			c.log.Info("image cache: request refused, client outside the rack's subnets", "peer", r.RemoteAddr, "path", r.URL.Path)
			http.Error(w, "images are served only to clients on this rack's subnets; "+a.String()+" is not on one", http.StatusForbidden)
			return
		}
		c.serve(w, r)
	})
}

func (c *Cache) serve(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/images/sha256/")
	if !ok {
		http.NotFound(w, r)
		return
	}
	hexHash, name, _ := strings.Cut(rest, "/")
	h, err := parseHash(hexHash)
	if err != nil || strings.Contains(name, "/") {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	// An image left by an earlier run is verified first, and a request
	// for an image being fetched waits for it, both within QueueTimeout.
	ctx, cancel := context.WithTimeout(r.Context(), c.o.QueueTimeout)
	e, err := c.local(ctx, h)
	cancel()
	if err != nil {
		if r.Context().Err() != nil {
			return
		}
		if errors.Is(err, context.DeadlineExceeded) {
			c.busy(w)
			return
		}
		if !errors.Is(err, ErrNotCached) {
			c.log.Warn("image cache: not serving an image", "sha256", h, "err", err)
		}
		// Say why, so that a machine agent's download error carries the
		// rack's reason (kiln get images -o wide shows it too).
		msg := "sha256 " + h + " is not in this rack's image cache"
		if st := c.Status(h); st.State == Failed && st.Err != "" {
			msg += ": " + st.Err
		}
		http.Error(w, msg, http.StatusNotFound)
		return
	}

	if r.Method == http.MethodGet {
		if !c.acquire(w, r) {
			return
		}
		defer func() { <-c.serveSem }()
	}

	f, err := os.Open(e.Path)
	if err != nil {
		c.log.Error("image cache: open a verified image", "path", e.Path, "err", err)
		http.Error(w, "image unavailable", http.StatusInternalServerError)
		return
	}
	defer f.Close()
	hdr := w.Header()
	hdr.Set("ETag", `"sha256:`+h+`"`)
	hdr.Set("Cache-Control", "public, max-age=31536000, immutable")
	if name == "" || !strings.Contains(name, ".") {
		hdr.Set("Content-Type", "application/octet-stream")
	}
	cw := &countingWriter{ResponseWriter: w}
	http.ServeContent(cw, r, name, e.ModTime, f)
	c.m.served.Add(float64(cw.n))
}

// acquire waits for a transfer slot, counting the request in the queue
// gauge while it waits. It answers 503 with Retry-After when QueueTimeout
// passes first, and nothing when the client leaves.
func (c *Cache) acquire(w http.ResponseWriter, r *http.Request) bool {
	select {
	case c.serveSem <- struct{}{}:
		return true
	default:
	}
	c.m.queue.Inc()
	defer c.m.queue.Dec()
	t := time.NewTimer(c.o.QueueTimeout)
	defer t.Stop()
	select {
	case c.serveSem <- struct{}{}:
		return true
	case <-t.C:
		c.busy(w)
		return false
	case <-r.Context().Done():
		return false
	}
}

// busy answers 503 with a Retry-After of QueueTimeout, between 1 s and a minute.
func (c *Cache) busy(w http.ResponseWriter) {
	retry := min(max(int(c.o.QueueTimeout/time.Second), 1), 60)
	w.Header().Set("Retry-After", strconv.Itoa(retry))
	http.Error(w, "image busy (being fetched or too many transfers in progress); retry later", http.StatusServiceUnavailable)
}

// countingWriter counts the body bytes sent. It passes ReadFrom through so
// that http.ServeContent still reaches sendfile.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(struct{ io.Writer }{w.ResponseWriter}, r)
	}
	w.n += n
	return n, err
}

// Unwrap lets http.ResponseController reach the connection.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
