package netlab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrTimeout is returned by waits that ran out of time.
var ErrTimeout = errors.New("timed out")

// Proc is a process running inside a namespace (through `ip netns exec`,
// which execs the command: the pid is the command's). Its stdout and
// stderr go to a buffer and to LogPath. It is in its own process group,
// gets SIGKILL if the test process dies, and is stopped (SIGTERM to the
// group, SIGKILL Lab.StopTimeout later) at the Lab's cleanup.
type Proc struct {
	Name    string
	NS      *NS
	Args    []string
	LogPath string

	cmd  *exec.Cmd
	log  *logBuffer
	done chan struct{}
	err  error // set before done is closed
}

// Cmd describes a process to start.
type Cmd struct {
	Name string   // for the log file and messages; default the program's base name
	Args []string // program and arguments
	Env  []string // added to the environment
	Dir  string   // working directory
}

// Start runs args inside the namespace as a managed process.
func (n *NS) Start(name string, args ...string) *Proc {
	n.Lab.T.Helper()
	return n.StartCmd(Cmd{Name: name, Args: args})
}

// StartCmd runs c inside the namespace as a managed process.
func (n *NS) StartCmd(c Cmd) *Proc {
	l := n.Lab
	l.T.Helper()
	if c.Name == "" {
		c.Name = c.Args[0][strings.LastIndex(c.Args[0], "/")+1:]
	}
	name := l.uniq("proc", n.Short+"-"+c.Name)
	p := &Proc{Name: name, NS: n, Args: c.Args, LogPath: l.Path(name + ".log"), done: make(chan struct{})}
	f, err := os.Create(p.LogPath)
	if err != nil {
		l.T.Fatalf("netlab: %v", err)
	}
	p.log = newLogBuffer(f)
	p.cmd = n.Command(c.Args...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.Dir = c.Dir
	if len(c.Env) > 0 {
		p.cmd.Env = append(os.Environ(), c.Env...)
	}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p.cmd.WaitDelay = 2 * time.Second // a child holding the output pipe can't hang Wait
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.T.Fatalf("netlab: Start %s after the lab was closed", name)
	}
	if err := p.cmd.Start(); err != nil {
		l.mu.Unlock()
		l.T.Fatalf("netlab: start %s: %v", name, err)
	}
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	go func() {
		p.err = p.cmd.Wait()
		p.log.close()
		close(p.done)
	}()
	return p
}

// Pid returns the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Log returns everything the process printed so far.
func (p *Proc) Log() string { s, _ := p.log.snapshot(); return s }

// Mark returns the current length of the log, for WaitLogFrom.
func (p *Proc) Mark() int { s, _ := p.log.snapshot(); return len(s) }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err returns the exit error (nil for exit code 0) once exited.
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// ExitCode returns the exit code, -1 if killed by a signal or still running.
func (p *Proc) ExitCode() int {
	if !p.Exited() {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *Proc) state() string {
	if !p.Exited() {
		return "was running"
	}
	return p.cmd.ProcessState.String()
}

// Wait waits for the process to exit and returns its exit error, or
// ErrTimeout.
func (p *Proc) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("%s still running after %s: %w", p.Name, timeout, ErrTimeout)
	}
}

// WaitLog waits until the log matches the regular expression and returns
// the first matching line. It returns an error on timeout or when the
// process exits without printing it.
func (p *Proc) WaitLog(re string, timeout time.Duration) (string, error) {
	return p.WaitLogFrom(0, re, timeout)
}

// WaitLogFrom is WaitLog considering only output after mark (see Mark).
func (p *Proc) WaitLogFrom(mark int, re string, timeout time.Duration) (string, error) {
	rx, err := regexp.Compile("(?m)" + re)
	if err != nil {
		return "", err
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s, changed := p.log.snapshot()
		if mark > len(s) {
			mark = len(s)
		}
		if loc := rx.FindStringIndex(s[mark:]); loc != nil {
			start := strings.LastIndexByte(s[:mark+loc[0]], '\n') + 1
			end := strings.IndexByte(s[mark+loc[0]:], '\n')
			if end < 0 {
				return s[start:], nil
			}
			return s[start : mark+loc[0]+end], nil
		}
		if changed == nil { // closed: the process exited and its output is complete
			return "", fmt.Errorf("%s exited (%v) without printing /%s/", p.Name, p.err, re)
		}
		select {
		case <-changed:
		case <-deadline.C:
			return "", fmt.Errorf("%s did not print /%s/ within %s: %w", p.Name, re, timeout, ErrTimeout)
		}
	}
}

// Expect is WaitLog failing the test (with the process's output) on error.
func (p *Proc) Expect(re string, timeout time.Duration) string {
	t := p.NS.Lab.T
	t.Helper()
	line, err := p.WaitLog(re, timeout)
	if err != nil {
		t.Fatalf("netlab: %v; output:\n%s", err, tail(p.Log(), 6000))
	}
	return line
}

// Signal sends a signal to the process group.
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	return syscall.Kill(-p.Pid(), sig)
}

// Kill9 kills the process group with SIGKILL (a crash, for failover
// tests) and waits for the process to be reaped.
func (p *Proc) Kill9() {
	p.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}

// Stop sends SIGTERM to the process group, then SIGKILL after the Lab's
// StopTimeout, and
// returns the exit error: nil for a clean exit or death by that SIGTERM.
// Stopping an exited process returns its exit error.
func (p *Proc) Stop() error {
	if p.Exited() {
		return p.err
	}
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
			return nil
		}
		return p.err
	case <-time.After(p.NS.Lab.StopTimeout):
	}
	p.Kill9()
	return fmt.Errorf("%s ignored SIGTERM for %s and was killed", p.Name, p.NS.Lab.StopTimeout)
}

// logBuffer is an output buffer that wakes up waiters on every write.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	file    *os.File
	changed chan struct{} // closed and replaced on each write; nil once closed
}

func newLogBuffer(f *os.File) *logBuffer {
	return &logBuffer{file: f, changed: make(chan struct{})}
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if b.file != nil {
		b.file.Write(p)
	}
	if b.changed != nil {
		close(b.changed)
		b.changed = make(chan struct{})
	}
	return len(p), nil
}

func (b *logBuffer) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.file != nil {
		b.file.Close()
		b.file = nil
	}
	if b.changed != nil {
		close(b.changed)
		b.changed = nil
	}
}

// snapshot returns the content and a channel closed at the next write,
// or nil when no more output will come.
func (b *logBuffer) snapshot() (string, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.changed == nil {
		return b.buf.String(), nil
	}
	return b.buf.String(), b.changed
}
