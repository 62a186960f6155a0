// Package racktest is a rack for the machine agent's tests: the real boot
// server (netboot/boot) over the in-memory backend of netboot/boot/boottest
// with one machine, and an image server standing in for the rack cache, on
// one HTTP server as on a rack.
package racktest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/netboot/boot/boottest"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// Machine and Token are the machine the rack knows and its boot token.
const (
	Machine = "vm-2"
	Token   = "tok-Zm9vYmFyYmF6cXV4"
	BootID  = "b007"
)

// Rack is the boot server's backend and the server.
type Rack struct {
	backend *boottest.Backend
	// offAfter: a commissioning result turns the purpose to off.
	offAfter atomic.Bool
	Server   *httptest.Server
	Images   *Images
	log      *slog.Logger
}

// New starts a rack whose machine vm-2 (purpose commission) holds Token.
func New(t testing.TB, log *slog.Logger) *Rack {
	t.Helper()
	r := newRack(t, log)
	r.start(boot.Options{})
	return r
}

// NewTLS is New serving https only, with the certificate cert; the URLs
// the boot server hands out (metadata, images, phone_home) are https.
func NewTLS(t testing.TB, log *slog.Logger, cert tls.Certificate) *Rack {
	t.Helper()
	r := newRack(t, log)
	return r.startTLS(cert, "https://"+r.Server.Listener.Addr().String())
}

// NewTLSBase is NewTLS with the boot server's BaseURL set to base, as on
// a rack whose BaseURL is the plain http URL iPXE uses.
func NewTLSBase(t testing.TB, log *slog.Logger, cert tls.Certificate, base string) *Rack {
	t.Helper()
	return newRack(t, log).startTLS(cert, base)
}

func (r *Rack) startTLS(cert tls.Certificate, base string) *Rack {
	r.Server.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	r.start(boot.Options{BaseURL: base})
	return r
}

func newRack(t testing.TB, log *slog.Logger) *Rack {
	inv := &spec.Inventory{Machines: map[string]*spec.Machine{Machine: {
		Header: spec.Header{Metadata: spec.Metadata{Name: Machine}}, Spec: spec.MachineSpec{
			Image: "debian", UserData: "#cloud-config\nhostname: vm-2\npackages: [htop]\n",
			Interfaces: []spec.Interface{{Name: "eth0", MAC: "52:54:00:42:00:02"}},
		}}}}
	r := &Rack{
		backend: boottest.New(inv, nil),
		Images:  &Images{files: map[string][]byte{}, cuts: map[string][]int64{}, gets: map[string]int{}},
		log:     log,
	}
	sum := sha256.Sum256([]byte(Token))
	err := r.backend.Tokens().Put(context.Background(), Machine, inventory.BootToken{
		SHA256: hex.EncodeToString(sum[:]), Expires: time.Now().Add(time.Hour), BootID: BootID,
		State: inventory.TokenIssued, Address: "127.0.0.1", // the boot's token, handed out to the test's agent
	})
	if err != nil {
		t.Fatal(err)
	}
	r.Server = httptest.NewUnstartedServer(nil)
	t.Cleanup(r.Server.Close)
	return r
}

// start serves the boot server with o and the images, over TLS when
// Server.TLS is set.
func (r *Rack) start(o boot.Options) {
	mux := http.NewServeMux()
	mux.Handle("/", boot.New(o, regionLike{r.backend, r}, nil, r.log).Handler())
	mux.Handle("/images/", r.Images)
	r.Server.Config.Handler = mux
	r.Server.Config.ErrorLog = slog.NewLogLogger(r.log.Handler(), slog.LevelDebug) // TLS handshake refusals
	if r.Server.TLS != nil {
		r.Server.StartTLS()
	} else {
		r.Server.Start()
	}
}

// SetImage makes the machine's OS image the file served as name, with
// the given sha256 (the real one when empty).
func (r *Rack) SetImage(name string, body []byte, sha string) {
	url := r.Images.put(name, body)
	if sha == "" {
		s := sha256.Sum256(body)
		sha = hex.EncodeToString(s[:])
	}
	r.backend.SetImage(&spec.Image{Header: spec.Header{Metadata: spec.Metadata{Name: "debian"}},
		Spec: spec.ImageSpec{Purpose: spec.PurposeOS, Disk: &spec.Artifact{URL: url, SHA256: sha}}})
}

// OffAfterCommissioning makes a successful commissioning result turn the
// machine's purpose to off, as a region does for a machine that stays
// ready: the agent, asking for a next task (fast track), stops at once
// rather than after its wait.
func (r *Rack) OffAfterCommissioning() { r.offAfter.Store(true) }

// regionLike is the backend, deciding after a commissioning result when
// the rack is told to (OffAfterCommissioning).
type regionLike struct {
	*boottest.Backend
	r *Rack
}

// Report implements boot.Backend.
func (b regionLike) Report(ctx context.Context, machine string, rep agentapi.Report) error {
	if err := b.Backend.Report(ctx, machine, rep); err != nil {
		return err
	}
	if p, _ := b.Purpose(ctx, machine); rep.Result != nil && rep.Result.Success && p == agentapi.PurposeCommission && b.r.offAfter.Load() {
		b.SetPurpose(machine, agentapi.PurposeOff)
	}
	return nil
}

// SetPurpose sets what the machine's next task is.
func (r *Rack) SetPurpose(p string) { r.backend.SetPurpose(Machine, p) }

// SetSpec changes the machine's spec.
func (r *Rack) SetSpec(f func(*spec.MachineSpec)) { r.backend.SetSpec(Machine, f) }

// Reports are what the agent reported, in order.
func (r *Rack) Reports() []agentapi.Report { return r.backend.Reports(Machine) }

// Results are the reported results, in order.
func (r *Rack) Results() []agentapi.Result {
	var rs []agentapi.Result
	for _, x := range r.Reports() {
		if x.Result != nil {
			rs = append(rs, *x.Result)
		}
	}
	return rs
}

// Progress are the reported progress reports, in order.
func (r *Rack) Progress() []agentapi.Progress {
	var ps []agentapi.Progress
	for _, x := range r.Reports() {
		if x.Progress != nil {
			ps = append(ps, *x.Progress)
		}
	}
	return ps
}

// Images serves files by name (the last element of the path) with Range
// support, like the rack cache.
type Images struct {
	mu    sync.Mutex
	files map[string][]byte
	cuts  map[string][]int64
	gets  map[string]int
}

func (s *Images) put(name string, b []byte) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files[name] = b
	return "http://origin.example/os/" + name
}

// Cut makes the next responses for name break after n bytes of body each
// (the full length announced, then the connection dropped).
func (s *Images) Cut(name string, n ...int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cuts[name] = n
}

// Gets is how many times name was requested.
func (s *Images) Gets(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets[name]
}

func (s *Images) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := path.Base(r.URL.Path)
	s.mu.Lock()
	b, ok := s.files[name]
	s.gets[name]++
	cut := int64(-1)
	if c := s.cuts[name]; len(c) > 0 {
		cut, s.cuts[name] = c[0], c[1:]
	}
	s.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("ETag", `"v1"`)
	if cut < 0 {
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
		return
	}
	http.ServeContent(&cutWriter{ResponseWriter: w, left: cut}, r, name, time.Time{}, bytes.NewReader(b))
	panic(http.ErrAbortHandler)
}

type cutWriter struct {
	http.ResponseWriter
	left int64
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, _ := c.ResponseWriter.Write(p)
	c.left -= int64(n)
	if c.left == 0 {
		if f, ok := c.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		return n, io.ErrClosedPipe
	}
	return n, nil
}
