package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/reconciler/api"
	"github.com/kilnhq/kiln/spec"
	"gopkg.in/yaml.v3"
)

// resource names accepted by get, with their kind.
var resources = map[string]string{
	"machines": spec.KindMachine, "machine": spec.KindMachine, "m": spec.KindMachine,
	"racks": spec.KindRack, "rack": spec.KindRack,
	"subnets": spec.KindSubnet, "subnet": spec.KindSubnet,
	"images": spec.KindImage, "image": spec.KindImage,
	"profiles": spec.KindProfile, "profile": spec.KindProfile,
	"source": "Source", "sources": "Source",
	"leases": "Lease", "lease": "Lease",
	"discovered": "Discovered",
	"rollouts":   "Rollout", "rollout": "Rollout",
}

func runGet(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("get", "machines|racks|subnets|images|profiles|source|leases|discovered|rollouts [NAME] [flags]", errOut)
	var cf clientFlags
	cf.register(fs)
	format := fs.String("o", "", "output: wide, yaml, json or name (default: a table)")
	watch := fs.Bool("watch", false, "after listing, print changes as they happen")
	fs.BoolVar(watch, "w", false, "short for --watch")
	pos, code, ok := parseArgs(fs, args, nArgs(1, 2))
	if !ok {
		return code
	}
	kind, ok := resources[strings.ToLower(pos[0])]
	if !ok {
		fmt.Fprintf(errOut, "kiln get: unknown resource %q: use machines, racks, subnets, images, profiles, source, leases, discovered or rollouts\n", pos[0])
		return exitUsage
	}
	name := ""
	if len(pos) == 2 {
		name = pos[1]
	}
	switch *format {
	case "", "wide", "yaml", "json", "name":
	default:
		fmt.Fprintf(errOut, "kiln get: -o %q: use wide, yaml, json or name\n", *format)
		return exitUsage
	}
	r, store, closeFn, ok := cf.open("get", errOut)
	if !ok {
		return exitFail
	}
	defer closeFn()

	g := &getter{r: r, store: store, kind: kind, name: name, format: *format}
	rctx, cancel := context.WithTimeout(ctx, cf.timeout)
	view, rev, err := g.read(rctx)
	cancel()
	if err != nil {
		fmt.Fprintln(errOut, "kiln get:", explain(cf, err))
		return exitFail
	}
	if name != "" && len(view.rows) == 0 {
		fmt.Fprintf(errOut, "kiln get: %s %q not found\n", strings.ToLower(kind), name)
		return exitFail
	}
	if err := g.print(out, view, true); err != nil {
		fmt.Fprintln(errOut, "kiln get:", err)
		return exitFail
	}
	if !*watch {
		return exitOK
	}
	if store == nil {
		return g.watchAPI(ctx, cf, r.(*apiReader), out, errOut, view.byName(), rev)
	}
	return g.watch(ctx, cf, out, errOut, view.byName(), rev)
}

// watchAPI is watch through the region API's watch: after changes (a
// burst taken as one, 100 ms), it reads again and prints what differs.
func (g *getter) watchAPI(ctx context.Context, cf clientFlags, a *apiReader, out, errOut io.Writer, printed map[string]string, rev int64) int {
	changed := make(chan struct{}, 1)
	failed := make(chan error, 1)
	go func() {
		failed <- a.followChanges(ctx, strconv.FormatInt(rev, 10), func() {
			fmt.Fprintln(errOut, "kiln get: the API no longer has the changes since the last read; reading again")
		}, func(c api.Change) {
			if c.Type == "event" {
				return
			}
			select {
			case changed <- struct{}{}:
			default:
			}
		})
	}()
	for {
		select {
		case err := <-failed:
			if ctx.Err() != nil {
				return exitOK
			}
			fmt.Fprintln(errOut, "kiln get: watch:", err)
			return exitFail
		case <-changed:
		}
		select { // let a burst settle
		case <-ctx.Done():
			return exitOK
		case <-time.After(100 * time.Millisecond):
		}
		a.statuses, a.images = nil, nil
		rctx, cancel := context.WithTimeout(ctx, cf.timeout)
		next, _, err := g.read(rctx)
		cancel()
		if err != nil {
			fmt.Fprintln(errOut, "kiln get:", err)
			continue
		}
		if d := changedRows(printed, next); len(d.rows) > 0 {
			g.print(out, d, false)
		}
		printed = next.byName()
	}
}

// watch prints, after each change from revision rev on, the rows that
// differ from what was printed last, until ctx ends.
func (g *getter) watch(ctx context.Context, cf clientFlags, out, errOut io.Writer, printed map[string]string, rev int64) int {
	for wr := range g.store.WatchChanges(ctx, rev) {
		if err := wr.Err(); err != nil {
			fmt.Fprintln(errOut, "kiln get: watch:", err)
			return exitFail
		}
		rctx, cancel := context.WithTimeout(ctx, cf.timeout)
		next, _, err := g.read(rctx)
		cancel()
		if err != nil {
			fmt.Fprintln(errOut, "kiln get:", explain(cf, err))
			continue
		}
		if changed := changedRows(printed, next); len(changed.rows) > 0 {
			g.print(out, changed, false)
		}
		printed = next.byName()
	}
	return exitOK
}

// changedRows is the table of rows of next that differ from the printed
// ones, and a <deleted> row for each printed one next lacks.
func changedRows(printed map[string]string, next *table) *table {
	changed := &table{header: next.header, items: map[string]any{}}
	now := next.byName()
	for _, r := range next.rows {
		if printed[r[0]] != strings.Join(r, "\x00") {
			changed.rows = append(changed.rows, r)
			changed.items[r[0]] = next.items[r[0]]
		}
	}
	for n := range printed {
		if _, ok := now[n]; !ok {
			gone := make([]string, len(next.header))
			for i := range gone {
				gone[i] = "-"
			}
			gone[0] = n
			if len(gone) > 1 {
				gone[1] = "<deleted>"
			}
			changed.rows = append(changed.rows, gone)
		}
	}
	return changed
}

func explain(cf clientFlags, err error) error {
	switch {
	case errors.Is(err, inventory.ErrNotFound):
		return fmt.Errorf("%w: has `kiln server` applied a source yet? (`kiln get source` says)", err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("etcd at %s did not answer within %s: is `kiln server` running? Point --etcd-endpoints at it", cf.endpoints, cf.timeout)
	}
	return err
}

// table is what get prints: a header, rows keyed by their first column,
// and the objects behind them for -o yaml|json.
type table struct {
	header []string
	rows   [][]string
	items  map[string]any
}

func (t *table) byName() map[string]string {
	m := map[string]string{}
	for _, r := range t.rows {
		m[r[0]] = strings.Join(r, "\x00")
	}
	return m
}

type getter struct {
	r      reader
	store  *inventory.Store // nil through the API
	kind   string
	name   string
	format string
	widths []int // of the table's columns as printed so far
}

// read returns the table and the etcd revision it reflects.
func (g *getter) read(ctx context.Context) (*table, int64, error) {
	switch g.kind {
	case "Source":
		return g.readSources(ctx)
	case "Lease", "Discovered":
		return g.readRackState(ctx)
	case "Rollout":
		return g.readRollouts(ctx)
	}
	kinds := []string{g.kind}
	if g.kind == spec.KindMachine {
		kinds = append(kinds, inventory.KindUnmanaged)
	}
	if g.kind == spec.KindRack || g.kind == spec.KindProfile {
		kinds = append(kinds, spec.KindMachine, spec.KindSubnet)
	}
	snap, err := g.r.Snapshot(ctx, kinds...)
	if err != nil {
		return nil, 0, err
	}
	var statuses map[string]inventory.MachineStatus
	if g.kind == spec.KindMachine {
		names := spec.SortedNames(snap.Inventory.Machines)
		for n := range snap.Unmanaged {
			names = append(names, n)
		}
		if statuses, err = g.r.MachineStatusesOf(ctx, names); err != nil {
			return nil, 0, err
		}
	}
	var images map[string][]inventory.ImageStatus
	if g.kind == spec.KindImage {
		if images, err = g.r.ImageStatuses(ctx); err != nil {
			return nil, 0, err
		}
	}
	t := buildTable(snap, g.kind, g.format == "wide", statuses, images)
	if g.kind == spec.KindMachine && (g.format == "yaml" || g.format == "json") {
		if err := attachReports(ctx, g.r, t, g.name); err != nil {
			return nil, 0, err
		}
	}
	if g.name != "" {
		keep := t.rows[:0]
		for _, r := range t.rows {
			if r[0] == g.name {
				keep = append(keep, r)
			}
		}
		t.rows = keep
	}
	return t, snap.Revision, nil
}

func (g *getter) readSources(ctx context.Context) (*table, int64, error) {
	list, rev, err := g.r.Sources(ctx)
	if err != nil {
		return nil, 0, err
	}
	t := &table{header: []string{"NAME", "TYPE", "STATE", "APPLIED", "OBSERVED", "ERRORS", "WARNINGS", "AGE", "MESSAGE"}, items: map[string]any{}}
	if g.format == "wide" {
		t.header = append(t.header, "LOCATION", "BRANCH", "GENERATION")
	}
	for _, s := range list {
		if g.name != "" && s.Name != g.name {
			continue
		}
		row := []string{s.Name, s.Type, s.State, short(s.AppliedRevision), short(s.ObservedRevision),
			fmt.Sprint(s.Errors), fmt.Sprint(s.Warnings), age(s.ObservedAt), s.Message}
		if g.format == "wide" {
			row = append(row, s.Location, dash(s.Branch), dash(s.Generation))
		}
		t.rows = append(t.rows, row)
		t.items[s.Name] = s
	}
	return t, rev, nil
}

// readRackState lists what rack agents wrote: leases or discovered MACs.
func (g *getter) readRackState(ctx context.Context) (*table, int64, error) {
	t := &table{items: map[string]any{}}
	var rev int64
	var err error
	if g.kind == "Lease" {
		t.header = []string{"IP", "SUBNET", "MAC", "MACHINE", "KIND", "EXPIRES", "UPDATED"}
		var ls []dhcp.Lease
		ls, rev, err = g.r.Leases(ctx)
		for _, l := range ls {
			kind, expires := "dynamic", until(l.Expires)
			if l.Reserved {
				kind, expires = "reserved", "never"
			}
			if g.name == "" || g.name == l.IP.String() || g.name == l.MAC || g.name == l.Machine {
				t.rows = append(t.rows, []string{l.IP.String(), l.Subnet, l.MAC, dash(l.Machine), kind, expires, age(l.Updated)})
				t.items[l.IP.String()] = l
			}
		}
	} else {
		t.header = []string{"MAC", "RACK", "SUBNET", "IP", "ARCH", "VENDOR CLASS", "FIRST SEEN", "LAST SEEN"}
		var ds []inventory.Discovered
		ds, rev, err = g.r.Discovered(ctx)
		for _, d := range ds {
			if g.name == "" || g.name == d.MAC {
				t.rows = append(t.rows, []string{d.MAC, d.Rack, dash(d.Subnet), dash(d.IP), dash(d.Arch), dash(d.VendorClass), age(d.FirstSeen), age(d.LastSeen)})
				t.items[d.MAC] = d
			}
		}
	}
	return t, rev, err
}

func until(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Until(t)
	if d < 0 {
		return "expired"
	}
	return "in " + d.Round(time.Second).String()
}

// imageRacks summarises the racks' caches: "r1=ready,r2=failed".
func imageRacks(sts []inventory.ImageStatus) string {
	var parts []string
	for _, st := range sts {
		parts = append(parts, st.Rack+"="+st.State)
	}
	sort.Strings(parts)
	return dash(strings.Join(parts, ","))
}

func buildTable(snap *inventory.Snapshot, kind string, wide bool, statuses map[string]inventory.MachineStatus, images map[string][]inventory.ImageStatus) *table {
	inv := snap.Inventory
	t := &table{items: map[string]any{}}
	switch kind {
	case spec.KindMachine:
		t.machines(snap, wide, statuses)
	case spec.KindRack:
		t.racks(inv)
	case spec.KindSubnet:
		t.subnets(inv, wide)
	case spec.KindImage:
		t.images(inv, wide, images)
	case spec.KindProfile:
		t.profiles(inv)
	}
	return t
}

// add adds a row and the object behind it.
func (t *table) add(name string, item any, cols ...string) {
	t.rows = append(t.rows, append([]string{name}, cols...))
	t.items[name] = item
}

// machines lists managed machines and, still visible, unmanaged ones.
func (t *table) machines(snap *inventory.Snapshot, wide bool, statuses map[string]inventory.MachineStatus) {
	inv := snap.Inventory
	t.header = []string{"NAME", "RACK", "STATE", "PHASE", "IP", "MAC", "IMAGE", "BMC"}
	if wide {
		t.header = append(t.header, "STEP", "IN PHASE", "REASON", "CABLING", "PROFILE", "ARCH", "FIRMWARE", "ZONE", "POOL", "MAINTENANCE", "ORIGIN")
	}
	names := spec.SortedNames(inv.Machines)
	for n := range snap.Unmanaged {
		if inv.Machines[n] == nil {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		m := inv.Machines[n]
		if m == nil {
			u := snap.Unmanaged[n]
			cols := []string{"-", "unmanaged", dash(statuses[n].Phase), "-", "-", "-", "-"}
			if wide {
				cols = append(cols, "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "removed in "+short(u.RemovedIn))
			}
			t.add(n, unmanagedObject{Unmanaged: u, Status: status(statuses, n)}, cols...)
			continue
		}
		t.add(n, machineObject{Machine: redact(m), Status: status(statuses, n)}, machineCols(m, statuses[n], wide)...)
	}
}

// machineCols are a managed machine's columns after its name.
func machineCols(m *spec.Machine, st inventory.MachineStatus, wide bool) []string {
	sp := &m.Spec
	ip, mac := "-", "-"
	if b := sp.BootInterface(); b != nil {
		mac = b.MAC
		if b.IP != "" {
			ip = b.IP
		}
	}
	bmc := "-"
	if sp.BMC != nil {
		bmc = sp.BMC.Driver
	}
	cols := []string{dash(sp.Rack), sp.State, dash(st.Phase), ip, mac, dash(sp.Image), bmc}
	if wide {
		inPhase := "-"
		if !st.PhaseStartedAt.IsZero() {
			inPhase = time.Since(st.PhaseStartedAt).Round(time.Second).String()
		}
		reason := st.Reason
		if utf8.RuneCountInString(reason) > 60 {
			reason = string([]rune(reason)[:57]) + "..."
		}
		cols = append(cols, dash(st.Step), inPhase, dash(reason), cablingCol(&st))
		cols = append(cols, dash(sp.Profile), sp.Arch, sp.Firmware, dash(sp.Zone), dash(sp.Pool),
			fmt.Sprint(sp.InMaintenance()), m.Origin.String())
	}
	return cols
}

// cablingCol is the CABLING column, from the CablingMismatch condition:
// ok, mismatch, ? (no LLDP neighbour seen) or - (nothing declared, or not
// checked yet).
func cablingCol(st *inventory.MachineStatus) string {
	c := st.Condition(reconciler.CondCablingMismatch)
	switch {
	case c == nil || c.Reason == "NotDeclared":
		return "-"
	case c.Status == "True":
		return "mismatch"
	case c.Status == "False":
		return "ok"
	}
	return "?"
}

// racks lists racks with their subnets and machine counts.
func (t *table) racks(inv *spec.Inventory) {
	t.header = []string{"NAME", "ZONE", "SUBNETS", "MACHINES", "SWITCHES"}
	for _, n := range spec.SortedNames(inv.Racks) {
		r := inv.Racks[n]
		var subnets []string
		for _, sn := range spec.SortedNames(inv.Subnets) {
			if inv.Subnets[sn].Spec.Rack == n {
				subnets = append(subnets, sn)
			}
		}
		machines := 0
		for _, m := range inv.Machines {
			if m.Spec.Rack == n {
				machines++
			}
		}
		t.add(n, r, dash(r.Spec.Zone), dash(strings.Join(subnets, ",")), fmt.Sprint(machines), fmt.Sprint(len(r.Spec.Switches)))
	}
}

// subnets lists subnets.
func (t *table) subnets(inv *spec.Inventory, wide bool) {
	t.header = []string{"NAME", "CIDR", "RACK", "MODE", "GATEWAY", "DYNAMIC", "VLAN"}
	if wide {
		t.header = append(t.header, "DNS", "DOMAIN", "MTU", "LEASE")
	}
	for _, n := range spec.SortedNames(inv.Subnets) {
		s := inv.Subnets[n]
		dyn := "-"
		if s.Spec.DynamicRange != nil {
			dyn = s.Spec.DynamicRange.String()
		}
		cols := []string{s.Spec.CIDR, s.Spec.Rack, s.Spec.Mode, dash(s.Spec.Gateway), dyn, fmt.Sprint(s.Spec.VLAN)}
		if wide {
			cols = append(cols, dash(strings.Join(s.Spec.DNS, ",")), dash(s.Spec.Domain), fmt.Sprint(s.Spec.MTU), s.Spec.LeaseTime.String())
		}
		t.add(n, s, cols...)
	}
}

// images lists images with what each rack's cache says of them.
func (t *table) images(inv *spec.Inventory, wide bool, images map[string][]inventory.ImageStatus) {
	t.header = []string{"NAME", "PURPOSE", "ARCH", "FORMAT", "RACKS", "URL"}
	if wide {
		t.header = append(t.header, "PROBLEM")
	}
	for _, n := range spec.SortedNames(inv.Images) {
		im := inv.Images[n]
		url := "-"
		switch {
		case im.Spec.Disk != nil:
			url = im.Spec.Disk.URL
		case im.Spec.Kernel != nil:
			url = im.Spec.Kernel.URL
		}
		cols := []string{im.Spec.Purpose, im.Spec.Arch, dash(im.Spec.Format), imageRacks(images[n]), url}
		if wide {
			problem := "-"
			for _, st := range images[n] {
				if st.Message != "" {
					problem = st.Rack + ": " + st.Message
					break
				}
			}
			cols = append(cols, problem)
		}
		t.add(n, im, cols...)
	}
}

// profiles lists profiles with their selectors and machine counts.
func (t *table) profiles(inv *spec.Inventory) {
	t.header = []string{"NAME", "SELECTOR", "MACHINES"}
	for _, n := range spec.SortedNames(inv.Profiles) {
		p := inv.Profiles[n]
		sel := "-"
		if p.Spec.Selector != nil {
			var parts []string
			for _, k := range spec.SortedNames(p.Spec.Selector.MatchLabels) {
				parts = append(parts, k+"="+p.Spec.Selector.MatchLabels[k])
			}
			sel = strings.Join(parts, ",")
		}
		machines := 0
		for _, m := range inv.Machines {
			if m.Spec.Profile == n {
				machines++
			}
		}
		t.add(n, p, sel, fmt.Sprint(machines))
	}
}

// machineObject is a machine as -o yaml|json prints it, like kubectl:
// the document from the source and, under status, what Kiln observed,
// with the facts its agent reported as a structured object.
type machineObject struct {
	*spec.Machine
	Status *inventory.MachineStatus `json:"status,omitempty"`
	// Report is what the machine's agents reported to its rack during
	// its current (or last) network boot.
	Report *inventory.MachineReport `json:"report,omitempty"`
}

// attachReports reads the rack's report of each machine in the table
// (only of name, when given).
func attachReports(ctx context.Context, store reader, t *table, name string) error {
	for n, item := range t.items {
		mo, ok := item.(machineObject)
		if !ok || (name != "" && n != name) {
			continue
		}
		r, err := store.MachineReportOf(ctx, mo.Spec.Rack, n)
		if err != nil {
			return err
		}
		mo.Report = r
		t.items[n] = mo
	}
	return nil
}

// unmanagedObject is a machine removed from the source, and its status.
type unmanagedObject struct {
	inventory.Unmanaged
	Status *inventory.MachineStatus `json:"status,omitempty"`
}

func status(statuses map[string]inventory.MachineStatus, name string) *inventory.MachineStatus {
	st, ok := statuses[name]
	if !ok {
		return nil
	}
	return &st
}

// redact returns a machine safe to print: no plaintext secrets.
func redact(m *spec.Machine) *spec.Machine {
	if m.Spec.BMC == nil || m.Spec.BMC.Password == nil || (m.Spec.BMC.Password.Value == "" && !m.Spec.BMC.Password.FromSecret) {
		return m
	}
	c := *m
	b := *m.Spec.BMC
	p := *b.Password
	p.Value = "<redacted>"
	b.Password, c.Spec.BMC = &p, &b
	return &c
}

func (g *getter) print(out io.Writer, t *table, header bool) error {
	switch g.format {
	case "", "wide":
		// Cells may hold what machines sent (a DHCP vendor class, an
		// agent's reason): clean keeps them from driving the terminal.
		rows := make([][]string, len(t.rows))
		for j, r := range t.rows {
			rows[j] = make([]string, len(r))
			for i, c := range r {
				rows[j][i] = clean(c)
			}
		}
		// Columns keep the widths printed so far, so that --watch's rows
		// line up with the header; a wider cell widens its column and
		// prints the header again.
		if g.grow(append([][]string{t.header}, rows...)) && !header && len(rows) > 0 {
			header = true
		}
		if header {
			g.writeRow(out, t.header)
		}
		for _, r := range rows {
			g.writeRow(out, r)
		}
		return nil
	case "name":
		for _, r := range t.rows {
			fmt.Fprintf(out, "%s/%s\n", strings.ToLower(g.kind), clean(r[0]))
		}
		return nil
	case "json":
		items := make([]any, 0, len(t.rows))
		for _, r := range t.rows {
			if it := t.items[r[0]]; it != nil {
				items = append(items, it)
			}
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if g.name != "" && len(items) == 1 {
			return enc.Encode(items[0])
		}
		return enc.Encode(map[string]any{"items": items})
	case "yaml":
		for _, r := range t.rows {
			it := t.items[r[0]]
			if it == nil {
				continue
			}
			b, err := toYAML(it)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "---\n%s", b)
		}
	}
	return nil
}

// grow widens the columns to fit rows, reporting whether a column that
// was already printed grew.
func (g *getter) grow(rows [][]string) bool {
	grew := false
	for _, r := range rows {
		for i, c := range r {
			w := utf8.RuneCountInString(c)
			switch {
			case i >= len(g.widths):
				g.widths = append(g.widths, w)
			case w > g.widths[i]:
				g.widths[i], grew = w, true
			}
		}
	}
	return grew
}

// writeRow prints a row in the columns: each cell but the last padded to
// its column's width and three spaces.
func (g *getter) writeRow(out io.Writer, r []string) {
	var b strings.Builder
	for i, c := range r {
		b.WriteString(c)
		if i < len(r)-1 {
			b.WriteString(strings.Repeat(" ", g.widths[i]-utf8.RuneCountInString(c)+3))
		}
	}
	fmt.Fprintln(out, b.String())
}

// toYAML prints a value through its JSON form, so field names and
// omitted fields match what is stored in etcd.
func toYAML(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var n yaml.Node
	if err := yaml.Unmarshal(b, &n); err != nil {
		return nil, err
	}
	// JSON is YAML in flow style with quoted strings; print it in block
	// style and let the encoder quote only what needs it.
	var clear func(*yaml.Node)
	clear = func(n *yaml.Node) {
		n.Style = 0
		for _, c := range n.Content {
			clear(c)
		}
	}
	clear(&n)
	return yaml.Marshal(&n)
}

func short(rev string) string { return dash(inventory.ShortRevision(rev)) }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
