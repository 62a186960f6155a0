package facts

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kilnhq/kiln/spec/agentapi"
)

// fakeSwitches stands in for the raw sockets: each interface's listener
// gets the neighbour sent on its channel, or nothing until its context
// ends; an interface without a channel cannot be listened on.
type fakeSwitches map[string]chan agentapi.Neighbor

func (s fakeSwitches) listen(ctx context.Context, name string) (*agentapi.Neighbor, error) {
	ch, ok := s[name]
	if !ok {
		return nil, errors.New("lldp on " + name + ": no such interface")
	}
	select {
	case n := <-ch:
		n.Interface = name
		return &n, nil
	case <-ctx.Done():
		return nil, nil
	}
}

func newFakeSwitches(names ...string) fakeSwitches {
	s := fakeSwitches{}
	for _, n := range names {
		s[n] = make(chan agentapi.Neighbor, 1)
	}
	return s
}

// Frames heard on every interface end the wait at once, long before the
// bound: the test's own deadline is far shorter than the watch's.
func TestLLDPWatchReturnsWhenEveryInterfaceHeard(t *testing.T) {
	t.Parallel()
	sw := newFakeSwitches("eth0", "eth1")
	w := newLLDPWatch(context.Background(), time.Hour, sw.listen, nil)
	defer w.Stop()
	w.Listen("eth0", "eth1")
	sw["eth1"] <- agentapi.Neighbor{PortID: "Ethernet2"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan []agentapi.Neighbor, 1)
	go func() {
		found, errs := w.Neighbours(ctx, []string{"eth0", "eth1"})
		if len(errs) > 0 {
			t.Errorf("errors %v", errs)
		}
		done <- found
	}()
	sw["eth0"] <- agentapi.Neighbor{PortID: "Ethernet1"}
	found := <-done
	if len(found) != 2 || found[0].Interface != "eth0" || found[0].PortID != "Ethernet1" || found[1].PortID != "Ethernet2" {
		t.Fatalf("neighbours %+v", found)
	}
}

// Without frames the wait ends at the watch's deadline, counted from its
// start; an interface first asked for after it ends at once.
func TestLLDPWatchBound(t *testing.T) {
	t.Parallel()
	sw := newFakeSwitches("eth0", "eth1")
	const bound = 300 * time.Millisecond
	start := time.Now()
	w := newLLDPWatch(context.Background(), bound, sw.listen, nil)
	defer w.Stop()
	w.Listen("eth0")
	found, errs := w.Neighbours(context.Background(), []string{"eth0"})
	if took := time.Since(start); len(found) != 0 || len(errs) != 0 || took < bound || took > bound+5*time.Second {
		t.Fatalf("found %v errs %v after %s, want nothing after %s", found, errs, took, bound)
	}
	at := time.Now()
	found, errs = w.Neighbours(context.Background(), []string{"eth1"})
	if took := time.Since(at); took > time.Second || len(found) != 0 || len(errs) != 0 {
		t.Fatalf("an interface asked for after the deadline: found %v errs %v after %s", found, errs, took)
	}
}

// An interface that cannot be listened on is an error; the others still
// report. The caller's context ends the wait too.
func TestLLDPWatchErrorsAndCancel(t *testing.T) {
	t.Parallel()
	sw := newFakeSwitches("eth0", "eth1")
	w := newLLDPWatch(context.Background(), time.Hour, sw.listen, nil)
	defer w.Stop()
	sw["eth0"] <- agentapi.Neighbor{PortID: "Ethernet1"}
	found, errs := w.Neighbours(context.Background(), []string{"eth0", "nope0"})
	if len(found) != 1 || len(errs) != 1 {
		t.Fatalf("found %v errs %v", found, errs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, errs := w.Neighbours(ctx, []string{"eth1"}); len(errs) != 1 || !errors.Is(errs[0], context.Canceled) {
		t.Fatalf("cancelled: errs %v", errs)
	}
}

// The collector waits only for the interfaces that are up.
func TestLLDPCollectorWaitsForUpInterfaces(t *testing.T) {
	t.Parallel()
	sw := newFakeSwitches("eth0", "eth1", "eth2")
	w := newLLDPWatch(context.Background(), time.Hour, sw.listen, nil)
	defer w.Stop()
	sw["eth0"] <- agentapi.Neighbor{PortID: "Ethernet1"}
	sw["eth2"] <- agentapi.Neighbor{PortID: "Ethernet3"}
	f := agentapi.Facts{NICs: []agentapi.NIC{{Name: "eth0", OperState: "up", Carrier: true}, {Name: "eth1", OperState: "down"}, {Name: "eth2", Carrier: true}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := (LLDPCollector{Watch: w}).Collect(ctx, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.LLDP) != 2 || f.LLDP[0].Interface != "eth0" || f.LLDP[1].Interface != "eth2" {
		t.Fatalf("lldp %+v", f.LLDP)
	}
}
