package rack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/netboot/cache"
	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// bootBackend is what the HTTP boot server asks of the rack agent: the
// machines, subnets and images of the agent's warm copy of the desired
// state, machine status and tokens in etcd, and the boot timeline.
type bootBackend struct{ a *Agent }

func (b bootBackend) inv() *spec.Inventory {
	b.a.mu.Lock()
	defer b.a.mu.Unlock()
	return b.a.inv
}

func (b bootBackend) MachineByMAC(mac string) (*spec.Machine, bool) {
	b.a.mu.Lock()
	defer b.a.mu.Unlock()
	m, ok := b.a.byMAC[strings.ToLower(mac)]
	return m, ok
}

func (b bootBackend) Machine(name string) (*spec.Machine, bool) {
	m, ok := b.inv().Machines[name]
	return m, ok
}

func (b bootBackend) Subnet(name string) (*spec.Subnet, bool) {
	s, ok := b.inv().Subnets[name]
	return s, ok
}

func (b bootBackend) Image(name string) (*spec.Image, bool) {
	im, ok := b.inv().Images[name]
	return im, ok
}

// EphemeralImage picks the ephemeral image for an arch: the only one,
// or the first by name.
func (b bootBackend) EphemeralImage(arch string) (*spec.Image, bool) {
	inv := b.inv()
	for _, n := range spec.SortedNames(inv.Images) {
		im := inv.Images[n]
		if im.Spec.Purpose == spec.PurposeEphemeral && (arch == "" || im.Spec.Arch == arch) {
			return im, true
		}
	}
	return nil, false
}

func (b bootBackend) Purpose(ctx context.Context, machine string) (string, error) {
	st, err := inventory.GetJSON[inventory.MachineStatus](ctx, b.a.store, b.a.store.Keys().MachineStatus(machine))
	switch {
	case errors.Is(err, inventory.ErrNotFound):
		return agentapi.PurposeLocal, nil // nothing asked for: boot the disk
	case err != nil:
		return "", err
	case st.BootPurpose == "":
		return agentapi.PurposeLocal, nil
	}
	return st.BootPurpose, nil
}

func (b bootBackend) Tokens() boot.TokenStore { return b.a.store.Tokens(b.a.cfg.Rack) }

// LeaseIP is the address Kiln's DHCP gave mac (directly or through a
// relay), from the agent's leases: a reserved lease, or one that has not
// ended or expired.
func (b bootBackend) LeaseIP(mac string) (netip.Addr, bool) {
	mac = strings.ToLower(mac)
	now := time.Now()
	b.a.mu.Lock()
	defer b.a.mu.Unlock()
	var best dhcp.Lease
	for _, l := range b.a.leases {
		if l.MAC != mac || l.Ended() || !l.IP.IsValid() || (!l.Reserved && !l.Expires.After(now)) {
			continue
		}
		if !best.IP.IsValid() || l.Updated.After(best.Updated) {
			best = l
		}
	}
	return best.IP.Unmap(), best.IP.IsValid()
}

// DiscoveredLease is the etcd lease the keys of an unknown MAC carry.
func (b bootBackend) DiscoveredLease(ctx context.Context, mac string) (clientv3.LeaseID, error) {
	return b.a.DiscoveredLease(ctx, mac)
}

func (b bootBackend) Record(machine, event, detail string) {
	b.a.events.RecordTimeline(machine, event, detail)
}

// stage pre-fetches every image's files into the rack's cache, and
// records on each Image whether its files are ready or why not.
func (a *Agent) stage(ctx context.Context, inv *spec.Inventory) {
	if a.cache == nil {
		return
	}
	var arts []cache.Artifact
	for _, im := range inv.Images {
		for _, f := range []*spec.Artifact{im.Spec.Kernel, im.Spec.Initrd, im.Spec.Disk} {
			if f != nil {
				arts = append(arts, cache.Artifact{URL: f.URL, SHA256: f.SHA256})
			}
		}
	}
	done := a.cache.Stage(ctx, arts)
	go func() {
		select {
		case <-done:
		case <-ctx.Done():
			return
		}
		for _, name := range spec.SortedNames(inv.Images) {
			im := inv.Images[name]
			st := inventory.ImageStatus{Rack: a.cfg.Rack, State: "ready", UpdatedAt: time.Now().UTC()}
			for _, f := range []*spec.Artifact{im.Spec.Kernel, im.Spec.Initrd, im.Spec.Disk} {
				if f != nil {
					st.SHA256s = append(st.SHA256s, f.SHA256)
				}
			}
			for _, f := range []*spec.Artifact{im.Spec.Kernel, im.Spec.Initrd, im.Spec.Disk} {
				if f == nil {
					continue
				}
				if cs := a.cache.Status(f.SHA256); cs.State != cache.Ready {
					st.State = string(cs.State)
					st.Message = fmt.Sprintf("%s: %s", f.URL, cs.Err)
					break
				}
			}
			if err := a.store.PutImageStatus(ctx, name, st); err != nil && ctx.Err() == nil {
				a.log.Warn("could not record image status", "image", name, "err", err)
			}
		}
	}()
}

// MachineByPeer finds the machine holding an address, from the leases,
// for TFTP events (TFTP requests carry no MAC).
func (b bootBackend) MachineByPeer(ip string) (string, bool) {
	b.a.mu.Lock()
	defer b.a.mu.Unlock()
	for _, l := range b.a.leases {
		if l.IP.String() == ip && l.Machine != "" {
			return l.Machine, true
		}
	}
	return "", false
}
