//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pintftp "github.com/pin/tftp/v3"

	"github.com/kilnhq/kiln/netboot/tftp"
)

const (
	tftpBenchClients = 200
	tftpBenchSize    = 1 << 20
	tftpBenchBlksize = 1432 // what iPXE asks for
)

// BenchmarkTFTP fetches a 1 MB file 200 times at once (200 goroutines of
// pin/tftp's client, blksize 1432, tsize asked) from Kiln's TFTP server and
// then from tftpd-hpa (in.tftpd in the foreground on a high port of
// 127.0.0.1), one after the other in the same run, and reports each one's
// total time and failed fetches, and the ratio of Kiln's time to tftpd's.
// Kiln runs with MaxTransfers and MaxPerPeer 200 so that no request is
// refused (all clients share 127.0.0.1).
//
// Run it with `make bench-tftp` (root, for in.tftpd's chroot and user
// switch) on an otherwise idle machine.
func BenchmarkTFTP(b *testing.B) {
	tftpd, err := exec.LookPath("in.tftpd")
	if err != nil {
		b.Skip("in.tftpd not installed (Debian: apt-get install tftpd-hpa); CI installs it")
	}
	if os.Geteuid() != 0 {
		b.Skip("in.tftpd needs root for its chroot and user switch; run make bench-tftp as root")
	}
	// A directory the user nobody (tftpd's) can read.
	dir, err := os.MkdirTemp("", "kiln-tftpbench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	want := make([]byte, tftpBenchSize)
	rand.Read(want)
	if err := os.WriteFile(filepath.Join(dir, "bench.bin"), want, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "probe.txt"), []byte("ready\n"), 0o644); err != nil {
		b.Fatal(err)
	}

	for range b.N {
		kiln := benchKilnTFTP(b, dir, want)
		hpa := benchTFTPHPA(b, tftpd, dir, want)
		b.Logf("kiln: %v, %d failed; tftpd-hpa: %v, %d failed", kiln.took, kiln.failed, hpa.took, hpa.failed)
		b.ReportMetric(kiln.took.Seconds(), "kiln-s")
		b.ReportMetric(float64(kiln.failed), "kiln-failures")
		b.ReportMetric(hpa.took.Seconds(), "tftpd-s")
		b.ReportMetric(float64(hpa.failed), "tftpd-failures")
		b.ReportMetric(kiln.took.Seconds()/hpa.took.Seconds(), "kiln/tftpd")
	}
}

type tftpRound struct {
	took   time.Duration
	failed int
}

// benchKilnTFTP runs Kiln's server in a child process (this test binary,
// TestTFTPBenchServer), so that it does not share a Go runtime with the
// clients, as in.tftpd does not.
func benchKilnTFTP(b *testing.B, dir string, want []byte) tftpRound {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestTFTPBenchServer$")
	cmd.Env = append(os.Environ(), "KILN_TFTPBENCH_ROOT="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start kiln tftp: %v", err)
	}
	defer func() {
		stdin.Close() // the server's signal to stop
		if err := cmd.Wait(); err != nil {
			b.Errorf("kiln tftp: %v", err)
		}
	}()
	var addr string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "tftp-addr "); ok {
			addr = a
			break
		}
	}
	if addr == "" {
		b.Fatalf("kiln tftp printed no address: %v", sc.Err())
	}
	go io.Copy(io.Discard, stdout) // ends when the child exits
	waitTFTP(b, addr)
	return fetchAll(b, addr, want)
}

// TestTFTPBenchServer is BenchmarkTFTP's child process, not a test: with
// KILN_TFTPBENCH_ROOT set it serves that directory on 127.0.0.1, prints
// the address and stops when its stdin closes.
func TestTFTPBenchServer(t *testing.T) {
	root := os.Getenv("KILN_TFTPBENCH_ROOT")
	if root == "" {
		t.Skip("the server process of BenchmarkTFTP, run by it")
	}
	srv, err := tftp.New(tftp.Options{Root: root, Addr: "127.0.0.1:0", MaxTransfers: tftpBenchClients, MaxPerPeer: tftpBenchClients}, nil, nil,
		slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	fmt.Printf("tftp-addr %s\n", srv.Addr())
	if err := srv.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

func benchTFTPHPA(b *testing.B, bin, dir string, want []byte) tftpRound {
	b.Helper()
	port := tftpFreePort(b)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(bin, "-L", "-s", "-a", addr, dir)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its per-transfer children too
	if err := cmd.Start(); err != nil {
		b.Fatalf("start in.tftpd: %v", err)
	}
	defer func() {
		// Let in.tftpd reap its per-transfer children before it stops, or
		// they are left as zombies of PID 1.
		deadline := time.Now().Add(10 * time.Second)
		for groupSize(cmd.Process.Pid) > 1 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		cmd.Wait()
	}()
	waitTFTP(b, addr)
	return fetchAll(b, addr, want)
}

// fetchAll runs the clients at once and times them to the last one.
func fetchAll(b *testing.B, addr string, want []byte) tftpRound {
	b.Helper()
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed int
		first  error
	)
	startAll := make(chan struct{})
	for range tftpBenchClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-startAll
			got, err := fetchTFTP(addr, "bench.bin", tftpBenchBlksize)
			if err == nil && !bytes.Equal(got, want) {
				err = fmt.Errorf("got %d bytes that differ from the %d of the file", len(got), len(want))
			}
			if err != nil {
				mu.Lock()
				failed++
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	t0 := time.Now()
	close(startAll)
	wg.Wait()
	took := time.Since(t0)
	if first != nil {
		b.Logf("%s: %d of %d fetches failed, first: %v", addr, failed, tftpBenchClients, first)
	}
	return tftpRound{took: took, failed: failed}
}

func fetchTFTP(addr, name string, blksize int) ([]byte, error) {
	c, err := pintftp.NewClient(addr)
	if err != nil {
		return nil, err
	}
	c.SetTimeout(2 * time.Second)
	c.SetRetries(5)
	c.SetBlockSize(blksize)
	c.RequestTSize(true)
	wt, err := c.Receive(name, "octet")
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Grow(tftpBenchSize)
	if _, err := wt.WriteTo(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// waitTFTP waits until a server on addr serves probe.txt in full.
func waitTFTP(b *testing.B, addr string) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := pintftp.NewClient(addr)
		if err != nil {
			b.Fatal(err)
		}
		c.SetTimeout(200 * time.Millisecond)
		c.SetRetries(1)
		wt, err := c.Receive("probe.txt", "octet")
		if err == nil {
			_, err = wt.WriteTo(io.Discard)
		}
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("no TFTP server on %s: %v", addr, err)
		}
	}
}

// groupSize counts the live processes of process group pgid.
func groupSize(pgid int) int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	n := 0
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp …; comm may hold spaces, so split after ")".
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		var state string
		var ppid, pgrp int
		if _, err := fmt.Sscan(string(b[i+1:]), &state, &ppid, &pgrp); err == nil && pgrp == pgid && state != "Z" {
			n++
		}
	}
	return n
}

func tftpFreePort(b *testing.B) int {
	b.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}
