package machine

import (
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/agents/machine/racktest"
)

const testToken = racktest.Token

// rackEnv is a rack (racktest) and a logger for the test.
type rackEnv struct {
	rack *racktest.Rack
	boot *httptest.Server
	log  *slog.Logger
}

func newRackEnv(t *testing.T) *rackEnv {
	t.Helper()
	log := testLogger(t)
	r := racktest.New(t, log)
	return &rackEnv{rack: r, boot: r.Server, log: log}
}

func (e *rackEnv) client(token string) *Client {
	return NewClient(e.boot.URL, racktest.Machine, token, e.boot.Client(), Retry{Initial: time.Millisecond, Max: 5 * time.Millisecond, Elapsed: 2 * time.Second}, e.log)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// tempDisk is a sparse file of size bytes acting as a block device.
func tempDisk(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}
