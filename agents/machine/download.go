package machine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// resumingBody reads an HTTP resource and, when the connection breaks,
// asks for the rest with a Range request (the rack cache honours Range and
// If-Range), a few times. A transfer that makes no progress for stall is
// cut and resumed the same way.
type resumingBody struct {
	ctx     context.Context
	hc      *http.Client
	url     string
	log     *slog.Logger
	stall   time.Duration
	resumes int // left

	etag   string
	total  int64 // Content-Length of the whole resource; -1 unknown
	off    int64
	body   io.ReadCloser
	cancel context.CancelFunc
	timer  *time.Timer
}

// openResuming sends the first GET; a non-2xx answer is an error that
// says the status and the server's message.
func openResuming(ctx context.Context, hc *http.Client, url string, stall time.Duration, resumes int, log *slog.Logger) (*resumingBody, error) {
	r := &resumingBody{ctx: ctx, hc: hc, url: url, log: log, stall: stall, resumes: resumes, total: -1}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *resumingBody) open() error {
	ctx, cancel := context.WithCancel(r.ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url, nil)
	if err != nil {
		cancel()
		return fmt.Errorf("image URL %q: %w", r.url, err)
	}
	if r.off > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(r.off, 10)+"-")
		if r.etag != "" {
			req.Header.Set("If-Range", r.etag)
		}
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		cancel()
		return fmt.Errorf("GET %s: %w", r.url, err)
	}
	want := http.StatusOK
	if r.off > 0 {
		want = http.StatusPartialContent
	}
	if resp.StatusCode != want {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		cancel()
		return fmt.Errorf("GET %s: %s: %s", r.url, resp.Status, strings.TrimSpace(string(msg)))
	}
	if r.off > 0 {
		start, ok := rangeStart(resp.Header.Get("Content-Range"))
		if !ok || start != r.off {
			resp.Body.Close()
			cancel()
			return fmt.Errorf("GET %s: resume at byte %d: server answered range %q", r.url, r.off, resp.Header.Get("Content-Range"))
		}
	} else {
		r.total = resp.ContentLength
		r.etag = resp.Header.Get("ETag")
	}
	r.body, r.cancel = resp.Body, cancel
	if r.stall > 0 {
		r.timer = time.AfterFunc(r.stall, cancel)
	}
	return nil
}

func rangeStart(cr string) (int64, bool) {
	rest, ok := strings.CutPrefix(cr, "bytes ")
	if !ok {
		return 0, false
	}
	s, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

func (r *resumingBody) Read(p []byte) (int, error) {
	for {
		n, err := r.body.Read(p)
		r.off += int64(n)
		if n > 0 && r.timer != nil {
			r.timer.Reset(r.stall)
		}
		if err == nil || errors.Is(err, io.EOF) && (r.total < 0 || r.off == r.total) {
			return n, err
		}
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		if r.ctx.Err() != nil {
			return n, r.ctx.Err()
		}
		if r.resumes <= 0 || r.total < 0 {
			return n, fmt.Errorf("GET %s: connection lost after %d of %d bytes: %w", r.url, r.off, r.total, err)
		}
		r.log.Warn("image download interrupted, resuming", "url", r.url, "offset", r.off, "err", err)
		r.close()
		if oerr := r.reopen(); oerr != nil {
			return n, fmt.Errorf("GET %s: connection lost after %d of %d bytes (%v); resume failed: %w", r.url, r.off, r.total, err, oerr)
		}
		if n > 0 {
			return n, nil
		}
	}
}

// resumeWait is the wait before the second try to resume; it doubles for
// each later one. A rack leader's failover takes a few seconds before the
// new leader's boot server answers at the same address: the resumes left
// (5 by default) wait 0, 0.5, 1, 2 and 4 s.
var resumeWait = 500 * time.Millisecond

// reopen asks for the rest, trying again with a growing wait while
// resumes are left: the server may be down for a moment.
func (r *resumingBody) reopen() error {
	var err error
	for wait := time.Duration(0); r.resumes > 0; wait = max(2*wait, resumeWait) {
		r.resumes--
		if wait > 0 {
			select {
			case <-r.ctx.Done():
				return r.ctx.Err()
			case <-time.After(wait):
			}
			r.log.Warn("image download: resuming again", "url", r.url, "offset", r.off, "err", err)
		}
		if err = r.open(); err == nil {
			return nil
		}
	}
	return err
}

func (r *resumingBody) close() {
	if r.timer != nil {
		r.timer.Stop()
	}
	if r.body != nil {
		r.body.Close()
	}
	if r.cancel != nil {
		r.cancel()
	}
}

// Close ends the transfer.
func (r *resumingBody) Close() error {
	r.close()
	return nil
}
