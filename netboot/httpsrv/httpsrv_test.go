package httpsrv

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func serve(t *testing.T, h http.Handler, o Options) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := Serve(ctx, ln, h, o, nil)
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// get sends one keep-alive request on c and reads the answer.
func get(t *testing.T, c net.Conn, br *bufio.Reader) *http.Response {
	t.Helper()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

var ok = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })

// TestIdleConnectionClosed performs the attack of issue 12 (8): a
// keep-alive connection that makes a request and goes idle. The server
// closes it after IdleTimeout; the read sees EOF.
func TestIdleConnectionClosed(t *testing.T) {
	const idle = 300 * time.Millisecond
	addr := serve(t, ok, Options{IdleTimeout: idle})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if resp := get(t, c, br); resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("status %d, close %v", resp.StatusCode, resp.Close)
	}
	t0 := time.Now()
	c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a guard, not the wait
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection: read %v, want EOF (closed by the server)", err)
	}
	if took := time.Since(t0); took < idle/2 || took > 5*time.Second {
		t.Errorf("closed after %s, want about %s", took, idle)
	}
}

// TestConnectionLimit holds MaxConns connections open; the next one is
// accepted by the kernel but not served until one of them closes.
func TestConnectionLimit(t *testing.T) {
	addr := serve(t, ok, Options{MaxConns: 2})
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if resp := get(t, c, bufio.NewReader(c)); resp.StatusCode != http.StatusOK {
			t.Fatal(resp.Status)
		}
		held = append(held, c)
	}
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	answered := make(chan error, 1)
	go func() {
		if _, err := io.WriteString(extra, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			answered <- err
			return
		}
		resp, err := http.ReadResponse(bufio.NewReader(extra), nil)
		if err == nil {
			resp.Body.Close()
		}
		answered <- err
	}()
	// While two connections are held the third is not served: a request
	// on a held connection is answered, and the third still is not.
	if resp := get(t, held[0], bufio.NewReader(held[0])); resp.StatusCode != http.StatusOK {
		t.Fatal(resp.Status)
	}
	select {
	case err := <-answered:
		t.Fatalf("third connection served while two were held (err %v)", err)
	default:
	}
	held[1].Close()
	select {
	case err := <-answered:
		if err != nil {
			t.Fatalf("third connection after one closed: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("third connection not served after one closed")
	}
}

// TestLimits checks the header limit and the defaults.
func TestLimits(t *testing.T) {
	srv, ln := New(ok, nil, Options{})
	_ = ln
	if srv.ReadHeaderTimeout != DefaultReadHeaderTimeout || srv.IdleTimeout != DefaultIdleTimeout || srv.MaxHeaderBytes != DefaultMaxHeaderBytes {
		t.Errorf("defaults not applied: %+v", srv)
	}
	addr := serve(t, ok, Options{MaxHeaderBytes: 1024})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 64<<10)+"\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("64 KiB header: %s, want 431", resp.Status)
	}
}
