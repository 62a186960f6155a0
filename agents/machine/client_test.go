package machine

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kilnhq/kiln/spec/agentapi"
)

// TestClientAgainstBootServer talks to the real boot server: the task,
// and each kind of report as the server decodes it.
func TestClientAgainstBootServer(t *testing.T) {
	t.Parallel()
	env := newRackEnv(t)
	c := env.client(testToken)
	ctx := context.Background()

	task, err := c.Task(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if task.Machine != "vm-2" || task.Purpose != agentapi.PurposeCommission || task.BootID != "b007" {
		t.Errorf("task = %+v", task)
	}
	if err := c.Facts(ctx, map[string]any{"cpu": map[string]int{"count": 2}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Progress(ctx, agentapi.Progress{Phase: "write", BytesWritten: 1, TotalBytes: 2}); err != nil {
		t.Fatal(err)
	}
	if err := c.Result(ctx, agentapi.Result{Success: false, Reason: "disk on fire"}); err != nil {
		t.Fatal(err)
	}
	reps := env.rack.Reports()
	if len(reps) != 3 || string(reps[0].Facts) != `{"cpu":{"count":2}}` ||
		*reps[1].Progress != (agentapi.Progress{Phase: "write", BytesWritten: 1, TotalBytes: 2}) ||
		*reps[2].Result != (agentapi.Result{Success: false, Reason: "disk on fire"}) {
		b, _ := json.Marshal(reps)
		t.Errorf("reports = %s", b)
	}

	// The deploy task carries the image, the selector and the metadata URL.
	env.rack.SetImage("disk.raw.gz", []byte("x"), "")
	env.rack.SetPurpose(agentapi.PurposeDeploy)
	task, err = c.Task(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if task.Image == nil || task.Image.Format != FormatGzip || !strings.HasSuffix(task.MetadataURL, "/metadata/vm-2/") {
		t.Errorf("deploy task = %+v", task)
	}
	md, err := c.Get(ctx, task.MetadataURL+"meta-data")
	if err != nil || !strings.Contains(string(md), "local-hostname: vm-2") {
		t.Errorf("meta-data = %q, %v", md, err)
	}
}

// TestClientNoRetryOn4xx: a refused token or a report the server rejects
// fails at once, saying why.
func TestClientNoRetryOn4xx(t *testing.T) {
	t.Parallel()
	env := newRackEnv(t)
	var hits atomic.Int32
	front := countingProxy(t, env.boot.URL, &hits, 0)
	c := NewClient(front.URL, "vm-2", "wrong-token", front.Client(), Retry{Initial: time.Millisecond, Max: time.Millisecond, Elapsed: time.Minute}, env.log)
	_, err := c.Task(context.Background())
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusForbidden || !strings.Contains(err.Error(), "valid boot token") {
		t.Fatalf("err = %v, want a 403 StatusError", err)
	}
	if strings.Contains(err.Error(), "wrong-token") {
		t.Errorf("the error shows the token: %v", err)
	}
	if hits.Load() != 1 {
		t.Errorf("%d requests, want 1 (no retry on 4xx)", hits.Load())
	}

	c = env.client(testToken)
	err = c.Result(context.Background(), agentapi.Result{Success: false})
	if !errors.As(err, &se) || se.Code != http.StatusBadRequest || !strings.Contains(err.Error(), `a failure needs a "reason"`) {
		t.Fatalf("err = %v, want the server's 400", err)
	}
}

// TestClientRetries5xx: 503s and dropped connections are retried until
// the server answers.
func TestClientRetries5xx(t *testing.T) {
	t.Parallel()
	env := newRackEnv(t)
	var hits atomic.Int32
	front := countingProxy(t, env.boot.URL, &hits, 3)
	c := NewClient(front.URL, "vm-2", testToken, front.Client(), Retry{Initial: time.Millisecond, Max: 2 * time.Millisecond, Elapsed: time.Minute}, env.log)
	if err := c.Result(context.Background(), agentapi.Result{Success: true}); err != nil {
		t.Fatal(err)
	}
	if hits.Load() != 4 {
		t.Errorf("%d requests, want 4", hits.Load())
	}
	if rs := env.rack.Results(); len(rs) != 1 || !rs[0].Success {
		t.Errorf("results = %+v", rs)
	}

	// Retries stop at Elapsed, with the last error (a 503: only the
	// second attempt's connection is dropped, and a loaded machine must
	// still get past it within Elapsed).
	hits.Store(0)
	front = countingProxy(t, env.boot.URL, &hits, 1000)
	c = NewClient(front.URL, "vm-2", testToken, front.Client(), Retry{Initial: time.Millisecond, Max: time.Millisecond, Elapsed: 500 * time.Millisecond}, env.log)
	err := c.Result(context.Background(), agentapi.Result{Success: true})
	if err == nil || !strings.Contains(err.Error(), "giving up after") || !strings.Contains(err.Error(), "503") {
		t.Fatalf("err = %v", err)
	}
}

// countingProxy forwards to target; the first fail requests get a 503,
// except the second, whose connection is dropped.
func countingProxy(t *testing.T, target string, hits *atomic.Int32, fail int32) *httptest.Server {
	u, _ := url.Parse(target)
	rp := httputil.NewSingleHostReverseProxy(u)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		if n <= fail {
			if n == 2 {
				panic(http.ErrAbortHandler)
			}
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}
