package power

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// pdu is an HTTP power switch with faults to inject: the real protocol of
// the webhook driver, on a real socket.
type pdu struct {
	mu       sync.Mutex
	on       bool
	requests int
	failNext int           // answer 503 to the next n requests
	status   int           // answer this code to every request (0: normal)
	hang     chan struct{} // when set, requests block until it is closed
	inFlight int
	maxIn    int
	srv      *httptest.Server
}

func newPDU(t *testing.T) *pdu {
	p := &pdu{}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(func() {
		p.mu.Lock()
		if p.hang != nil {
			close(p.hang)
			p.hang = nil
		}
		p.mu.Unlock()
		p.srv.Close()
	})
	return p
}

func (p *pdu) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.requests++
	p.inFlight++
	p.maxIn = max(p.maxIn, p.inFlight)
	hang, fail, status := p.hang, p.failNext > 0, p.status
	if fail {
		p.failNext--
	}
	p.mu.Unlock()
	defer func() { p.mu.Lock(); p.inFlight--; p.mu.Unlock() }()
	if hang != nil {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
		return
	}
	if u, pw, _ := r.BasicAuth(); u != "admin" || pw != "s3cret-pw" {
		http.Error(w, "bad credentials", http.StatusUnauthorized)
		return
	}
	switch {
	case status != 0:
		http.Error(w, "injected", status)
		return
	case fail:
		http.Error(w, "busy", http.StatusServiceUnavailable)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch r.URL.Path {
	case "/outlet/1/on":
		p.on = true
	case "/outlet/1/off":
		p.on = false
	case "/outlet/1":
		fmt.Fprintf(w, `{"outlet": 1, "state": %q}`, map[bool]string{true: "on", false: "off"}[p.on])
	default:
		http.NotFound(w, r)
	}
}

func (p *pdu) count() int { p.mu.Lock(); defer p.mu.Unlock(); return p.requests }

func (p *pdu) target(machine string) Target {
	return Target{Machine: machine, Driver: "webhook", Address: p.srv.URL, Username: "admin", Password: "s3cret-pw",
		Options: map[string]string{"onURL": "/outlet/1/on", "offURL": "/outlet/1/off", "statusURL": "/outlet/1",
			"statusOnRegex": `"state": "on"`, "statusOffRegex": `"state": "off"`}}
}

func testExecutor(t *testing.T, p Policy) (*Executor, *prometheus.Registry, *bytes.Buffer) {
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&lockedWriter{w: &logs}, nil))
	if p.Backoff == 0 {
		p.Backoff, p.MaxBackoff = time.Millisecond, 5*time.Millisecond
	}
	e := NewExecutor(p, NewMetrics(reg), log)
	t.Cleanup(e.Close)
	return e, reg, &logs
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func TestWebhookPowerRoundTrip(t *testing.T) {
	p := newPDU(t)
	e, _, _ := testExecutor(t, Policy{})
	ctx := context.Background()
	tg := p.target("m1")
	if err := e.PowerOn(ctx, tg); err != nil {
		t.Fatal(err)
	}
	if st, err := e.Status(ctx, tg); err != nil || st != On {
		t.Fatalf("status after on: %v %v", st, err)
	}
	if err := e.PowerOff(ctx, tg, true); err != nil {
		t.Fatal(err)
	}
	if st, err := e.Status(ctx, tg); err != nil || st != Off {
		t.Fatalf("status after off: %v %v", st, err)
	}
	// Soft off without softOffURL uses offURL; cycle is off then on.
	if err := e.PowerCycle(ctx, tg); err != nil {
		t.Fatal(err)
	}
	if st, _ := e.Status(ctx, tg); st != On {
		t.Fatalf("status after cycle: %v", st)
	}
	err := e.SetBoot(ctx, tg, Boot{Device: Network})
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "bootNetworkURL") {
		t.Fatalf("set boot without a URL: %v", err)
	}
}

func TestRetriesTransientFailures(t *testing.T) {
	p := newPDU(t)
	p.failNext = 2
	e, reg, _ := testExecutor(t, Policy{Attempts: 4})
	if err := e.PowerOn(context.Background(), p.target("m1")); err != nil {
		t.Fatalf("two 503s then success should succeed: %v", err)
	}
	if p.count() != 3 {
		t.Fatalf("%d requests, want 3", p.count())
	}
	for result, want := range map[string]float64{"error": 2, "ok": 1, "timeout": 0, "auth": 0} {
		if v := testutil.ToFloat64(e.metrics.ops.WithLabelValues("webhook", "on", result)); v != want {
			t.Errorf("kiln_power_operations_total{op=on,result=%s} = %v, want %v", result, v, want)
		}
	}
	if n := testutil.CollectAndCount(reg, "kiln_power_operation_duration_seconds"); n == 0 {
		t.Error("no duration histogram")
	}
}

func TestPermanentErrorsAreNotRetried(t *testing.T) {
	p := newPDU(t)
	p.status = http.StatusBadRequest
	e, _, _ := testExecutor(t, Policy{Attempts: 4})
	err := e.PowerOn(context.Background(), p.target("m1"))
	if !errors.Is(err, ErrPermanent) || p.count() != 1 {
		t.Fatalf("400: got %v after %d requests, want a permanent error after 1", err, p.count())
	}
	var oe *OpError
	if !errors.As(err, &oe) || !strings.Contains(err.Error(), "machine m1") || !strings.Contains(err.Error(), "power on") {
		t.Fatalf("error should name machine and operation: %v", err)
	}
}

func TestWrongCredentialsNeverLeakThePassword(t *testing.T) {
	p := newPDU(t)
	e, _, logs := testExecutor(t, Policy{Attempts: 3})
	tg := p.target("m1")
	tg.Password = "wrong-but-secret-pw"
	err := e.PowerOn(context.Background(), tg)
	if !errors.Is(err, ErrAuth) || p.count() != 1 {
		t.Fatalf("got %v after %d requests, want ErrAuth after 1", err, p.count())
	}
	if v := testutil.ToFloat64(e.metrics.ops.WithLabelValues("webhook", "on", "auth")); v != 1 {
		t.Fatalf("auth failures counted %v", v)
	}
	// A BMC that echoes the password in its error must not leak it either.
	p.status = 0
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, pw, _ := r.BasicAuth()
		http.Error(w, "no such user/password "+pw, http.StatusInternalServerError)
	}))
	defer echo.Close()
	tg.Address = echo.URL
	err2 := e.PowerOn(context.Background(), tg)
	for _, s := range []string{err.Error(), err2.Error(), logs.String()} {
		if strings.Contains(s, "wrong-but-secret-pw") {
			t.Fatalf("password leaked: %s", s)
		}
	}
	if !strings.Contains(err2.Error(), "<redacted>") {
		t.Fatalf("echoed password should be redacted: %v", err2)
	}
}

func TestHungBMCNeverHangsTheCaller(t *testing.T) {
	p := newPDU(t)
	p.hang = make(chan struct{})
	e, _, _ := testExecutor(t, Policy{Timeout: 100 * time.Millisecond, Attempts: 2})
	done := make(chan error, 1)
	go func() { done <- e.PowerOn(context.Background(), p.target("m1")) }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrTimeout) {
			t.Fatalf("got %v, want ErrTimeout", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a hung BMC hung the caller")
	}
	if v := testutil.ToFloat64(e.metrics.ops.WithLabelValues("webhook", "on", "timeout")); v != 2 {
		t.Fatalf("timeouts counted %v, want 2", v)
	}
	if v := testutil.ToFloat64(e.metrics.reachable.WithLabelValues("m1")); v != 0 {
		t.Fatalf("kiln_power_bmc_reachable = %v for a BMC that never answers", v)
	}
}

// stuck is a driver that ignores its context, as a buggy library might.
type stuck struct{ release chan struct{} }

func (s *stuck) PowerOn(context.Context) error         { <-s.release; return nil }
func (s *stuck) PowerOff(context.Context, bool) error  { <-s.release; return nil }
func (s *stuck) PowerCycle(context.Context) error      { <-s.release; return nil }
func (s *stuck) Status(context.Context) (State, error) { <-s.release; return On, nil }
func (s *stuck) SetBoot(context.Context, Boot) error   { <-s.release; return nil }
func (s *stuck) Close() error                          { return nil }

func TestDriverIgnoringItsContextIsAbandoned(t *testing.T) {
	e, _, _ := testExecutor(t, Policy{Timeout: 50 * time.Millisecond, Attempts: 2})
	release := make(chan struct{})
	defer close(release)
	var built atomic.Int32
	e.factory = func(Target) (Driver, error) { built.Add(1); return &stuck{release}, nil }
	err := e.PowerOn(context.Background(), Target{Machine: "m1", Driver: "webhook"})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v, want ErrTimeout", err)
	}
	if built.Load() != 2 {
		t.Fatalf("%d drivers built: a driver still busy must not be reused", built.Load())
	}
}

func TestCircuitBreaker(t *testing.T) {
	p := newPDU(t)
	p.status = http.StatusInternalServerError
	e, _, _ := testExecutor(t, Policy{Attempts: 1, BreakerThreshold: 2, BreakerCooldown: time.Minute})
	now := time.Now()
	e.now = func() time.Time { return now }
	ctx := context.Background()
	tg := p.target("m1")
	for i := 0; i < 2; i++ {
		if err := e.PowerOn(ctx, tg); err == nil {
			t.Fatal("expected failure")
		}
	}
	before := p.count()
	err := e.PowerOn(ctx, tg)
	if !errors.Is(err, ErrBreakerOpen) || p.count() != before {
		t.Fatalf("open breaker should fail fast without a request: %v (%d→%d requests)", err, before, p.count())
	}
	if v := testutil.ToFloat64(e.metrics.breaker.WithLabelValues("m1")); v != float64(open) {
		t.Fatalf("breaker metric %v, want open", v)
	}
	// After the cooldown one probe goes through; it fails: open again.
	now = now.Add(2 * time.Minute)
	if err := e.PowerOn(ctx, tg); errors.Is(err, ErrBreakerOpen) || p.count() != before+1 {
		t.Fatalf("half-open probe: %v (%d requests)", err, p.count()-before)
	}
	if err := e.PowerOn(ctx, tg); !errors.Is(err, ErrBreakerOpen) {
		t.Fatalf("failed probe should reopen: %v", err)
	}
	// The BMC recovers: the next probe closes the breaker.
	p.mu.Lock()
	p.status = 0
	p.mu.Unlock()
	now = now.Add(2 * time.Minute)
	if err := e.PowerOn(ctx, tg); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(e.metrics.breaker.WithLabelValues("m1")); v != float64(closed) {
		t.Fatalf("breaker metric %v, want closed", v)
	}
	// Another BMC is unaffected throughout.
	other := newPDU(t)
	if err := e.PowerOn(ctx, other.target("m2")); err != nil {
		t.Fatal(err)
	}
}

func TestSerialPerBMCAndGlobalLimit(t *testing.T) {
	e, _, _ := testExecutor(t, Policy{Concurrency: 2})
	ctx := context.Background()
	one := newPDU(t)
	var wg sync.WaitGroup
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); e.Status(ctx, one.target("m1")) }()
	}
	wg.Wait()
	if one.maxIn != 1 {
		t.Fatalf("%d calls at once to one BMC, want 1", one.maxIn)
	}
	// Three BMCs that answer only when released: at most two in flight.
	var pdus []*pdu
	gate := make(chan struct{})
	for i := 0; i < 3; i++ {
		p := newPDU(t)
		p.hang = gate
		pdus = append(pdus, p)
	}
	inFlight := func() int {
		n := 0
		for _, p := range pdus {
			p.mu.Lock()
			n += p.inFlight
			p.mu.Unlock()
		}
		return n
	}
	for i, p := range pdus {
		wg.Add(1)
		go func() { defer wg.Done(); e.Status(ctx, p.target(fmt.Sprint("g", i))) }()
	}
	kilntest.Eventually(t, 10*time.Second, "two calls in flight", func() bool { return inFlight() >= 2 })
	if n := inFlight(); n != 2 {
		t.Fatalf("%d calls in flight, want the limit of 2", n)
	}
	for _, p := range pdus {
		p.mu.Lock()
		p.hang = nil
		p.mu.Unlock()
	}
	close(gate)
	wg.Wait()
	for _, p := range pdus {
		if p.maxIn > 1 {
			t.Fatal("per-BMC serialisation broken")
		}
	}
}

func TestPollerObserves(t *testing.T) {
	p := newPDU(t)
	p.on = true
	e, _, _ := testExecutor(t, Policy{})
	obs := make(chan Observation, 10)
	poller := &Poller{Power: e, Interval: 50 * time.Millisecond,
		Watched: func() []Target { return []Target{p.target("m1")} },
		Observe: func(o Observation) { obs <- o }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { poller.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if o := <-obs; o.State != On || o.Err != nil || o.Machine != "m1" {
		t.Fatalf("observation %+v: want m1 on", o)
	}
	p.mu.Lock()
	p.on = false
	p.mu.Unlock()
	for o := <-obs; o.State != Off; o = <-obs {
	}
}

// Manual machines have no address, so they share one BMC key; each still
// gets instructions naming itself. Two machines behind one BMC address
// still get one call at a time.
func TestDriversPerMachineLocksPerBMC(t *testing.T) {
	e, _, _ := testExecutor(t, Policy{})
	ctx := context.Background()
	for _, m := range []string{"m1", "m2", "m1"} {
		err := e.PowerOn(ctx, Target{Machine: m, Driver: "manual"})
		if !errors.Is(err, ErrManual) || !strings.Contains(err.Error(), "power machine "+m+" on by hand") {
			t.Fatalf("manual %s: %v, want instructions naming %s", m, err, m)
		}
	}

	// s0's call hangs at the BMC; s1's waits for it and never reaches it.
	shared := newPDU(t)
	gate := make(chan struct{})
	shared.hang = gate
	done := make(chan struct{})
	go func() { defer close(done); e.Status(ctx, shared.target("s0")) }()
	kilntest.Eventually(t, 10*time.Second, "s0 at the BMC", func() bool { return shared.count() == 1 })
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := e.Status(wctx, shared.target("s1"))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || shared.count() != 1 {
		t.Fatalf("s1 while s0 holds the BMC: %v, %d requests at the BMC; want s1 to wait its turn", err, shared.count())
	}
	shared.mu.Lock()
	shared.hang = nil
	shared.mu.Unlock()
	close(gate)
	<-done
	if _, err := e.Status(ctx, shared.target("s1")); err != nil {
		t.Fatalf("s1 after s0's call: %v", err)
	}
}

// A poll's error is stored by the rack: its text never holds the BMC's
// password, and is bounded.
func TestPollerScrubsErrors(t *testing.T) {
	obs := make(chan Observation, 1)
	target := Target{Machine: "m1", Password: "s3cret-pw"}
	long := strings.Repeat("x", 4*maxErrText)
	poller := &Poller{Power: statusFunc(func() (State, error) {
		return On, fmt.Errorf("login as admin/s3cret-pw refused: %s", long)
	}), Interval: time.Hour, Watched: func() []Target { return []Target{target} },
		Observe: func(o Observation) { obs <- o }}
	poller.poll(context.Background(), target)
	o := <-obs
	if o.State != Unknown || o.Err == nil {
		t.Fatalf("observation %+v: want unknown with an error", o)
	}
	if msg := o.Err.Error(); strings.Contains(msg, "s3cret-pw") || len(msg) > maxErrText+8 || !strings.Contains(msg, "<redacted>") {
		t.Fatalf("error text not scrubbed or not bounded (%d bytes): %.80s", len(msg), msg)
	}
}

type statusFunc func() (State, error)

func (f statusFunc) Status(context.Context, Target) (State, error) { return f() }
