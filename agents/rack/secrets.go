package rack

import (
	"context"

	"github.com/kilnhq/kiln/spec"
)

// loadSecrets fills in, in memory, the plaintext BMC passwords of this
// rack's machines that the region moved out of the desired state into
// the rack's secrets (only the region and this rack can read them). On
// failure the machines keep the marker, and their power actions fail
// saying the password was not loaded; the next read of the desired state
// tries again.
func (a *Agent) loadSecrets(ctx context.Context, inv *spec.Inventory) {
	if err := a.store.FillSecrets(ctx, a.cfg.Rack, inv); err != nil && ctx.Err() == nil {
		a.log.Warn("cannot read the rack's BMC secrets; power actions on machines with a plaintext password will fail", "err", err)
	}
}
