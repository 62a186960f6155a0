package reconciler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// Power actions asked through the region API (kiln power with --server):
// the API records the ask in the status (RequestPower), and the region
// leader decides it like anything else (powerRequest): one task per
// machine (decision 10), the wanted state recorded so that the power watch
// does not call it drift, and a working phase refused unless forced.

// PowerActions are the actions RequestPower takes.
var PowerActions = []string{"on", "off", "cycle"}

// ErrBusy: the machine is in a working phase; only a forced power action
// interrupts it.
var ErrBusy = errors.New("in a working phase")

// working says whether Kiln is in the middle of powering and booting the
// machine itself.
func working(phase string) bool {
	switch phase {
	case PhaseCommissioning, PhaseDeploying, PhaseReleasing, PhaseErasing:
		return true
	}
	return false
}

// RequestPower records a power action for the region leader to carry out
// (compare-and-swap on the status; only powerRequest changes). It returns
// the machine's phase; a machine in a working phase gives ErrBusy unless
// force, one without status inventory.ErrNotFound.
func RequestPower(ctx context.Context, store StatusUpdater, machine, action, by string, force bool, now time.Time) (string, error) {
	if !slices.Contains(PowerActions, action) {
		return "", fmt.Errorf("power action %q: want on, off or cycle", action)
	}
	req := inventory.PowerRequest{Action: action, By: by, At: now.UTC(), Force: force}
	return setStatusField(ctx, store, machine, "powerRequest", req, func(st inventory.MachineStatus) error {
		if working(st.Phase) && !force {
			return fmt.Errorf("%s is %s: %w (force it to interrupt)", machine, st.Phase, ErrBusy)
		}
		return nil
	})
}

// powerRequest carries out the status's power request, once: a working
// phase refuses it unless forced, and then fails (a person interrupted
// it); otherwise the one power task for it is written and the wanted
// state recorded for the power watch.
func (d *decider) powerRequest() {
	st := d.st()
	r := st.PowerRequest
	if r == nil {
		return
	}
	st.PowerRequest = nil
	who := fmt.Sprintf("power %s asked by %s", r.Action, r.By)
	if working(st.Phase) {
		if !r.Force {
			d.event("Warning", "PowerRefused", who+" refused: the machine is "+st.Phase+" (force it to interrupt)")
			return
		}
		d.fail(who + " (forced) interrupted " + st.Phase + "; kiln retry tries it again")
		st.Attempts = d.p.MaxAttempts // a person interrupted it: no retry on Kiln's own
	}
	action, wanted := inventory.TaskDiskboot, powerOn
	if r.Action == "off" {
		action, wanted = inventory.TaskOff, powerOff
	} else {
		st.BootPurpose = agentapi.PurposeLocal
	}
	d.newTask(action, "")
	st.PowerWanted = wanted
	d.event("Normal", "PowerAction", fmt.Sprintf("%s: a %s task for rack %s", who, action, st.Rack))
}
