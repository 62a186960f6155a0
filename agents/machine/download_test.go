package machine

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// A rack's boot server cuts the transfer and is gone for a moment (its
// leader failed over): the download waits, resumes where it broke off at
// the same address, and ends with every byte.
func TestResumeAcrossABriefOutage(t *testing.T) {
	data := bytes.Repeat([]byte("kiln-image-"), 100_000) // 1.1 MB
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	var cut atomic.Bool
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		start := 0
		if rg := r.Header.Get("Range"); rg != "" {
			start, _ = strconv.Atoi(rg[len("bytes=") : len(rg)-1])
			w.Header().Set("Content-Range", "bytes "+strconv.Itoa(start)+"-"+strconv.Itoa(len(data)-1)+"/"+strconv.Itoa(len(data)))
			w.Header().Set("Content-Length", strconv.Itoa(len(data)-start))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[start:])
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.WriteHeader(http.StatusOK)
		w.Write(data[:len(data)/3])
		w.(http.Flusher).Flush()
		cut.Store(true)
		conn, _, _ := w.(http.Hijacker).Hijack() // the leader dies mid-transfer
		conn.Close()
	})
	srv := &http.Server{Handler: handler}
	go srv.Serve(ln)
	body, err := openResuming(context.Background(), http.DefaultClient, "http://"+addr+"/img", time.Minute, 5, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	// The first third arrives; then the server is gone, and back 1.2 s later.
	first := make([]byte, len(data)/3)
	if _, err := io.ReadFull(body, first); err != nil {
		t.Fatal(err)
	}
	for !cut.Load() {
		time.Sleep(time.Millisecond)
	}
	srv.Close()
	back := make(chan error, 1)
	go func() {
		time.Sleep(1200 * time.Millisecond) // the outage the test is about
		ln2, err := net.Listen("tcp", addr)
		if err != nil {
			back <- err
			return
		}
		back <- nil
		srv2 := &http.Server{Handler: handler}
		t.Cleanup(func() { srv2.Close() })
		srv2.Serve(ln2)
	}()
	rest, err := io.ReadAll(body)
	if err != nil {
		t.Fatalf("after the outage: %v", err)
	}
	if err := <-back; err != nil {
		t.Fatal(err)
	}
	if got := append(first, rest...); !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes, want %d, equal %v", len(got), len(data), bytes.Equal(got, data))
	}
}
