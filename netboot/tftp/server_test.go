package tftp

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/pin/tftp/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// harness is a running server over a temporary root.
type harness struct {
	srv    *Server
	root   string
	reg    *prometheus.Registry
	outer  string // a file beside the root, never to be served
	mu     sync.Mutex
	events []Event
}

func (h *harness) addr() string { return h.srv.Addr().String() }
func (h *harness) port() string { return fmt.Sprint(h.srv.Addr().Port()) }

func (h *harness) eventsFor(file string) []Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Event
	for _, e := range h.events {
		if e.File == file {
			out = append(out, e)
		}
	}
	return out
}

// waitEvent waits for the server's event about file: the client may return
// before the server has seen the last acknowledgement.
func (h *harness) waitEvent(t *testing.T, file string) Event {
	t.Helper()
	var ev []Event
	kilntest.Eventually(t, 10*time.Second, "an event for "+file, func() bool {
		ev = h.eventsFor(file)
		return len(ev) > 0
	})
	return ev[len(ev)-1]
}

func start(t *testing.T, o Options) *harness {
	t.Helper()
	dir := t.TempDir()
	h := &harness{root: filepath.Join(dir, "root"), outer: filepath.Join(dir, "secret.txt"), reg: prometheus.NewRegistry()}
	if err := os.Mkdir(h.root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.outer, []byte("secret outside the root\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if o.Root == "" {
		o.Root = h.root
	} else {
		h.root = o.Root
	}
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv, err := New(o, NewMetrics(h.reg), func(e Event) {
		h.mu.Lock()
		h.events = append(h.events, e)
		h.mu.Unlock()
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return h
}

func writeFile(t *testing.T, path string, size int) []byte {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

func need(t *testing.T, bin string) string {
	t.Helper()
	p, err := exec.LookPath(bin)
	if err != nil {
		t.Skipf("%s not installed (Debian: apt-get install tftp-hpa curl); CI installs it", bin)
	}
	return p
}

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// get fetches name with pin/tftp's client.
func get(addr, name string, blksize int, tsize bool) ([]byte, int64, error) {
	c, err := tftp.NewClient(addr)
	if err != nil {
		return nil, 0, err
	}
	c.SetTimeout(2 * time.Second)
	c.SetRetries(3)
	if blksize > 0 {
		c.SetBlockSize(blksize)
	}
	c.RequestTSize(tsize)
	wt, err := c.Receive(name, "octet")
	if err != nil {
		return nil, 0, err
	}
	size := int64(-1)
	if it, ok := wt.(tftp.IncomingTransfer); ok {
		if n, ok := it.Size(); ok {
			size = n
		}
	}
	var buf bytes.Buffer
	_, err = wt.WriteTo(&buf)
	return buf.Bytes(), size, err
}

func TestFetchWithTFTPHPA(t *testing.T) {
	bin := need(t, "tftp")
	h := start(t, Options{})
	want := writeFile(t, filepath.Join(h.root, "ipxe.efi"), 300_000+17)
	if err := os.MkdirAll(filepath.Join(h.root, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	wantSub := writeFile(t, filepath.Join(h.root, "sub", "boot.ipxe"), 1000)

	for _, tc := range []struct {
		name, req string
		want      []byte
	}{
		// tftp-hpa's client asks for no options (no blksize, no tsize):
		// plain RFC 1350 as old PXE ROMs speak it.
		{"plain", "ipxe.efi", want},
		{"leading slash", "/ipxe.efi", want},
		{"subdirectory", "sub/boot.ipxe", wantSub},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			msg, err := run(t, bin, "127.0.0.1", h.port(), "-m", "binary", "-c", "get", tc.req, out)
			if err != nil {
				t.Fatalf("tftp: %v: %s", err, msg)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatalf("tftp wrote nothing: %v (%s)", err, msg)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("tftp fetched %d bytes, differ from the %d of the file (%s)", len(got), len(tc.want), msg)
			}
		})
	}
	ev := h.waitEvent(t, "/ipxe.efi")
	if ev.Result != ResultOK || ev.Bytes != int64(len(want)) || ev.Peer.Addr() != netip.MustParseAddr("127.0.0.1") || ev.Peer.Port() == 0 {
		t.Errorf("event %+v", ev)
	}
}

func TestFetchWithCurl(t *testing.T) {
	bin := need(t, "curl")
	h := start(t, Options{})
	want := writeFile(t, filepath.Join(h.root, "undionly.kpxe"), 1<<20+3)
	for _, tc := range []struct {
		name string
		args []string
		opt  string // what curl -v must report about the OACK
	}{
		{"default", nil, "tsize parsed from OACK (" + fmt.Sprint(len(want)) + ")"},
		{"blksize 1432", []string{"--tftp-blksize", "1432"}, "blksize parsed from OACK (1432)"},
		{"blksize 8192", []string{"--tftp-blksize", "8192"}, "blksize parsed from OACK (8192)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			args := append([]string{"-v", "-sS", "--max-time", "20", "-o", out}, tc.args...)
			msg, err := run(t, bin, append(args, "tftp://"+h.addr()+"/undionly.kpxe")...)
			if err != nil {
				t.Fatalf("curl: %v: %s", err, msg)
			}
			got, err := os.ReadFile(out)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("curl fetched %d bytes (err %v), differ from the %d of the file", len(got), err, len(want))
			}
			if !strings.Contains(msg, tc.opt) {
				t.Errorf("curl -v does not report %q:\n%s", tc.opt, msg)
			}
		})
	}
}

func TestTSizeAndBlksizeWithGoClient(t *testing.T) {
	h := start(t, Options{})
	want := writeFile(t, filepath.Join(h.root, "f"), 70_001)
	for _, blk := range []int{0, 512, 1468, 8192, 65464} {
		got, size, err := get(h.addr(), "f", blk, true)
		if err != nil {
			t.Fatalf("blksize %d: %v", blk, err)
		}
		if !bytes.Equal(got, want) || size != int64(len(want)) {
			t.Fatalf("blksize %d: got %d bytes, tsize %d; want %d", blk, len(got), size, len(want))
		}
	}
}

func TestRefusals(t *testing.T) {
	h := start(t, Options{})
	writeFile(t, filepath.Join(h.root, "ok.bin"), 100)
	if err := os.Symlink(h.outer, filepath.Join(h.root, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..", filepath.Join(h.root, "up")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("ok.bin", filepath.Join(h.root, "inside")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(h.root, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(h.root, h.outer)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ req, result string }{
		{"../secret.txt", ResultDenied},
		{rel, ResultDenied},
		{"dir/../../secret.txt", ResultDenied},
		{"//" + strings.TrimPrefix(h.outer, "/"), ResultDenied}, // still absolute after one "/" is stripped
		{"/" + h.outer, ResultDenied},
		{"escape", ResultDenied},
		{"up/secret.txt", ResultDenied},
		{"dir", ResultDenied},
		{"missing", ResultNotFound},
		{h.outer, ResultNotFound}, // "/tmp/…/secret.txt" is "tmp/…/secret.txt" under the root
	} {
		t.Run(tc.req, func(t *testing.T) {
			got, _, err := get(h.addr(), tc.req, 0, false)
			if err == nil {
				t.Fatalf("fetched %q (%d bytes: %q)", tc.req, len(got), got)
			}
			ev := h.waitEvent(t, tc.req)
			if ev.Result != tc.result || ev.Bytes != 0 {
				t.Errorf("event %+v, want result %s and no bytes", ev, tc.result)
			}
		})
	}
	// A symlink inside the root is followed.
	if _, _, err := get(h.addr(), "inside", 0, false); err != nil {
		t.Errorf("symlink inside the root: %v", err)
	}
}

func TestRefusalsWithTFTPHPA(t *testing.T) {
	bin := need(t, "tftp")
	h := start(t, Options{})
	writeFile(t, filepath.Join(h.root, "ok.bin"), 100)
	if err := os.Symlink(h.outer, filepath.Join(h.root, "escape")); err != nil {
		t.Fatal(err)
	}
	for _, req := range []string{"../secret.txt", "escape"} {
		out := filepath.Join(t.TempDir(), "out")
		msg, _ := run(t, bin, "127.0.0.1", h.port(), "-m", "binary", "-c", "get", req, out)
		if !strings.Contains(msg, "Error code 2") {
			t.Errorf("get %s: want an access violation (error code 2), got %q", req, msg)
		}
		if b, _ := os.ReadFile(out); bytes.Contains(b, []byte("secret")) {
			t.Errorf("get %s: the file outside the root was served", req)
		}
	}

	// put: refused with an access violation, nothing written.
	src := filepath.Join(t.TempDir(), "upload")
	writeFile(t, src, 2000)
	msg, _ := run(t, bin, "127.0.0.1", h.port(), "-m", "binary", "-c", "put", src, "upload")
	if !strings.Contains(msg, "Error code 2") {
		t.Errorf("put: want an access violation (error code 2), got %q", msg)
	}
	if _, err := os.Stat(filepath.Join(h.root, "upload")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("put wrote into the root: %v", err)
	}
	if ev := h.waitEvent(t, "upload"); ev.Result != ResultDenied || ev.Peer.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("put event %+v", ev)
	}
}

func TestPutRefusedWithGoClient(t *testing.T) {
	h := start(t, Options{})
	c, err := tftp.NewClient(h.addr())
	if err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(2 * time.Second)
	rf, err := c.Send("x", "octet")
	if err == nil {
		_, err = rf.ReadFrom(bytes.NewReader(make([]byte, 1000)))
	}
	if err == nil || !strings.Contains(err.Error(), "access violation") {
		t.Fatalf("put: %v, want an access violation", err)
	}
}

// stall sends a read request from a raw socket and reads the first block
// without acknowledging it: the transfer holds its slot until the server's
// timeout or until release is called.
func stall(t *testing.T, addr, name string) (release func()) {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	rrq := binary.BigEndian.AppendUint16(nil, 1)
	rrq = append(rrq, name+"\x00octet\x00"...)
	if _, err := conn.WriteToUDP(rrq, ua); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1024)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, tid, err := conn.ReadFromUDP(buf)
	if err != nil {
		t.Fatal(err)
	}
	if n < 4 || binary.BigEndian.Uint16(buf) != 3 {
		t.Fatalf("want a DATA packet, got % x", buf[:n])
	}
	return func() {
		// An ERROR from the client ends the transfer at once.
		e := binary.BigEndian.AppendUint16(nil, 5)
		e = binary.BigEndian.AppendUint16(e, 0)
		e = append(e, "test done\x00"...)
		conn.WriteToUDP(e, tid)
		conn.Close()
	}
}

func TestMaxTransfers(t *testing.T) {
	h := start(t, Options{MaxTransfers: 2, Timeout: 5 * time.Second, Retries: 2})
	want := writeFile(t, filepath.Join(h.root, "big"), 100_000)
	r1 := stall(t, h.addr(), "big")
	r2 := stall(t, h.addr(), "big")
	_, _, err := get(h.addr(), "big", 0, false)
	if err == nil || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("third transfer: %v, want busy", err)
	}
	r1()
	// The slot frees when the server has seen the error; retry until then.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _, err := get(h.addr(), "big", 0, false)
		if err == nil {
			if !bytes.Equal(got, want) {
				t.Fatal("content differs")
			}
			break
		}
		if !strings.Contains(err.Error(), "busy") || time.Now().After(deadline) {
			t.Fatalf("after a slot freed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	r2()
	var busy, errs int
	for _, e := range h.eventsFor("big") {
		switch e.Result {
		case ResultBusy:
			busy++
		case ResultError:
			errs++
		}
	}
	if busy < 1 {
		t.Errorf("no busy event")
	}
	if got := testutil.ToFloat64(h.srv.metrics.transfers.WithLabelValues("big", ResultBusy)); int(got) != busy {
		t.Errorf("busy metric %v, events %d", got, busy)
	}
}

func TestMetrics(t *testing.T) {
	h := start(t, Options{})
	want := writeFile(t, filepath.Join(h.root, "a.efi"), 5000)
	for range 2 {
		if _, _, err := get(h.addr(), "a.efi", 0, false); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"nope-1", "nope-2", "../a.efi"} {
		if _, _, err := get(h.addr(), name, 0, false); err == nil {
			t.Fatalf("%s served", name)
		}
	}
	// Wait for the server's side of each of the five.
	h.waitEvent(t, "a.efi")
	kilntest.Eventually(t, 10*time.Second, "two events for a.efi", func() bool { return len(h.eventsFor("a.efi")) >= 2 })
	h.waitEvent(t, "../a.efi")

	expected := `
# HELP kiln_tftp_transfers_total TFTP read requests by file (base name of a file in the root, else other) and result (ok, not_found, denied, error, busy, peer_limit).
# TYPE kiln_tftp_transfers_total counter
kiln_tftp_transfers_total{file="a.efi",result="ok"} 2
kiln_tftp_transfers_total{file="other",result="busy"} 0
kiln_tftp_transfers_total{file="other",result="denied"} 1
kiln_tftp_transfers_total{file="other",result="error"} 0
kiln_tftp_transfers_total{file="other",result="not_found"} 2
kiln_tftp_transfers_total{file="other",result="ok"} 0
kiln_tftp_transfers_total{file="other",result="peer_limit"} 0
# HELP kiln_tftp_bytes_total File bytes sent by TFTP transfers, complete or not.
# TYPE kiln_tftp_bytes_total counter
kiln_tftp_bytes_total ` + fmt.Sprint(2*len(want)) + `
`
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(expected), "kiln_tftp_transfers_total", "kiln_tftp_bytes_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(h.srv.metrics.duration); n != 1 {
		t.Errorf("histogram series %d", n)
	}
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "kiln_tftp_transfer_seconds" {
			if c := mf.GetMetric()[0].GetHistogram().GetSampleCount(); c != 2 {
				t.Errorf("transfer_seconds count %d, want 2 (the started transfers)", c)
			}
		}
	}
}

func TestRealIPXE(t *testing.T) {
	bin := need(t, "tftp")
	const file = "/usr/lib/ipxe/undionly.kpxe"
	want, err := os.ReadFile(file)
	if err != nil {
		t.Skipf("%s not present (Debian package ipxe): %v", file, err)
	}
	h := start(t, Options{Root: filepath.Dir(file)})
	out := filepath.Join(t.TempDir(), "undionly.kpxe")
	if msg, err := run(t, bin, "127.0.0.1", h.port(), "-m", "binary", "-c", "get", "/undionly.kpxe", out); err != nil {
		t.Fatalf("tftp: %v: %s", err, msg)
	}
	got, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("fetched %d bytes (%v), want the %d of %s", len(got), err, len(want), file)
	}
}

func TestShutdownCutsStalledTransfers(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "f"), 10_000)
	srv, err := New(Options{Root: dir, Addr: "127.0.0.1:0", Timeout: 500 * time.Millisecond, Retries: 2}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	release := stall(t, srv.Addr().String(), "f")
	defer release()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(drainTimeout + 5*time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	// The listener is closed: its port can be bound again.
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(srv.Addr()))
	if err != nil {
		t.Fatalf("listener still open after Run returned: %v", err)
	}
	c.Close()
}

func TestCleanName(t *testing.T) {
	for in, want := range map[string]string{
		"ipxe.efi": "ipxe.efi", "/ipxe.efi": "ipxe.efi", "a//b": "a/b", "a/./b": "a/b",
		"..": "", "../x": "", "a/../b": "", "//etc/passwd": "", "": "", "/": "", "a\x00b": "", ".": "",
	} {
		got, err := cleanName(in)
		if want == "" {
			if err == nil {
				t.Errorf("cleanName(%q) = %q, want refused", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("cleanName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func FuzzCleanName(f *testing.F) {
	for _, s := range []string{"ipxe.efi", "/a/b", "../x", "a/../../b", "//etc", "a/./b/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		c, err := cleanName(name)
		if err != nil {
			return
		}
		if strings.HasPrefix(c, "/") || c == ".." || strings.HasPrefix(c, "../") || strings.Contains(c, "/../") || strings.HasSuffix(c, "/..") {
			t.Fatalf("cleanName(%q) = %q escapes", name, c)
		}
	})
}

func TestDrainCutsLongTransfers(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "f"), 512*200)
	var (
		mu  sync.Mutex
		evs []Event
	)
	srv, err := New(Options{Root: dir, Addr: "127.0.0.1:0", Timeout: 5 * time.Second}, nil, func(e Event) {
		mu.Lock()
		evs = append(evs, e)
		mu.Unlock()
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv.drain = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	// A slow client: it acknowledges a block every 20ms, so the transfer
	// would take 4s; the server must cut it 100ms after its context ends.
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rrq := append(binary.BigEndian.AppendUint16(nil, 1), "f\x00octet\x00"...)
	if _, err := conn.WriteToUDP(rrq, net.UDPAddrFromAddrPort(srv.Addr())); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1024)
	var stopped time.Time
	for block := 1; ; block++ {
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, tid, err := conn.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("block %d: %v", block, err)
		}
		op := binary.BigEndian.Uint16(buf)
		if op == 5 { // ERROR: cut
			if stopped.IsZero() {
				t.Fatalf("transfer cut before the server was stopped: %q", buf[4:n])
			}
			break
		}
		if op != 3 || n < 516 {
			t.Fatalf("block %d: unexpected packet % x", block, buf[:min(n, 8)])
		}
		if block == 5 {
			cancel()
			stopped = time.Now()
		}
		time.Sleep(20 * time.Millisecond)
		ack := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, 4), uint16(block))
		conn.WriteToUDP(ack, tid)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if took := time.Since(stopped); took > 2*time.Second {
		t.Errorf("Run took %v to return after its context ended, want about the 100ms drain", took)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(evs) != 1 || evs[0].Result != ResultError || evs[0].Bytes <= 0 || evs[0].Bytes >= 512*200 {
		t.Errorf("events %+v, want one error with part of the file sent", evs)
	}
}

// rrq sends a read request for name from a new socket on ip and returns
// the first answer: a DATA packet (op 3) with the server's transfer port, or
// an ERROR (op 5) with its message. end sends an ERROR to the transfer
// port, when there is one, and closes the socket.
func rrq(t *testing.T, ip net.IP, addr, name string) (op uint16, msg string, end func()) {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	pkt := binary.BigEndian.AppendUint16(nil, 1)
	pkt = append(pkt, name+"\x00octet\x00"...)
	if _, err := conn.WriteToUDP(pkt, ua); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1024)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, tid, err := conn.ReadFromUDP(buf)
	if err != nil || n < 4 {
		conn.Close()
		t.Fatalf("no answer to a read request from %s: %v", ip, err)
	}
	op = binary.BigEndian.Uint16(buf)
	if op == 5 {
		msg = strings.TrimRight(string(buf[4:n]), "\x00")
	}
	return op, msg, func() {
		if op == 3 {
			e := binary.BigEndian.AppendUint16(nil, 5)
			e = binary.BigEndian.AppendUint16(e, 0)
			e = append(e, "test done\x00"...)
			conn.WriteToUDP(e, tid)
		}
		conn.Close()
	}
}

// TestSlotExhaustionFromOnePeer performs the attack of issue 12 (6): 64
// read requests from one address, none acknowledged. That address gets at
// most MaxPerPeer transfers and "too many transfers from your address" for
// the rest, a client at another address completes its transfer meanwhile,
// and the attacker's slots come back after FirstBlockTimeout although
// pin/tftp keeps resending their first block for Timeout×Retries.
func TestSlotExhaustionFromOnePeer(t *testing.T) {
	attacker := net.IPv4(127, 0, 0, 2)
	if c, err := net.ListenUDP("udp", &net.UDPAddr{IP: attacker}); err != nil {
		t.Skipf("no second loopback address: %v", err)
	} else {
		c.Close()
	}
	const firstBlock = 500 * time.Millisecond
	// The server's own retry budget (5 s × 5) is what held slots for
	// ~26 s before; it stays.
	h := start(t, Options{Timeout: 5 * time.Second, Retries: 5, FirstBlockTimeout: firstBlock})
	want := writeFile(t, filepath.Join(h.root, "ipxe.efi"), 200_000)

	var started, refused int
	for range 64 {
		op, msg, end := rrq(t, attacker, h.addr(), "ipxe.efi")
		t.Cleanup(end)
		switch {
		case op == 3:
			started++
		case op == 5 && strings.Contains(msg, "too many transfers from your address"):
			refused++
		default:
			t.Fatalf("attacker's request: op %d %q", op, msg)
		}
	}
	if started != DefaultMaxPerPeer || refused != 64-DefaultMaxPerPeer {
		t.Fatalf("attacker started %d transfers and was refused %d, want %d and %d", started, refused, DefaultMaxPerPeer, 64-DefaultMaxPerPeer)
	}

	// A legitimate client elsewhere is served promptly meanwhile.
	t0 := time.Now()
	got, _, err := get(h.addr(), "ipxe.efi", 1428, true)
	if err != nil {
		t.Fatalf("legitimate client during the attack: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("legitimate client: content differs")
	}
	if took := time.Since(t0); took > 2*time.Second {
		t.Errorf("legitimate transfer took %s", took)
	}

	// The attacker's slots come back once the first-block timeout has
	// passed, long before pin/tftp gives up on them.
	deadline := time.Now().Add(firstBlock + 3*time.Second)
	for {
		op, msg, end := rrq(t, attacker, h.addr(), "ipxe.efi")
		end()
		if op == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("attacker's slots still held %s after the first-block timeout: %q", time.Since(t0), msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := testutil.ToFloat64(h.srv.metrics.refusals.WithLabelValues(RefusedPeerLimit)); got < 64-DefaultMaxPerPeer {
		t.Errorf("peer_limit refusals %v, want at least %d", got, 64-DefaultMaxPerPeer)
	}
	if got := testutil.ToFloat64(h.srv.metrics.refusals.WithLabelValues(RefusedFirstBlock)); got < 1 {
		t.Errorf("first_block_timeout %v, want at least 1", got)
	}
}

// TestLateFirstAckStillServed: a client whose first acknowledgement comes
// after FirstBlockTimeout (a lost packet on a slow link) loses its slot
// meanwhile, but takes one again when the acknowledgement comes and gets
// the whole file, since slots are free.
func TestLateFirstAckStillServed(t *testing.T) {
	h := start(t, Options{Timeout: 5 * time.Second, Retries: 5, FirstBlockTimeout: 200 * time.Millisecond})
	want := writeFile(t, filepath.Join(h.root, "f"), 3*512+100)
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ua, _ := net.ResolveUDPAddr("udp", h.addr())
	conn.WriteToUDP(append(binary.BigEndian.AppendUint16(nil, 1), "f\x00octet\x00"...), ua)
	buf := make([]byte, 1024)
	var got []byte
	var tid *net.UDPAddr
	for block := uint16(1); ; block++ {
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("block %d: %v", block, err)
		}
		if op := binary.BigEndian.Uint16(buf); op != 3 || binary.BigEndian.Uint16(buf[2:]) != block {
			t.Fatalf("block %d: got % x", block, buf[:min(n, 40)])
		}
		tid = from
		got = append(got, buf[4:n]...)
		if block == 1 {
			// Acknowledge only once the server has given the slot back.
			kilntest.Eventually(t, 10*time.Second, "the first-block refusal counted", func() bool {
				return testutil.ToFloat64(h.srv.metrics.refusals.WithLabelValues(RefusedFirstBlock)) == 1
			})
		}
		conn.WriteToUDP(binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, 4), block), tid)
		if n-4 < 512 {
			break
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d", len(got), len(want))
	}
	if ev := h.waitEvent(t, "f"); ev.Result != ResultOK {
		t.Errorf("event %+v, want ok", ev)
	}
}
