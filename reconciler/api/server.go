// Package api is the region API every kiln server serves (docs/api.md):
// JSON over HTTP under /api/v1, read from a watched cache, with tokens
// and roles, a Server-Sent Events watch that resumes from an etcd
// revision, and the actions that are not desired state.
package api

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/spec"
)

// Config is what the API needs.
type Config struct {
	Store *inventory.Store
	// Sync is the source's poll-now, nil for a source that needs no
	// trigger (a watched directory); the API asks for it through etcd
	// (Store.RequestSync) and the region leader calls it.
	Sync func()
	Log  *slog.Logger
	Now  func() time.Time // default time.Now
	// WatchBuffer is how many changes the cache keeps for watchers to
	// resume from (default 65536).
	WatchBuffer int
	// EventTTL is how long an action's event lives (default 7 days).
	EventTTL time.Duration
}

// Server is the region API.
type Server struct {
	cfg    Config
	cache  *cache
	routes []route
}

// route is one API route: what it needs and what serves it.
type route struct {
	Method, Path string
	Role         string // the least role allowed; "" any valid token
	handle       func(w http.ResponseWriter, r *http.Request, who inventory.APIToken)
}

// New returns the API; Run keeps its cache current.
func New(cfg Config) *Server {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.WatchBuffer = cmp.Or(cfg.WatchBuffer, 1<<16)
	cfg.EventTTL = cmp.Or(cfg.EventTTL, 7*24*time.Hour)
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, cache: newCache(cfg.Store, cfg.WatchBuffer, cfg.Log)}
	v, o := inventory.RoleViewer, inventory.RoleOperator
	s.routes = []route{
		{"GET", "/api/v1/whoami", "", s.whoami},
		{"GET", "/api/v1/machines", v, s.listMachines},
		{"GET", "/api/v1/machines/{name}", v, s.getMachine},
		{"GET", "/api/v1/machines/{name}/report", v, s.machineRecord("report")},
		{"GET", "/api/v1/machines/{name}/timeline", v, s.machineRecord("timeline")},
		{"GET", "/api/v1/machines/{name}/task", v, s.machineRecord("task")},
		{"POST", "/api/v1/machines/{name}/retry", o, s.retry},
		{"POST", "/api/v1/machines/{name}/power", o, s.power},
		{"GET", "/api/v1/racks", v, s.listKind(spec.KindRack)},
		{"GET", "/api/v1/subnets", v, s.listKind(spec.KindSubnet)},
		{"GET", "/api/v1/images", v, s.listKind(spec.KindImage)},
		{"GET", "/api/v1/profiles", v, s.listKind(spec.KindProfile)},
		{"GET", "/api/v1/sources", v, s.listSources},
		{"POST", "/api/v1/sources/default/sync", o, s.sync},
		{"GET", "/api/v1/events", v, s.events},
		{"GET", "/api/v1/discovered", v, s.discovered},
		{"GET", "/api/v1/leases", v, s.leases},
		{"GET", "/api/v1/watch", v, s.watch},
	}
	return s
}

// Run keeps the cache current until ctx ends.
func (s *Server) Run(ctx context.Context) error { return s.cache.run(ctx) }

// Loaded is closed once the cache holds a first copy.
func (s *Server) Loaded() <-chan struct{} { return s.cache.loaded }

// Routes lists the routes as "METHOD /path" (docs/api.yaml is tested
// against it).
func (s *Server) Routes() []string {
	var out []string
	for _, r := range s.routes {
		out = append(out, r.Method+" "+r.Path)
	}
	return out
}

// Handler serves the routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range s.routes {
		mux.HandleFunc(rt.Method+" "+rt.Path, func(w http.ResponseWriter, r *http.Request) {
			who, ok := s.authenticate(w, r, rt.Role)
			if !ok {
				return
			}
			select {
			case <-s.cache.loaded:
			case <-r.Context().Done():
				return
			}
			rt.handle(w, r, who)
		})
	}
	s.webRoutes(mux)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such API route: "+r.Method+" "+r.URL.Path+" (see docs/api.md)")
	})
	return mux
}

// authenticate checks the request's bearer token against the cached
// records: 401 without a valid token, 403 when its role is short of role.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, role string) (inventory.APIToken, bool) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if c, err := r.Cookie(cookieName); !ok && err == nil && r.Method == http.MethodGet {
		// The web view's cookie, for its reads (the watch: EventSource
		// sends no header); writes need the header, or the web view's forms.
		token, ok = c.Value, true
	}
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="kiln"`)
		writeError(w, http.StatusUnauthorized, "no token: send Authorization: Bearer <token> (kiln token create)")
		return inventory.APIToken{}, false
	}
	// The cache must hold the tokens before any is judged.
	select {
	case <-s.cache.loaded:
	case <-r.Context().Done():
		return inventory.APIToken{}, false
	}
	rec, found := s.cache.token(inventory.APITokenID(token))
	if !found || !rec.Matches(token) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="kiln", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, "unknown token")
		return inventory.APIToken{}, false
	}
	if err := rec.Valid(s.cfg.Now()); err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="kiln", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, err.Error())
		return inventory.APIToken{}, false
	}
	if role != "" && !inventory.RoleAllows(rec.Role, role) {
		writeError(w, http.StatusForbidden, fmt.Sprintf("token %s has role %s; this needs %s", rec.Name, rec.Role, role))
		return inventory.APIToken{}, false
	}
	return rec, true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(true)
	_ = enc.Encode(v)
}

// Error is the body of every error.
type Error struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, Error{Error: msg})
}

func (s *Server) whoami(w http.ResponseWriter, _ *http.Request, who inventory.APIToken) {
	writeJSON(w, http.StatusOK, map[string]any{"name": who.Name, "role": who.Role, "expires": who.Expires})
}

// maxPage bounds ?limit=.
const maxPage = 5000

// page reads ?limit= (default and at most maxPage) and ?continue=.
func page(r *http.Request) (limit int, after string, err error) {
	limit = maxPage
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPage {
			return 0, "", fmt.Errorf("limit=%q: want 1 to %d", v, maxPage)
		}
		limit = n
	}
	return limit, r.URL.Query().Get("continue"), nil
}

// listMachines serves the machines' summaries by name, filtered by
// ?phase=, ?rack= and ?label=key=value (repeatable), a page at a time.
func (s *Server) listMachines(w http.ResponseWriter, r *http.Request, _ inventory.APIToken) {
	limit, after, err := page(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	q := r.URL.Query()
	phase, rack := q.Get("phase"), q.Get("rack")
	labels := map[string]string{}
	for _, l := range q["label"] {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("label=%q: want key=value", l))
			return
		}
		labels[k] = v
	}
	full := q.Get("view") == "full"
	c := s.cache
	c.mu.RLock()
	names := c.machineNames()
	out := List[MachineSummary]{Items: []MachineSummary{}, Revision: c.rev}
	var details []MachineDetail
	i, _ := slices.BinarySearch(names, after)
	if after != "" && i < len(names) && names[i] == after {
		i++
	}
	for ; i < len(names); i++ {
		m, ok := c.summary(names[i])
		if !ok || (phase != "" && m.Phase != phase) || (rack != "" && m.Rack != rack) || !hasLabels(m.Labels, labels) {
			continue
		}
		if len(out.Items) == limit {
			out.Continue = out.Items[limit-1].Name
			break
		}
		out.Items = append(out.Items, m)
		if full {
			d, _ := c.detail(m.Name)
			details = append(details, d)
		}
	}
	p := c.snap.Pointer
	c.mu.RUnlock()
	if full {
		writeJSON(w, http.StatusOK, List[MachineDetail]{Items: orEmpty(details), Revision: out.Revision, Continue: out.Continue, Applied: &p})
		return
	}
	out.Applied = &p
	writeJSON(w, http.StatusOK, out)
}

// machineNames are the machines of the inventory and those with a
// status, sorted; c.mu is held.
func (c *cache) machineNames() []string {
	names := make([]string, 0, len(c.snap.Inventory.Machines)+len(c.statuses))
	for n := range c.snap.Inventory.Machines {
		names = append(names, n)
	}
	for n := range c.statuses {
		if c.snap.Inventory.Machines[n] == nil {
			names = append(names, n)
		}
	}
	for n := range c.snap.Unmanaged {
		if c.snap.Inventory.Machines[n] == nil {
			if _, ok := c.statuses[n]; !ok {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	return names
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func (s *Server) getMachine(w http.ResponseWriter, r *http.Request, _ inventory.APIToken) {
	if d, ok := s.machine(w, r); ok {
		writeJSON(w, http.StatusOK, d)
	}
}

// machine reads the path's machine from the cache, or answers 404.
func (s *Server) machine(w http.ResponseWriter, r *http.Request) (MachineDetail, bool) {
	name := r.PathValue("name")
	s.cache.mu.RLock()
	d, ok := s.cache.detail(name)
	s.cache.mu.RUnlock()
	if !ok {
		writeError(w, http.StatusNotFound, "no machine "+name)
	}
	return d, ok
}

// machineRecord serves what the machine's rack wrote of it: the agent's
// report, the boot timeline or the power task; null when there is none.
func (s *Server) machineRecord(what string) func(http.ResponseWriter, *http.Request, inventory.APIToken) {
	return func(w http.ResponseWriter, r *http.Request, _ inventory.APIToken) {
		d, ok := s.machine(w, r)
		if !ok {
			return
		}
		name, rack := d.Name, ""
		if d.Status != nil {
			rack = d.Status.Rack
		}
		if d.Machine != nil && d.Machine.Spec.Rack != "" && what != "task" {
			rack = d.Machine.Spec.Rack
		}
		if rack == "" {
			writeJSON(w, http.StatusOK, nil)
			return
		}
		st, k, ctx := s.cfg.Store, s.cfg.Store.Keys(), r.Context()
		var v any
		var err error
		switch what {
		case "report":
			v, err = st.MachineReportOf(ctx, rack, name)
		case "timeline":
			v, err = inventory.GetJSON[inventory.Timeline](ctx, st, k.Timeline(rack, name))
		case "task":
			v, err = inventory.GetJSON[inventory.PowerTask](ctx, st, k.Task(rack, name))
		}
		switch {
		case errors.Is(err, inventory.ErrNotFound):
			writeJSON(w, http.StatusOK, nil)
		case err != nil:
			writeError(w, http.StatusServiceUnavailable, what+": "+err.Error())
		default:
			writeJSON(w, http.StatusOK, v)
		}
	}
}

// listKind serves the objects of one kind, by name.
func (s *Server) listKind(kind string) func(http.ResponseWriter, *http.Request, inventory.APIToken) {
	return func(w http.ResponseWriter, r *http.Request, _ inventory.APIToken) {
		c := s.cache
		c.mu.RLock()
		inv, rev, p := c.snap.Inventory, c.rev, c.snap.Pointer
		c.mu.RUnlock()
		var items []any
		switch kind {
		case spec.KindRack:
			items = sorted(inv.Racks)
		case spec.KindSubnet:
			items = sorted(inv.Subnets)
		case spec.KindImage:
			images := s.cache.imageStates()
			for _, im := range sorted(inv.Images) {
				img := im.(*spec.Image)
				items = append(items, struct {
					*spec.Image
					Racks []inventory.ImageStatus `json:"racks"`
				}{img, images[img.Metadata.Name]})
			}
		case spec.KindProfile:
			items = sorted(inv.Profiles)
		}
		writeJSON(w, http.StatusOK, List[any]{Items: orEmpty(items), Revision: rev, Applied: &p})
	}
}

// orEmpty makes a nil list an empty one: JSON [] rather than null.
func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func sorted[T any](m map[string]T) []any {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	out := make([]any, 0, len(names))
	for _, n := range names {
		out = append(out, m[n])
	}
	return out
}

func (s *Server) listSources(w http.ResponseWriter, _ *http.Request, _ inventory.APIToken) {
	c := s.cache
	c.mu.RLock()
	out := List[inventory.SourceStatus]{Items: []inventory.SourceStatus{}, Revision: c.rev}
	for _, src := range sorted(c.sources) {
		out.Items = append(out.Items, src.(inventory.SourceStatus))
	}
	c.mu.RUnlock()
	writeJSON(w, http.StatusOK, out)
}

// events serves a machine's events (?machine=, required), those after
// ?since= (RFC 3339) only when given.
func (s *Server) events(w http.ResponseWriter, r *http.Request, _ inventory.APIToken) {
	machine := r.URL.Query().Get("machine") // "": every machine's
	if machine != "" && !spec.ValidName(machine) && !spec.IsDiscovered(machine) {
		writeError(w, http.StatusBadRequest, "machine="+strconv.Quote(machine)+": want a machine's name")
		return
	}
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			writeError(w, http.StatusBadRequest, "since="+strconv.Quote(v)+": want an RFC 3339 time")
			return
		}
		since = t
	}
	evs, rev, err := s.cfg.Store.Events(r.Context(), machine)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "events: "+err.Error())
		return
	}
	out := List[inventory.Event]{Items: []inventory.Event{}, Revision: rev}
	for _, e := range evs {
		if e.Time.After(since) {
			out.Items = append(out.Items, e)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) discovered(w http.ResponseWriter, r *http.Request, _ inventory.APIToken) {
	if r.URL.Query().Get("view") == "export" {
		// What kiln export discovered prints: the MACs the inventory
		// lacks, with the facts their agents reported.
		ms, err := s.cfg.Store.DiscoveredMachines(r.Context())
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, "discovered machines: "+err.Error())
			return
		}
		writeJSON(w, http.StatusOK, List[inventory.DiscoveredMachine]{Items: orEmpty(ms)})
		return
	}
	var ds []inventory.Discovered
	for _, rec := range s.cache.rackRecords(func(_ string, r rackRecord) bool { return r.discovered != nil }) {
		ds = append(ds, *rec.discovered)
	}
	writeJSON(w, http.StatusOK, List[inventory.Discovered]{Items: orEmpty(ds), Revision: s.cache.revision()})
}

// leases serves the DHCP leases the racks hold, by rack, subnet and
// address (?rack= keeps one rack's).
func (s *Server) leases(w http.ResponseWriter, r *http.Request, _ inventory.APIToken) {
	rack := r.URL.Query().Get("rack")
	if rack != "" && !spec.ValidName(rack) {
		writeError(w, http.StatusBadRequest, "rack="+strconv.Quote(rack)+": want a rack's name")
		return
	}
	out := List[dhcp.Lease]{Items: []dhcp.Lease{}, Revision: s.cache.revision()}
	prefix := s.cfg.Store.Keys().Lease(rack, "", "")
	for _, rec := range s.cache.rackRecords(func(key string, r rackRecord) bool { return r.lease != nil && strings.HasPrefix(key, prefix) }) {
		out.Items = append(out.Items, *rec.lease)
	}
	writeJSON(w, http.StatusOK, out)
}

// retry asks the region leader to try a failed machine's phase again, as
// kiln retry does, and records who asked.
func (s *Server) retry(w http.ResponseWriter, r *http.Request, who inventory.APIToken) {
	name := r.PathValue("name")
	from, err := reconciler.Retry(r.Context(), s.cfg.Store, name)
	switch {
	case errors.Is(err, inventory.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
		return
	case errors.Is(err, reconciler.ErrNotFailed):
		writeError(w, http.StatusConflict, err.Error()+": nothing to retry")
		return
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	s.record(r.Context(), name, "RetryRequested", "retry of "+from+" asked through the API by token "+who.Name+" ("+who.Role+")", from)
	writeJSON(w, http.StatusAccepted, map[string]string{"machine": name, "from": from})
}

// power asks the region leader for a power action (?action=on|off|cycle,
// ?force=true to interrupt a working phase), as a decision of its own.
func (s *Server) power(w http.ResponseWriter, r *http.Request, who inventory.APIToken) {
	name, action := r.PathValue("name"), r.URL.Query().Get("action")
	force := r.URL.Query().Get("force") == "true"
	phase, err := reconciler.RequestPower(r.Context(), s.cfg.Store, name, action, who.Name, force, s.cfg.Now())
	switch {
	case err != nil && !errors.Is(err, inventory.ErrNotFound) && !errors.Is(err, reconciler.ErrBusy) && !slices.Contains(reconciler.PowerActions, action):
		writeError(w, http.StatusBadRequest, err.Error())
		return
	case errors.Is(err, inventory.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
		return
	case errors.Is(err, reconciler.ErrBusy):
		s.record(r.Context(), name, "PowerRefused", "power "+action+" asked through the API by token "+who.Name+" refused: the machine is "+phase, phase)
		writeError(w, http.StatusConflict, err.Error())
		return
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	how := ""
	if force {
		how = " (forced)"
	}
	s.record(r.Context(), name, "PowerRequested", "power "+action+how+" asked through the API by token "+who.Name+" ("+who.Role+")", phase)
	writeJSON(w, http.StatusAccepted, map[string]string{"machine": name, "action": action, "phase": phase})
}

// record writes an action's event naming the token; a failure to is
// logged, the action stands.
func (s *Server) record(ctx context.Context, machine, reason, msg, phase string) {
	ev := inventory.Event{Time: s.cfg.Now().UTC(), Machine: machine, Type: "Normal", Reason: reason, Message: msg, From: phase, To: phase}
	if err := s.cfg.Store.PutEvent(ctx, ev, s.cfg.EventTTL); err != nil {
		s.cfg.Log.Warn("api: record event", "machine", machine, "reason", reason, "err", err)
	}
}

// sync asks the region leader's source to poll now, through etcd, so any
// server (a standby too) takes it and the leader acts on it.
func (s *Server) sync(w http.ResponseWriter, r *http.Request, who inventory.APIToken) {
	if s.cfg.Sync == nil {
		writeError(w, http.StatusConflict, "the directory source reloads on every change; nothing to trigger")
		return
	}
	if err := s.cfg.Store.RequestSync(r.Context(), "default", who.Name, s.cfg.Now()); err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	s.cfg.Log.Info("api: source sync requested", "token", who.Name)
	writeJSON(w, http.StatusAccepted, map[string]string{"sync": "requested"})
}
