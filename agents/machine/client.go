package machine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kilnhq/kiln/spec/agentapi"
)

// Retry is how a request is retried after a network error or a 5xx
// answer: waits from Initial doubling up to Max, for at most Elapsed in
// all. 4xx answers are never retried.
type Retry struct {
	Initial, Max, Elapsed time.Duration
}

// DefaultRetry suits a rack whose boot server may be restarting.
var DefaultRetry = Retry{Initial: 500 * time.Millisecond, Max: 15 * time.Second, Elapsed: 5 * time.Minute}

// StatusError is an answer of the boot server that is not a success.
type StatusError struct {
	Method, URL string
	Code        int
	Body        string // the server's message, trimmed
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.URL, e.Code, http.StatusText(e.Code), e.Body)
}

// Client talks to the agent API of the rack's boot server
// (/agent/{machine}/…), with the boot token as a bearer token.
type Client struct {
	base, machine, token string
	http                 *http.Client
	retry                Retry
	log                  *slog.Logger
	httpsOnly            bool // NewTLSClient: plain http URLs are refused
}

// NewClient returns a client for machine at base (kiln.url).
func NewClient(base, machine, token string, hc *http.Client, retry Retry, log *slog.Logger) *Client {
	if hc == nil {
		hc = &http.Client{Timeout: time.Minute}
	}
	return &Client{base: strings.TrimSuffix(base, "/"), machine: machine, token: token, http: hc, retry: retry, log: log}
}

// Task fetches what this boot is for.
func (c *Client) Task(ctx context.Context) (agentapi.Task, error) {
	var t agentapi.Task
	body, err := c.do(ctx, c.retry, http.MethodGet, c.agentURL("task"), nil)
	if err != nil {
		return t, fmt.Errorf("fetch task: %w", err)
	}
	if err := json.Unmarshal(body, &t); err != nil {
		return t, fmt.Errorf("fetch task: decode %s: %w", c.agentURL("task"), err)
	}
	return t, nil
}

// Facts reports hardware facts (any value that encodes as a JSON object).
func (c *Client) Facts(ctx context.Context, facts any) error {
	return c.post(ctx, c.retry, "facts", facts)
}

// Progress reports how far the task is. Progress is advisory: it is
// tried for a few seconds only, so that a slow server does not stall a
// disk write.
func (c *Client) Progress(ctx context.Context, p agentapi.Progress) error {
	r := c.retry
	r.Elapsed = min(r.Elapsed, 5*time.Second)
	return c.post(ctx, r, "progress", p)
}

// Result ends the task.
func (c *Client) Result(ctx context.Context, res agentapi.Result) error {
	return c.post(ctx, c.retry, "result", res)
}

func (c *Client) post(ctx context.Context, r Retry, what string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("report %s: %w", what, err)
	}
	if _, err := c.do(ctx, r, http.MethodPost, c.agentURL(what), b); err != nil {
		return fmt.Errorf("report %s: %w", what, err)
	}
	return nil
}

func (c *Client) agentURL(what string) string {
	return c.base + "/agent/" + c.machine + "/" + what
}

// do sends the request, retrying network errors and 5xx answers with
// backoff; a 4xx answer is returned at once as a *StatusError.
func (c *Client) do(ctx context.Context, r Retry, method, url string, body []byte) ([]byte, error) {
	if c.httpsOnly {
		if err := checkHTTPS(url); err != nil {
			return nil, fmt.Errorf("%s: %w", method, err)
		}
	}
	wait := r.Initial
	deadline := time.Now().Add(r.Elapsed)
	for attempt := 1; ; attempt++ {
		b, err := c.once(ctx, method, url, body)
		if err == nil {
			return b, nil
		}
		var se *StatusError
		if errors.As(err, &se) && se.Code < 500 {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w (after %d attempts; last: %v)", ctx.Err(), attempt, err)
		}
		next := wait
		if ra := retryAfter(err); ra > 0 {
			next = ra
		}
		if time.Now().Add(next).After(deadline) {
			return nil, fmt.Errorf("giving up after %d attempts: %w", attempt, err)
		}
		c.log.Warn("boot server request failed, retrying", "method", method, "url", url, "attempt", attempt, "wait", next, "err", err)
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (after %d attempts; last: %v)", ctx.Err(), attempt, err)
		case <-t.C:
		}
		wait = min(wait*2, r.Max)
	}
}

// retryAfterError carries a 503's Retry-After.
type retryAfterError struct {
	*StatusError
	after time.Duration
}

func (e *retryAfterError) Unwrap() error { return e.StatusError }

func retryAfter(err error) time.Duration {
	var ra *retryAfterError
	if errors.As(err, &ra) {
		return ra.after
	}
	return 0
}

func (c *Client) once(ctx context.Context, method, url string, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read answer: %w", method, url, err)
	}
	if resp.StatusCode/100 == 2 {
		return b, nil
	}
	se := &StatusError{Method: method, URL: url, Code: resp.StatusCode, Body: strings.TrimSpace(string(b))}
	if len(se.Body) > 512 {
		se.Body = se.Body[:512] + "…"
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 && s <= 120 {
		return nil, &retryAfterError{StatusError: se, after: time.Duration(s) * time.Second}
	}
	return nil, se
}

// Get fetches a URL of the boot server (metadata) with the boot token,
// with the same retries as the agent API.
func (c *Client) Get(ctx context.Context, url string) ([]byte, error) {
	return c.do(ctx, c.retry, http.MethodGet, url, nil)
}
