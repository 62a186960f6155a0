package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/reconciler/api"
	"github.com/kilnhq/kiln/spec"
)

// reader is where get, describe, events and retry read Kiln's state and
// ask for a retry: etcd directly (an administrator's credentials), or the
// region API with a token (--server, $KILN_SERVER, $KILN_TOKEN).
type reader interface {
	Snapshot(ctx context.Context, kinds ...string) (*inventory.Snapshot, error)
	MachineStatusesOf(ctx context.Context, names []string) (map[string]inventory.MachineStatus, error)
	ImageStatuses(ctx context.Context) (map[string][]inventory.ImageStatus, error)
	MachineReportOf(ctx context.Context, rack, machine string) (*inventory.MachineReport, error)
	Events(ctx context.Context, machine string) ([]inventory.Event, int64, error)
	Sources(ctx context.Context) ([]inventory.SourceStatus, int64, error)
	Status(ctx context.Context, machine string) (inventory.MachineStatus, error)
	Timeline(ctx context.Context, rack, machine string) (inventory.Timeline, error)
	Task(ctx context.Context, rack, machine string) (inventory.PowerTask, error)
	Retry(ctx context.Context, machine string) (from string, err error)
	Discovered(ctx context.Context) ([]inventory.Discovered, int64, error)
	Leases(ctx context.Context) ([]dhcp.Lease, int64, error)
	DiscoveredMachines(ctx context.Context) ([]inventory.DiscoveredMachine, error)
}

// etcdReader reads etcd through the store.
type etcdReader struct{ *inventory.Store }

func (r etcdReader) Sources(ctx context.Context) ([]inventory.SourceStatus, int64, error) {
	list, err := inventory.ListJSON[inventory.SourceStatus](ctx, r.Store, r.Keys().Source(""))
	if err != nil {
		return nil, 0, err
	}
	_, rev, err := r.Current(ctx)
	if err != nil && !errors.Is(err, inventory.ErrNotFound) {
		return nil, 0, err
	}
	return list, rev, nil
}

func (r etcdReader) Status(ctx context.Context, machine string) (inventory.MachineStatus, error) {
	return inventory.GetJSON[inventory.MachineStatus](ctx, r.Store, r.Keys().MachineStatus(machine))
}

func (r etcdReader) Timeline(ctx context.Context, rack, machine string) (inventory.Timeline, error) {
	return inventory.GetJSON[inventory.Timeline](ctx, r.Store, r.Keys().Timeline(rack, machine))
}

func (r etcdReader) Task(ctx context.Context, rack, machine string) (inventory.PowerTask, error) {
	return inventory.GetJSON[inventory.PowerTask](ctx, r.Store, r.Keys().Task(rack, machine))
}

func (r etcdReader) Retry(ctx context.Context, machine string) (string, error) {
	return reconciler.Retry(ctx, r.Store, machine)
}

func (r etcdReader) Discovered(ctx context.Context) ([]inventory.Discovered, int64, error) {
	var out []inventory.Discovered
	rev, err := r.RangeAt(ctx, r.Keys().Discovered("", ""), 0, func(k string, v []byte) error {
		var d inventory.Discovered
		if err := json.Unmarshal(v, &d); err != nil {
			return fmt.Errorf("decode %s: %w", k, err)
		}
		out = append(out, d)
		return nil
	})
	return out, rev, err
}

func (r etcdReader) Leases(ctx context.Context) ([]dhcp.Lease, int64, error) {
	var out []dhcp.Lease
	rev, err := r.RangeAt(ctx, r.Keys().Lease("", "", ""), 0, func(k string, v []byte) error {
		var l dhcp.Lease
		if err := json.Unmarshal(v, &l); err != nil {
			return fmt.Errorf("decode %s: %w", k, err)
		}
		out = append(out, l)
		return nil
	})
	return out, rev, err
}

// apiReader reads the region API.
type apiReader struct {
	base, token string
	http        *http.Client
	// statuses are those of the last machine list (Snapshot with
	// machines), for MachineStatusesOf.
	statuses map[string]inventory.MachineStatus
	images   map[string][]inventory.ImageStatus
}

// errAPI is an error answer of the API.
type errAPI struct {
	code int
	msg  string
}

func (e errAPI) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.msg, e.code) }

func newAPIReader(server, token, caFile string) (*apiReader, error) {
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--server %q: want http(s)://host:port", server)
	}
	if token == "" {
		return nil, errors.New("no token: set KILN_TOKEN (kiln token create makes one)")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--server-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--server-ca %s holds no PEM certificate", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &apiReader{base: strings.TrimSuffix(server, "/"), token: token, http: &http.Client{Transport: tr}}, nil
}

// do sends a request and decodes the JSON answer into out (nil: drop it).
func (a *apiReader) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := a.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, 256<<20)
	if resp.StatusCode >= 300 {
		var e api.Error
		b, _ := io.ReadAll(io.LimitReader(body, 64<<10))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		err := errAPI{code: resp.StatusCode, msg: e.Error}
		if resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%w: %w", err, inventory.ErrNotFound)
		}
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode: %w", method, path, err)
	}
	return nil
}

// list reads every page of a list.
func list[T any](ctx context.Context, a *apiReader, path string) (api.List[T], error) {
	var all api.List[T]
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	next := ""
	for {
		var page api.List[T]
		if err := a.do(ctx, "GET", path+sep+"continue="+url.QueryEscape(next), &page); err != nil {
			return all, err
		}
		all.Items = append(all.Items, page.Items...)
		all.Revision, all.Applied = page.Revision, page.Applied
		if next = page.Continue; next == "" {
			return all, nil
		}
	}
}

func (a *apiReader) Snapshot(ctx context.Context, kinds ...string) (*inventory.Snapshot, error) {
	snap := &inventory.Snapshot{Inventory: spec.NewInventory(), Unmanaged: map[string]inventory.Unmanaged{}}
	if len(kinds) == 0 {
		kinds = spec.Kinds
	}
	set := func(l api.List[json.RawMessage]) {
		snap.Revision = max(snap.Revision, l.Revision)
		if l.Applied != nil {
			snap.Pointer = *l.Applied
		}
	}
	machines := false
	for _, kind := range kinds {
		switch kind {
		case spec.KindMachine, inventory.KindUnmanaged:
			if machines {
				continue
			}
			machines = true
			l, err := list[api.MachineDetail](ctx, a, "/api/v1/machines?view=full")
			if err != nil {
				return nil, err
			}
			a.statuses = map[string]inventory.MachineStatus{}
			for _, d := range l.Items {
				if d.Machine != nil {
					snap.Inventory.Machines[d.Name] = d.Machine
				}
				if d.Unmanaged != nil {
					snap.Unmanaged[d.Name] = *d.Unmanaged
				}
				if d.Status != nil {
					a.statuses[d.Name] = *d.Status
				}
			}
			snap.Revision = max(snap.Revision, l.Revision)
			if l.Applied != nil {
				snap.Pointer = *l.Applied
			}
		default:
			l, err := list[json.RawMessage](ctx, a, "/api/v1/"+strings.ToLower(spec.Plural(kind)))
			if err != nil {
				return nil, err
			}
			set(l)
			for _, raw := range l.Items {
				if err := a.decodeInto(snap.Inventory, kind, raw); err != nil {
					return nil, err
				}
			}
		}
	}
	if snap.Pointer.Generation == "" {
		return nil, fmt.Errorf("desired state: nothing applied yet: %w", inventory.ErrNotFound)
	}
	return snap, nil
}

func (a *apiReader) decodeInto(inv *spec.Inventory, kind string, raw json.RawMessage) error {
	var err error
	switch kind {
	case spec.KindRack:
		var o spec.Rack
		if err = json.Unmarshal(raw, &o); err == nil {
			inv.Racks[o.Metadata.Name] = &o
		}
	case spec.KindSubnet:
		var o spec.Subnet
		if err = json.Unmarshal(raw, &o); err == nil {
			inv.Subnets[o.Metadata.Name] = &o
		}
	case spec.KindImage:
		var o struct {
			spec.Image
			Racks []inventory.ImageStatus `json:"racks"`
		}
		if err = json.Unmarshal(raw, &o); err == nil {
			im := o.Image
			inv.Images[im.Metadata.Name] = &im
			if a.images == nil {
				a.images = map[string][]inventory.ImageStatus{}
			}
			if len(o.Racks) > 0 {
				a.images[im.Metadata.Name] = o.Racks
			}
		}
	case spec.KindProfile:
		var o spec.Profile
		if err = json.Unmarshal(raw, &o); err == nil {
			inv.Profiles[o.Metadata.Name] = &o
		}
	}
	if err != nil {
		return fmt.Errorf("decode a %s: %w", kind, err)
	}
	return nil
}

func (a *apiReader) MachineStatusesOf(ctx context.Context, names []string) (map[string]inventory.MachineStatus, error) {
	if a.statuses == nil {
		if _, err := a.Snapshot(ctx, spec.KindMachine); err != nil {
			return nil, err
		}
	}
	out := map[string]inventory.MachineStatus{}
	for _, n := range names {
		if st, ok := a.statuses[n]; ok {
			out[n] = st
		}
	}
	return out, nil
}

func (a *apiReader) ImageStatuses(ctx context.Context) (map[string][]inventory.ImageStatus, error) {
	if a.images == nil {
		if _, err := a.Snapshot(ctx, spec.KindImage); err != nil {
			return nil, err
		}
	}
	return a.images, nil
}

func (a *apiReader) MachineReportOf(ctx context.Context, _, machine string) (*inventory.MachineReport, error) {
	var r *inventory.MachineReport
	err := a.do(ctx, "GET", "/api/v1/machines/"+url.PathEscape(machine)+"/report", &r)
	return r, err
}

func (a *apiReader) Events(ctx context.Context, machine string) ([]inventory.Event, int64, error) {
	l, err := list[inventory.Event](ctx, a, "/api/v1/events?machine="+url.QueryEscape(machine))
	return l.Items, l.Revision, err
}

func (a *apiReader) Sources(ctx context.Context) ([]inventory.SourceStatus, int64, error) {
	l, err := list[inventory.SourceStatus](ctx, a, "/api/v1/sources")
	return l.Items, l.Revision, err
}

func (a *apiReader) Status(ctx context.Context, machine string) (inventory.MachineStatus, error) {
	var d api.MachineDetail
	if err := a.do(ctx, "GET", "/api/v1/machines/"+url.PathEscape(machine), &d); err != nil {
		return inventory.MachineStatus{}, err
	}
	if d.Status == nil {
		return inventory.MachineStatus{}, fmt.Errorf("machine %s has no status: %w", machine, inventory.ErrNotFound)
	}
	return *d.Status, nil
}

// record reads one of a machine's rack records; none is ErrNotFound.
func record[T any](ctx context.Context, a *apiReader, machine, what string) (T, error) {
	var v *T
	var zero T
	if err := a.do(ctx, "GET", "/api/v1/machines/"+url.PathEscape(machine)+"/"+what, &v); err != nil {
		return zero, err
	}
	if v == nil {
		return zero, fmt.Errorf("no %s of %s: %w", what, machine, inventory.ErrNotFound)
	}
	return *v, nil
}

func (a *apiReader) Timeline(ctx context.Context, _, machine string) (inventory.Timeline, error) {
	return record[inventory.Timeline](ctx, a, machine, "timeline")
}

func (a *apiReader) Task(ctx context.Context, _, machine string) (inventory.PowerTask, error) {
	return record[inventory.PowerTask](ctx, a, machine, "task")
}

func (a *apiReader) Retry(ctx context.Context, machine string) (string, error) {
	var out struct {
		From string `json:"from"`
	}
	err := a.do(ctx, "POST", "/api/v1/machines/"+url.PathEscape(machine)+"/retry", &out)
	var e errAPI
	if errors.As(err, &e) && e.code == http.StatusConflict {
		// "<machine> is "<phase>": not failed: nothing to retry"
		phase := ""
		if _, rest, ok := strings.Cut(e.msg, ` is "`); ok {
			phase, _, _ = strings.Cut(rest, `"`)
		}
		return phase, fmt.Errorf("%s: %w", e.msg, reconciler.ErrNotFailed)
	}
	return out.From, err
}

func (a *apiReader) Discovered(ctx context.Context) ([]inventory.Discovered, int64, error) {
	l, err := list[inventory.Discovered](ctx, a, "/api/v1/discovered")
	return l.Items, l.Revision, err
}

func (a *apiReader) Leases(ctx context.Context) ([]dhcp.Lease, int64, error) {
	var l api.List[dhcp.Lease]
	err := a.do(ctx, "GET", "/api/v1/leases", &l)
	return l.Items, l.Revision, err
}

func (a *apiReader) DiscoveredMachines(ctx context.Context) ([]inventory.DiscoveredMachine, error) {
	l, err := list[inventory.DiscoveredMachine](ctx, a, "/api/v1/discovered?view=export")
	return l.Items, err
}
