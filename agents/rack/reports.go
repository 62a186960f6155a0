package rack

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// Report stores what a machine agent or deployed OS reported at
// reports/<rack>/<machine>, under this rack's own prefix: the rack never
// writes a machine's status (the region owns it). The record belongs to
// one boot (the TaskID of the token the report came with); a report of
// another task starts a fresh record, so facts and results of an earlier
// boot never pass for this one's.
func (b bootBackend) Report(ctx context.Context, machine string, r agentapi.Report) error {
	// An unknown MAC's report expires with its discovered record.
	lease := clientv3.NoLease
	if mac, ok := spec.DiscoveredMAC(machine); ok {
		l, err := b.a.DiscoveredLease(ctx, mac)
		if err != nil {
			return fmt.Errorf("store report of %s: %w", machine, err)
		}
		lease = l
	}
	task, err := b.handedOver(ctx, machine, r.TaskID)
	if err != nil {
		return fmt.Errorf("store report of %s: %w", machine, err)
	}
	r.TaskID = task
	now := time.Now().UTC()
	err = b.a.store.UpdateReport(ctx, b.a.cfg.Rack, machine, r.TaskID, lease, func(rep *inventory.MachineReport) {
		if r.BootID != "" {
			rep.BootID = r.BootID
		}
		switch {
		case r.Facts != nil:
			rep.Facts = r.Facts
		case r.Progress != nil:
			rep.Progress = &inventory.AgentProgress{Phase: r.Progress.Phase, BytesWritten: r.Progress.BytesWritten, TotalBytes: r.Progress.TotalBytes, At: now}
		case r.Result != nil:
			rep.Result = &inventory.AgentResult{Success: r.Result.Success, Reason: r.Result.Reason, At: now}
		case r.OS != nil:
			rep.OSReport = &inventory.OSReport{Hostname: r.OS.Hostname, FQDN: r.OS.FQDN, InstanceID: r.OS.InstanceID,
				BootID: r.OS.BootID, Address: r.OS.Address, At: now}
		}
	})
	if err != nil {
		return fmt.Errorf("store report of %s: %w", machine, err)
	}
	return nil
}

// handedOver is the boot a report of boot task belongs to: the deploy's
// boot when the region handed that (commissioning) boot the deploy (fast
// track: status fastTrackFrom), else task itself. Only the region's
// record of that one handover moves a boot's reports; a token of any
// other boot keeps its own task, whose reports the region ignores.
func (b bootBackend) handedOver(ctx context.Context, machine, task string) (string, error) {
	if task == "" || spec.IsDiscovered(machine) {
		return task, nil
	}
	st, err := inventory.GetJSON[inventory.MachineStatus](ctx, b.a.store, b.a.store.Keys().MachineStatus(machine))
	switch {
	case errors.Is(err, inventory.ErrNotFound):
		return task, nil
	case err != nil:
		return "", err
	case st.FastTrackFrom != "" && st.FastTrackFrom == task && st.BootTaskID != "":
		return st.BootTaskID, nil
	}
	return task, nil
}
