package boot_test

import (
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	. "github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/netboot/boot/boottest"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus"
)

func loadInventory(t testing.TB, dir string) *spec.Inventory {
	t.Helper()
	res := spec.Load(os.DirFS(dir))
	if res.Problems.Errors() > 0 {
		t.Fatalf("load %s: %v", dir, res.Problems)
	}
	return res.Inventory
}

type testServer struct {
	*httptest.Server
	backend *boottest.Backend
	clock   *kilntest.Clock
	reg     *prometheus.Registry
	metrics *Metrics
}

func newTestServer(t testing.TB, b *boottest.Backend) *testServer {
	t.Helper()
	c := kilntest.NewClock(time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC))
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	// Rate limits out of the way; TestScriptRateLimits sets its own.
	s := New(Options{Now: c.Now, ScriptBurst: 1000}, b, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ts := httptest.NewServer(s.Handler()) // listens on 127.0.0.1
	t.Cleanup(ts.Close)
	return &testServer{Server: ts, backend: b, clock: c, reg: reg, metrics: m}
}

// curl runs the real curl against the server and returns the status code
// and body.
func curl(t testing.TB, args ...string) (int, string) {
	t.Helper()
	return curlIn(t, "", args...)
}

// curlIn is curl with stdin (for --data-binary @-).
func curlIn(t testing.TB, stdin string, args ...string) (int, string) {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed (apt-get install -y curl)")
	}
	all := append([]string{"-sS", "--noproxy", "*", "-o", "-", "-w", "\n%{http_code}"}, args...)
	cmd := exec.Command("curl", all...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl %s: %v", strings.Join(args, " "), err)
	}
	s := string(out)
	i := strings.LastIndexByte(s, '\n')
	code, err := strconv.Atoi(s[i+1:])
	if err != nil {
		t.Fatalf("curl %s: no status code in %q", strings.Join(args, " "), s)
	}
	return code, s[:i]
}

// tokenOf extracts kiln.token= from an iPXE script.
func tokenOf(t testing.TB, script string) string {
	t.Helper()
	for _, f := range strings.Fields(script) {
		if v, ok := strings.CutPrefix(f, "kiln.token="); ok {
			return v
		}
	}
	t.Fatalf("no kiln.token in script:\n%s", script)
	return ""
}
