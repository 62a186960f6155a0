package vbmc

import (
	"context"
	"sync"
	"time"
)

// Memory is a machine that exists only as state: no process, no console.
// It serves protocol tests and people trying Kiln without QEMU. Graceful
// shutdowns complete at once unless SetGraceful says otherwise.
type Memory struct {
	mu      sync.Mutex
	state   PowerState
	stats   MemoryStats
	changed chan struct{} // closed and replaced on every change
	closed  bool

	gracefulDelay  time.Duration
	ignoreGraceful bool
	pending        *time.Timer // a delayed graceful shutdown
}

// MemoryStats counts what a Memory machine was asked to do.
type MemoryStats struct {
	Starts       int  // power-ons that started the machine
	Resets       int  // warm resets
	HardOffs     int  // immediate power-offs of a running machine
	GracefulOffs int  // graceful shutdown requests to a running machine
	LastBoot     Boot // how the machine last started or reset
}

// NewMemory returns a machine that is off.
func NewMemory() *Memory {
	return &Memory{state: Off, changed: make(chan struct{})}
}

// SetGraceful sets how the pretend operating system answers a graceful
// shutdown: off after delay (0: at once), or never when ignore is true
// (only a hard power-off stops it then).
func (m *Memory) SetGraceful(delay time.Duration, ignore bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gracefulDelay, m.ignoreGraceful = delay, ignore
}

// SetState changes the power state behind the BMC's back, as a guest that
// shuts itself down or a person at the power button would.
func (m *Memory) SetState(s PowerState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setLocked(s)
}

// Stats returns the counters.
func (m *Memory) Stats() MemoryStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stats
}

// WaitState waits until the machine is in state s or ctx ends.
func (m *Memory) WaitState(ctx context.Context, s PowerState) error {
	for {
		m.mu.Lock()
		cur, ch := m.state, m.changed
		m.mu.Unlock()
		if cur == s {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (m *Memory) setLocked(s PowerState) {
	if m.pending != nil {
		m.pending.Stop()
		m.pending = nil
	}
	if m.state != s {
		m.state = s
		close(m.changed)
		m.changed = make(chan struct{})
	}
}

func (m *Memory) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if m.closed {
		return ErrClosed
	}
	return nil
}

// PowerOn implements Machine.
func (m *Memory) PowerOn(ctx context.Context, boot Boot) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return err
	}
	if m.state == On {
		return nil
	}
	m.stats.Starts++
	m.stats.LastBoot = boot
	m.setLocked(On)
	return nil
}

// PowerOff implements Machine.
func (m *Memory) PowerOff(ctx context.Context, hard bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return err
	}
	if m.state == Off {
		return nil
	}
	if hard {
		m.stats.HardOffs++
		m.setLocked(Off)
		return nil
	}
	m.stats.GracefulOffs++
	switch {
	case m.ignoreGraceful:
	case m.gracefulDelay <= 0:
		m.setLocked(Off)
	case m.pending == nil:
		var t *time.Timer
		t = time.AfterFunc(m.gracefulDelay, func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			if m.pending == t {
				m.pending = nil
				m.setLocked(Off)
			}
		})
		m.pending = t
	}
	return nil
}

// Reset implements Machine.
func (m *Memory) Reset(ctx context.Context, boot Boot) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return err
	}
	if m.state != On {
		return ErrPoweredOff
	}
	if m.pending != nil { // a reset ends a shutdown in progress
		m.pending.Stop()
		m.pending = nil
	}
	m.stats.Resets++
	m.stats.LastBoot = boot
	return nil
}

// State implements Machine.
func (m *Memory) State(ctx context.Context) (PowerState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return "", err
	}
	return m.state, nil
}

// Close implements Machine: the machine goes off and refuses further calls.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed {
		m.setLocked(Off)
		m.closed = true
	}
	return nil
}
