package reconciler_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory/election"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// kiln_rack_has_leader comes from the region, so a rack whose agents are
// all gone still has a series, at 0.
func TestRackHasLeader(t *testing.T) {
	e := newEnv(t)
	e.apply(lab(t, map[string]string{"m": "state: ready"}), "r1")
	r, reg := e.region("region-1", reconciler.Config{})
	kilntest.Eventually(t, 30*time.Second, "region leads", r.Leading)
	wantRackLeader(t, reg, 0) // once the leader has loaded the inventory

	// A rack agent's election, as agents/rack runs it.
	ctx, cancel := context.WithCancel(e.ctx)
	leading := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- election.Run(ctx, e.cli, e.store.Keys().RackElection("r1"), "agent-a", election.Options{TTL: time.Second},
			func(lctx context.Context, _ election.Term) error {
				close(leading)
				<-lctx.Done()
				return nil
			})
	}()
	select {
	case <-leading:
	case <-time.After(30 * time.Second):
		t.Fatal("the agent did not lead r1")
	}
	wantRackLeader(t, reg, 1)

	cancel() // the last agent of r1 stops and resigns
	<-done
	wantRackLeader(t, reg, 0)
}

func rackLeaderText(v int) *strings.Reader {
	return strings.NewReader(fmt.Sprintf(`
# HELP kiln_rack_has_leader 1 while some agent of the rack holds its election, 0 when none does, for every rack in the inventory (reported by the region leader, so it stays when all of a rack's agents are gone).
# TYPE kiln_rack_has_leader gauge
kiln_rack_has_leader{rack="r1"} %d
`, v))
}

// wantRackLeader waits until kiln_rack_has_leader{rack="r1"} is v.
func wantRackLeader(t *testing.T, reg *prometheus.Registry, v int) {
	t.Helper()
	kilntest.Eventually(t, 10*time.Second, fmt.Sprintf("kiln_rack_has_leader %d", v), func() bool {
		return testutil.GatherAndCompare(reg, rackLeaderText(v), "kiln_rack_has_leader") == nil
	})
}
