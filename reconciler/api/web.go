package api

import (
	"bytes"
	"cmp"
	"embed"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"maps"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/spec"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The web view (docs/api.md): server-rendered pages over the same cache
// and tokens as the API; a login form keeps the token in a cookie.

//go:embed web
var webFS embed.FS

var pages = template.Must(template.ParseFS(webFS, "web/*.html"))

// cookieName holds the token for the web view (HttpOnly, SameSite=Strict).
const cookieName = "kiln_token"

// page is what every template gets.
type pageData struct {
	Title string
	Who   inventory.APIToken
}

func (s *Server) webRoutes(mux *http.ServeMux) {
	static, _ := fs.Sub(webFS, "web")
	mux.Handle("GET /static/", http.StripPrefix("/static/", staticFiles(static)))
	mux.HandleFunc("GET /login", func(w http.ResponseWriter, r *http.Request) {
		s.render(w, "login.html", loginPage{pageData: pageData{Title: "Log in"}})
	})
	mux.HandleFunc("POST /login", s.login)
	mux.HandleFunc("POST /logout", func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
		http.Redirect(w, r, "/login", http.StatusSeeOther)
	})
	mux.HandleFunc("GET /{$}", s.page(inventory.RoleViewer, s.fleetPage))
	mux.HandleFunc("GET /machines/{name}", s.page(inventory.RoleViewer, s.machinePage))
	mux.HandleFunc("POST /machines/{name}/retry", s.page(inventory.RoleOperator, s.retryForm))
	mux.HandleFunc("GET /source", s.page(inventory.RoleViewer, s.sourcePage))
	mux.HandleFunc("GET /racks", s.page(inventory.RoleViewer, s.racksPage))
}

// staticFiles serves the embedded CSS and JS, never a listing.
func staticFiles(fsys fs.FS) http.Handler {
	h := http.FileServerFS(fsys)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, ".css") && !strings.HasSuffix(r.URL.Path, ".js") {
			http.NotFound(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// page wraps a page handler: the cookie's token must be valid (else the
// login form) and have role (else 403); a form post must come from this
// site (Origin), on top of the cookie's SameSite=Strict.
func (s *Server) page(role string, h func(http.ResponseWriter, *http.Request, inventory.APIToken)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		setPageHeaders(w)
		c, err := r.Cookie(cookieName)
		if err != nil {
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		}
		who, err := s.check(r, c.Value)
		if err != nil {
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		}
		if !inventory.RoleAllows(who.Role, role) {
			http.Error(w, "token "+who.Name+" has role "+who.Role+"; this needs "+role, http.StatusForbidden)
			return
		}
		if r.Method == http.MethodPost && !sameOrigin(r) {
			http.Error(w, "cross-site form refused", http.StatusForbidden)
			return
		}
		<-s.cache.loaded
		h(w, r, who)
	}
}

// setPageHeaders: no framing, no inline script, no sniffing, no cache.
func setPageHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
}

// sameOrigin says whether a form post comes from this site: the
// browser's Sec-Fetch-Site when it sends one, else its Origin; a client
// that sends neither (not a browser) is not a cross-site form.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" {
		return site == "same-origin"
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

type loginPage struct {
	pageData
	Error string
}

// login takes a token from the form and keeps it in a cookie when valid.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	setPageHeaders(w)
	if !sameOrigin(r) {
		http.Error(w, "cross-site form refused", http.StatusForbidden)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	tok := strings.TrimSpace(r.PostFormValue("token"))
	if _, err := s.check(r, tok); err != nil {
		w.WriteHeader(http.StatusUnauthorized)
		s.render(w, "login.html", loginPage{pageData: pageData{Title: "Log in"}, Error: err.Error()})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: tok, Path: "/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: int((12 * time.Hour).Seconds())})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// check validates a token against the cached records.
func (s *Server) check(r *http.Request, token string) (inventory.APIToken, error) {
	select {
	case <-s.cache.loaded:
	case <-r.Context().Done():
		return inventory.APIToken{}, r.Context().Err()
	}
	rec, ok := s.cache.token(inventory.APITokenID(token))
	if !ok || !rec.Matches(token) {
		return inventory.APIToken{}, errors.New("unknown token")
	}
	return rec, rec.Valid(s.cfg.Now())
}

func (s *Server) render(w http.ResponseWriter, name string, data any) {
	var b bytes.Buffer
	if err := pages.ExecuteTemplate(&b, name, data); err != nil {
		s.cfg.Log.Error("web: render", "page", name, "err", err)
		http.Error(w, "cannot render the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Write(b.Bytes())
}

type fleetPage struct {
	pageData
	Phases  []string
	Racks   []string
	Initial []MachineSummary // JSON in the page (html/template escapes it for a script)
}

func (s *Server) fleetPage(w http.ResponseWriter, _ *http.Request, who inventory.APIToken) {
	c := s.cache
	c.mu.RLock()
	var list []MachineSummary
	racks := map[string]bool{}
	for n := range c.snap.Inventory.Racks {
		racks[n] = true
	}
	for _, n := range c.machineNames() {
		if m, ok := c.summary(n); ok {
			list = append(list, m)
			racks[m.Rack] = true
		}
	}
	c.mu.RUnlock()
	s.render(w, "fleet.html", fleetPage{pageData: pageData{Title: "Fleet", Who: who},
		Phases: reconciler.Phases, Racks: sortedKeys(racks), Initial: orEmpty(list)})
}

// poolUse says, per subnet with a dynamic range, how much of it live
// leases hold: "net1 12/100 (12%)".
func poolUse(subnets []*spec.Subnet, inUse map[string]int) string {
	slices.SortFunc(subnets, func(a, b *spec.Subnet) int { return strings.Compare(a.Metadata.Name, b.Metadata.Name) })
	var parts []string
	for _, sn := range subnets {
		r := sn.Spec.DynamicRange
		if r == nil {
			continue
		}
		a, err1 := netip.ParseAddr(r.Start)
		b, err2 := netip.ParseAddr(r.End)
		if err1 != nil || err2 != nil || !a.Is4() || !b.Is4() {
			continue
		}
		x, y := a.As4(), b.As4()
		size := int(binary.BigEndian.Uint32(y[:])) - int(binary.BigEndian.Uint32(x[:])) + 1
		if size <= 0 {
			continue
		}
		used := inUse[sn.Metadata.Name]
		parts = append(parts, fmt.Sprintf("%s %d/%d (%d%%)", sn.Metadata.Name, used, size, used*100/size))
	}
	return strings.Join(parts, ", ")
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

type machinePage struct {
	pageData
	Name, NameJSON                       string
	Phase, Message, Reason               string
	Origin, Revision, Rack, State, Image string
	DeployedImage, Power, Task, Facts    string
	CanRetry                             bool
	Conditions                           []inventory.Condition
	Timeline                             []inventory.TimelineEvent
	Events                               []inventory.Event
}

func (s *Server) machinePage(w http.ResponseWriter, r *http.Request, who inventory.APIToken) {
	name := r.PathValue("name")
	c := s.cache
	c.mu.RLock()
	m := c.snap.Inventory.Machines[name]
	st, hasStatus := c.statuses[name]
	c.mu.RUnlock()
	if m == nil && !hasStatus {
		http.Error(w, "no machine "+name, http.StatusNotFound)
		return
	}
	p := machinePage{pageData: pageData{Title: name, Who: who}, Name: name,
		Phase: st.Phase, Message: st.Message, Reason: st.Reason, Revision: st.SourceRevision,
		DeployedImage: st.DeployedImage, Power: st.Power, Conditions: st.Conditions}
	if m != nil {
		p.Origin, p.Rack, p.State, p.Image = m.Origin.String(), m.Spec.Rack, m.Spec.State, m.Spec.Image
	}
	p.CanRetry = strings.HasPrefix(st.Phase, reconciler.FailedPrefix) && inventory.RoleAllows(who.Role, inventory.RoleOperator)
	if len(st.Facts) > 0 {
		var v bytes.Buffer
		if json.Indent(&v, st.Facts, "", "  ") == nil {
			p.Facts = v.String()
		}
	}
	rack := cmp.Or(p.Rack, st.Rack)
	ctx := r.Context()
	if evs, _, err := s.cfg.Store.Events(ctx, name); err == nil {
		p.Events = evs
	}
	if rack != "" {
		if tl, err := inventory.GetJSON[inventory.Timeline](ctx, s.cfg.Store, s.cfg.Store.Keys().Timeline(rack, name)); err == nil {
			p.Timeline = tl.Events
			slices.SortStableFunc(p.Timeline, func(a, b inventory.TimelineEvent) int { return a.Time.Compare(b.Time) })
		}
		if t, err := inventory.GetJSON[inventory.PowerTask](ctx, s.cfg.Store, s.cfg.Store.Keys().Task(rack, name)); err == nil {
			p.Task = t.Action + " " + t.State
			if t.Error != "" {
				p.Task += ": " + t.Error
			}
		}
	}
	s.render(w, "machine.html", p)
}

func (s *Server) retryForm(w http.ResponseWriter, r *http.Request, who inventory.APIToken) {
	name := r.PathValue("name")
	from, err := reconciler.Retry(r.Context(), s.cfg.Store, name)
	if err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	s.record(r.Context(), name, "RetryRequested", "retry of "+from+" asked in the web view by token "+who.Name+" ("+who.Role+")", from)
	http.Redirect(w, r, "/machines/"+url.PathEscape(name), http.StatusSeeOther)
}

type sourcePage struct {
	pageData
	Sources []inventory.SourceStatus
}

func (s *Server) sourcePage(w http.ResponseWriter, _ *http.Request, who inventory.APIToken) {
	c := s.cache
	c.mu.RLock()
	p := sourcePage{pageData: pageData{Title: "Source", Who: who}}
	for _, src := range sorted(c.sources) {
		p.Sources = append(p.Sources, src.(inventory.SourceStatus))
	}
	c.mu.RUnlock()
	s.render(w, "source.html", p)
}

type rackRow struct {
	Name, Leader, Images, Pools string
	Machines, Leases            int
}

type racksPage struct {
	pageData
	Racks []rackRow
}

func (s *Server) racksPage(w http.ResponseWriter, r *http.Request, who inventory.APIToken) {
	c := s.cache
	c.mu.RLock()
	rows := map[string]*rackRow{}
	for n := range c.snap.Inventory.Racks {
		rows[n] = &rackRow{Name: n, Leader: "none"}
	}
	subnets := map[string][]*spec.Subnet{}
	for _, sn := range c.snap.Inventory.Subnets {
		subnets[sn.Spec.Rack] = append(subnets[sn.Spec.Rack], sn)
	}
	for _, m := range c.snap.Inventory.Machines {
		if row := rows[m.Spec.Rack]; row != nil {
			row.Machines++
		}
	}
	c.mu.RUnlock()
	ctx := r.Context()
	st := s.cfg.Store
	images := s.cache.imageStates()
	counts := map[string]map[string]int{}
	for _, sts := range images {
		for _, is := range sts {
			if counts[is.Rack] == nil {
				counts[is.Rack] = map[string]int{}
			}
			counts[is.Rack][is.State]++
		}
	}
	for name, row := range rows {
		// The leader is the oldest campaign (etcd's concurrency election).
		if resp, err := st.Client().Get(ctx, st.Keys().RackElection(name), clientv3.WithFirstCreate()...); err == nil && len(resp.Kvs) > 0 {
			row.Leader = string(resp.Kvs[0].Value)
		}
		inUse := map[string]int{} // live dynamic leases by subnet
		prefix := st.Keys().Lease(name, "", "")
		for _, rec := range s.cache.rackRecords(func(key string, r rackRecord) bool { return r.lease != nil && strings.HasPrefix(key, prefix) }) {
			l := rec.lease
			row.Leases++
			if !l.Reserved && !l.Ended() && l.Expires.After(time.Now()) {
				inUse[l.Subnet]++
			}
		}
		row.Pools = poolUse(subnets[name], inUse)
		var parts []string
		for _, state := range slices.Sorted(maps.Keys(counts[name])) {
			parts = append(parts, state+" "+strconv.Itoa(counts[name][state]))
		}
		row.Images = strings.Join(parts, ", ")
	}
	p := racksPage{pageData: pageData{Title: "Racks", Who: who}}
	for _, n := range slices.Sorted(maps.Keys(rows)) {
		p.Racks = append(p.Racks, *rows[n])
	}
	s.render(w, "racks.html", p)
}
