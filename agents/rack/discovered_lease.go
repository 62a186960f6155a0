package rack

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// discoveredTTL is how long the keys of an unknown MAC live.
const discoveredTTL = 24 * time.Hour

// DiscoveredLease grants the etcd lease an unknown MAC's keys carry.
// Temporary: one 24 h lease per call; the discovery part replaces it
// with one lease per MAC, refreshed, and a cap (boot.ErrDiscoveryFull).
func (a *Agent) DiscoveredLease(ctx context.Context, mac string) (clientv3.LeaseID, error) {
	resp, err := a.store.Client().Grant(ctx, int64(discoveredTTL/time.Second))
	if err != nil {
		return clientv3.NoLease, fmt.Errorf("lease for discovered MAC %s: %w", mac, err)
	}
	return resp.ID, nil
}
