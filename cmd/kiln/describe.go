package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
)

func runDescribe(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("describe", "machine NAME [flags]", errOut)
	var cf clientFlags
	cf.register(fs)
	pos, code, ok := parseArgs(fs, args, func(pos []string) bool {
		return len(pos) == 2 && resources[strings.ToLower(pos[0])] == spec.KindMachine
	})
	if !ok {
		return code
	}
	name := pos[1]
	store, _, closeFn, ok := cf.open("describe", errOut)
	if !ok {
		return exitFail
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	snap, err := store.Snapshot(ctx, spec.KindMachine, inventory.KindUnmanaged)
	if err != nil {
		fmt.Fprintln(errOut, "kiln describe:", explain(cf, err))
		return exitFail
	}
	st, err := store.Status(ctx, name)
	if err != nil && !errors.Is(err, inventory.ErrNotFound) {
		fmt.Fprintln(errOut, "kiln describe:", explain(cf, err))
		return exitFail
	}
	d := description{name: name, machine: snap.Inventory.Machines[name], pointer: snap.Pointer}
	if err == nil {
		d.status = &st
	}
	if u, ok := snap.Unmanaged[name]; ok {
		d.unmanaged = &u
	}
	if d.machine == nil && d.unmanaged == nil {
		fmt.Fprintf(errOut, "kiln describe: machine %q not found in revision %s\n", name, short(snap.Pointer.Revision))
		return exitFail
	}
	rack := st.Rack
	if d.machine != nil && d.machine.Spec.Rack != "" {
		rack = d.machine.Spec.Rack
	}
	if rack != "" {
		if tl, err := store.Timeline(ctx, rack, name); err == nil {
			d.timeline = tl.Events
		}
		if r, err := store.MachineReportOf(ctx, rack, name); err == nil {
			d.report = r
		}
	}
	if d.status != nil && st.TaskID != "" && st.Rack != "" {
		if t, err := store.Task(ctx, st.Rack, name); err == nil && t.ID == st.TaskID {
			d.task = &t
		}
	}
	if evs, _, err := store.Events(ctx, name); err == nil {
		d.events = evs
	}
	if err := d.write(out); err != nil {
		fmt.Fprintln(errOut, "kiln describe:", err)
		return exitFail
	}
	return exitOK
}

// description is what describe shows of one machine, read from etcd;
// write renders it without touching etcd.
type description struct {
	name      string
	machine   *spec.Machine        // nil when the source no longer has it
	unmanaged *inventory.Unmanaged // set when removed from the source
	pointer   inventory.Pointer    // the applied revision
	timeline  []inventory.TimelineEvent
	status    *inventory.MachineStatus // nil: no reconciler has reported yet
	report    *inventory.MachineReport // the rack's report of the machine's boot; nil: none
	task      *inventory.PowerTask     // the power task status.TaskID names
	events    []inventory.Event
}

// printer writes "Key:\tvalue" lines and table rows through a tabwriter.
// Every value and cell goes through clean: much of what describe shows
// was written by the machine (facts, the agent's result) or its DHCP and
// TFTP requests (the boot timeline), and must not drive the terminal.
type printer struct{ w io.Writer }

func (p printer) section(title string) { fmt.Fprintln(p.w, title+":") }

func (p printer) kv(k string, v any) { fmt.Fprintf(p.w, "%s:\t%s\n", k, clean(fmt.Sprint(v))) }

// note writes "key: value" outside the columns: a one-line stand-in for
// a section, which must not widen the table next to it.
func (p printer) note(k, v string) { fmt.Fprintf(p.w, "%s: %s\n", k, clean(v)) }

func (p printer) row(cols ...string) {
	for i := range cols {
		cols[i] = clean(cols[i])
	}
	fmt.Fprintln(p.w, strings.Join(cols, "\t"))
}

// clean makes a string safe to print on a terminal: control characters
// (ESC, CR, LF, tab…), invalid UTF-8 and other runes that do not print,
// such as bidirectional overrides, are shown as Go escapes (\x1b, \n,
// \u202e), so a string cannot move the cursor, fake a line or break the
// columns.
func clean(s string) string {
	if utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return !strconv.IsPrint(r) }) {
		return s
	}
	var b strings.Builder
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[0])
		case strconv.IsPrint(r):
			b.WriteString(s[:n])
		default:
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
		s = s[n:]
	}
	return b.String()
}

func (d *description) write(out io.Writer) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	p := printer{w}
	p.kv("Name", d.name)
	if u := d.unmanaged; u != nil {
		p.kv("Managed", fmt.Sprintf("no: removed from the source in revision %s at %s", short(u.RemovedIn), u.RemovedAt.Format(time.RFC3339)))
		p.kv("", "Kiln leaves this machine as it is: nothing was powered off or wiped.")
		p.kv("", "Add it back to the source to manage it again.")
	}
	if d.machine != nil {
		d.writeSpec(p)
	}
	if len(d.timeline) > 0 {
		p.section("Boot timeline (newest last)")
		for _, ev := range d.timeline[max(0, len(d.timeline)-20):] {
			p.row("  "+ev.Time.Format("2006-01-02 15:04:05.000"), ev.Type, ev.Detail)
		}
	}
	p.section("Status")
	if d.status == nil {
		p.kv("  Phase", "- (no reconciler has reported on this machine yet)")
	} else {
		d.writeStatus(p)
		facts := d.status.Facts
		if len(facts) == 0 && d.report != nil {
			facts = d.report.Facts // reported, not yet commissioned
		}
		if len(facts) == 0 && reconciler.AdoptedUncommissioned(d.status) {
			p.note("Facts", "unknown: adopted without commissioning (releasing it, state: ready, commissions it)")
		} else {
			writeFacts(p, d.name, facts)
		}
	}
	if len(d.events) > 0 {
		p.section("Events (newest last)")
		for _, ev := range d.events[max(0, len(d.events)-15):] {
			p.row("  "+ev.Time.Local().Format("2006-01-02 15:04:05"), ev.Type, ev.Reason, ev.Message)
		}
	}
	return w.Flush()
}

func (d *description) writeSpec(p printer) {
	m := d.machine
	sp := &m.Spec
	p.kv("Rack", dash(sp.Rack))
	p.kv("Profile", dash(sp.Profile))
	p.kv("Labels", labels(m.Metadata.Labels))
	p.kv("Origin", fmt.Sprintf("%s (revision %s, applied %s)", m.Origin, short(d.pointer.Revision), d.pointer.AppliedAt.Format(time.RFC3339)))
	p.section("Desired")
	p.kv("  State", sp.State)
	p.kv("  Image", dash(sp.Image))
	p.kv("  Arch/Firmware", sp.Arch+"/"+sp.Firmware)
	p.kv("  Maintenance", sp.InMaintenance())
	p.kv("  Erase on release", sp.Erase)
	p.kv("  Generations", fmt.Sprintf("commission %d, deploy %d", sp.CommissionGeneration, sp.DeployGeneration))
	if sp.Zone != "" || sp.Pool != "" {
		p.kv("  Zone/Pool", dash(sp.Zone)+"/"+dash(sp.Pool))
	}
	if rd := sp.RootDisk; rd != nil {
		p.kv("  Root disk", rootDisk(rd))
	}
	if sp.UserData != "" {
		src := "inline"
		if sp.UserDataFile != "" {
			src = sp.UserDataFile
		}
		p.kv("  User data", fmt.Sprintf("%d bytes (%s)", len(sp.UserData), src))
	}
	p.section("Interfaces")
	p.row("  NAME", "MAC", "SUBNET", "IP", "BOOT")
	boot := sp.BootInterface()
	for i := range sp.Interfaces {
		ifc := &sp.Interfaces[i]
		ip := ifc.IP
		if ip == "" {
			ip = "auto"
		}
		p.row("  "+ifc.Name, ifc.MAC, dash(ifc.Subnet), ip, fmt.Sprint(ifc == boot))
	}
	for _, b := range sp.Bonds {
		p.row("  "+b.Name, fmt.Sprintf("bond %s of %s", b.Mode, strings.Join(b.Interfaces, "+")), dash(b.Subnet), dash(b.IP), "")
	}
	for _, v := range sp.VLANs {
		p.row("  "+v.Name, fmt.Sprintf("vlan %d on %s", v.ID, v.Link), dash(v.Subnet), dash(v.IP), "")
	}
	if b := sp.BMC; b != nil {
		p.section("BMC")
		p.kv("  Driver", b.Driver)
		p.kv("  Address", dash(b.Address))
		p.kv("  Username", dash(b.Username))
		p.kv("  Password", password(b.Password))
		if b.SkipVerify() {
			p.kv("  TLS", "not verified (insecure: true)")
		}
	} else {
		p.kv("BMC", "none: someone must power this machine by hand")
	}
}

func (d *description) writeStatus(p printer) {
	st := d.status
	p.kv("  Phase", dash(st.Phase))
	if st.Step != "" {
		p.kv("  Step", fmt.Sprintf("%s (since %s)", st.Step, st.StepStartedAt.Format(time.RFC3339)))
	}
	if !st.PhaseStartedAt.IsZero() {
		p.kv("  Phase started", st.PhaseStartedAt.Format(time.RFC3339))
	}
	if st.Message != "" {
		p.kv("  Message", st.Message)
	}
	if st.Reason != "" {
		p.kv("  Reason", st.Reason)
	}
	if st.Attempts > 0 {
		p.kv("  Attempts", st.Attempts)
	}
	if st.Paused != "" {
		p.kv("  Paused in", st.Paused)
	}
	p.kv("  Boot purpose", dash(st.BootPurpose))
	d.writePowerTask(p)
	if len(st.Addresses) > 0 {
		p.kv("  Addresses", strings.Join(st.Addresses, ", "))
	}
	if st.Power != "" {
		p.kv("  Power", fmt.Sprintf("%s (seen %s)", st.Power, st.PowerAt.Format(time.RFC3339)))
	}
	if st.DeployedImage != "" {
		p.kv("  Deployed", fmt.Sprintf("%s at %s", st.DeployedImage, st.DeployedAt.Format(time.RFC3339)))
	}
	d.writeReport(p)
	if st.SourceRevision != "" {
		p.kv("  Source revision", short(st.SourceRevision))
	}
	p.kv("  Observed generation", st.ObservedGeneration)
	if !st.UpdatedAt.IsZero() {
		p.kv("  Updated", st.UpdatedAt.Format(time.RFC3339))
	}
	if len(st.Conditions) > 0 {
		p.section("Conditions")
		p.row("  TYPE", "STATUS", "REASON", "SINCE", "MESSAGE")
		for _, c := range st.Conditions {
			p.row("  "+c.Type, c.Status, dash(c.Reason), c.Since.Format(time.RFC3339), c.Message)
		}
	}
}

// writePowerTask writes the power task the status waits for.
func (d *description) writePowerTask(p printer) {
	st := d.status
	if t := d.task; t != nil {
		task := fmt.Sprintf("%s on rack %s: %s since %s", t.Action, st.Rack, t.State, t.CreatedAt.Format(time.RFC3339))
		if t.Finished() {
			task = fmt.Sprintf("%s on rack %s: %s at %s by %s", t.Action, st.Rack, t.State, t.DoneAt.Format(time.RFC3339), dash(t.Agent))
		}
		if t.Error != "" {
			task += ": " + t.Error
		}
		p.kv("  Power task", task)
	}
}

// writeReport writes what the rack last stored from the machine's boot:
// which boot, the agent's progress and result, and the OS's report-in.
func (d *description) writeReport(p printer) {
	st := d.status
	if r := d.report; r != nil {
		s := dash(r.TaskID)
		if r.TaskID != "" && r.TaskID != st.BootTaskID {
			s += " (not the boot the phase waits for: ignored)"
		}
		p.kv("  Report of boot", s)
	}
	if pr := d.reportProgress(); pr != nil {
		s := pr.Phase
		if pr.TotalBytes > 0 {
			s += fmt.Sprintf(" %d/%d bytes (%.0f%%)", pr.BytesWritten, pr.TotalBytes, 100*float64(pr.BytesWritten)/float64(pr.TotalBytes))
		} else if pr.BytesWritten > 0 {
			s += fmt.Sprintf(" %d bytes", pr.BytesWritten)
		}
		p.kv("  Agent progress", s+" at "+pr.At.Format(time.RFC3339))
	}
	if d.report != nil && d.report.Result != nil {
		p.kv("  Agent result", agentResult(d.report.Result))
	}
	osr := st.OSReport
	if d.report != nil && d.report.OSReport != nil {
		osr = d.report.OSReport
	}
	if r := osr; r != nil {
		s := "hostname " + dash(r.Hostname)
		if r.BootID != "" {
			s += ", boot " + r.BootID
		}
		if r.Address != "" {
			s += ", from " + r.Address
		}
		p.kv("  OS reported in", s+" at "+r.At.Format(time.RFC3339))
	}
}

func (d *description) reportProgress() *inventory.AgentProgress {
	if d.report == nil {
		return nil
	}
	return d.report.Progress
}

// agentResult says how the agent's last task ended, with what it said:
// the reason of a failure, or the summary of a success.
func agentResult(r *inventory.AgentResult) string {
	s := "success"
	if !r.Success {
		s = "failure"
	}
	s += " at " + r.At.Format(time.RFC3339)
	if r.Reason != "" {
		s += ": " + r.Reason
	}
	return s
}

// writeFacts summarises the hardware facts the machine agent reported.
// Facts that do not decode take one line: describe still shows the rest.
func writeFacts(p printer, name string, raw json.RawMessage) {
	if len(raw) == 0 || string(raw) == "null" {
		p.note("Facts", "none reported yet (the machine agent reports them when it commissions the machine)")
		return
	}
	var f agentapi.Facts
	if err := json.Unmarshal(raw, &f); err != nil {
		p.note("Facts", fmt.Sprintf("%d bytes the agent reported do not decode (%v): `kiln get machine %s -o json` shows them as they are", len(raw), err, name))
		return
	}
	p.section("Facts")
	if f.Version > agentapi.FactsVersion {
		p.kv("  Version", fmt.Sprintf("%d, newer than this kiln reads (%d): `kiln get machine %s -o yaml` shows every field", f.Version, agentapi.FactsVersion, name))
	}
	p.kv("  Arch", dash(f.Arch))
	cpu := dash(f.CPU.Model)
	if f.CPU.Count > 0 {
		cpu += fmt.Sprintf(", %d logical CPUs", f.CPU.Count)
	}
	if f.CPU.Sockets > 1 {
		cpu += fmt.Sprintf(" in %d sockets", f.CPU.Sockets)
	}
	p.kv("  CPU", cpu)
	p.kv("  Memory", humanSize(f.Memory.TotalBytes))
	dmi := f.DMI
	p.kv("  System", joinNonEmpty(strings.TrimSpace(dmi.Vendor+" "+dmi.Product), prefixed("version ", dmi.Version),
		prefixed("serial ", dmi.Serial), prefixed("asset tag ", dmi.ChassisAsset)))
	if dmi.UUID != "" {
		p.kv("  UUID", dmi.UUID)
	}
	if dmi.BoardVendor != "" || dmi.BoardName != "" || dmi.BoardSerial != "" {
		p.kv("  Board", joinNonEmpty(strings.TrimSpace(dmi.BoardVendor+" "+dmi.BoardName), prefixed("serial ", dmi.BoardSerial)))
	}
	if dmi.BIOSVendor != "" || dmi.BIOSVersion != "" {
		fw := strings.TrimSpace(dmi.BIOSVendor + " " + dmi.BIOSVersion)
		if dmi.BIOSDate != "" {
			fw += " (" + dmi.BIOSDate + ")"
		}
		p.kv("  Firmware", fw)
	}
	writeDisks(p, f.Disks)
	writeNICs(p, f.NICs)
	writeLLDP(p, f.LLDP)
	if len(f.Errors) > 0 {
		p.section("  Collector errors")
		for _, e := range f.Errors {
			p.row("    " + e)
		}
	}
}

func writeDisks(p printer, disks []agentapi.Disk) {
	if len(disks) == 0 {
		p.note("  Disks", "none found")
	} else {
		p.section("  Disks")
		p.row("    NAME", "SIZE", "SERIAL", "MODEL", "BY-PATH", "ROTATIONAL")
		for _, d := range disks {
			rot := fmt.Sprint(d.Rotational)
			if d.Removable {
				rot += ", removable"
			}
			p.row("    "+dash(d.Name), humanSize(d.SizeBytes), dash(d.Serial), dash(d.Model), dash(d.ByPath), rot)
		}
	}
}

func writeNICs(p printer, nics []agentapi.NIC) {
	if len(nics) == 0 {
		p.note("  NICs", "none found")
	} else {
		p.section("  NICs")
		p.row("    NAME", "MAC", "LINK", "SPEED", "DRIVER", "MTU")
		for _, n := range nics {
			mtu := "-"
			if n.MTU > 0 {
				mtu = fmt.Sprint(n.MTU)
			}
			p.row("    "+dash(n.Name), dash(n.MAC), link(n), speed(n.SpeedMbps), dash(n.Driver), mtu)
		}
	}
}

func writeLLDP(p printer, neighbours []agentapi.Neighbor) {
	if len(neighbours) == 0 {
		p.note("  LLDP neighbours", "none heard")
	} else {
		p.section("  LLDP neighbours")
		p.row("    INTERFACE", "SWITCH", "PORT", "CHASSIS")
		for _, n := range neighbours {
			port := n.PortID
			if n.PortDescription != "" && n.PortDescription != n.PortID {
				port += " (" + n.PortDescription + ")"
			}
			chassis := n.ChassisID
			if n.ChassisIDType != "" {
				chassis += " (" + n.ChassisIDType + ")"
			}
			p.row("    "+dash(n.Interface), dash(n.SystemName), dash(port), dash(chassis))
		}
	}
}

// link is a NIC's link state as the kernel saw it.
func link(n agentapi.NIC) string {
	switch {
	case n.OperState == "" && n.Carrier:
		return "carrier"
	case n.OperState == "":
		return "no carrier"
	case n.OperState == "up" && !n.Carrier:
		return "up, no carrier"
	}
	return n.OperState
}

func speed(mbps int) string {
	switch {
	case mbps <= 0:
		return "-"
	case mbps%1000 == 0:
		return fmt.Sprintf("%d Gb/s", mbps/1000)
	case mbps > 1000:
		return fmt.Sprintf("%.1f Gb/s", float64(mbps)/1000)
	}
	return fmt.Sprintf("%d Mb/s", mbps)
}

// humanSize prints a size in powers of 1024, as disks and memory are
// usually spoken of: 1.9 GiB, 465.8 GiB, 1.8 TiB. (image.go's humanBytes
// stops at MiB, which suits initramfs files but not disks.)
func humanSize(n int64) string {
	if n <= 0 {
		return "-"
	}
	if n < 1<<10 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n)/(1<<10), 0
	for ; v >= 1<<10 && unit < 5; unit++ {
		v /= 1 << 10
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTPE"[unit])
}

func prefixed(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

func joinNonEmpty(parts ...string) string {
	var keep []string
	for _, s := range parts {
		if s != "" {
			keep = append(keep, s)
		}
	}
	return dash(strings.Join(keep, ", "))
}

func labels(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range spec.SortedNames(m) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

func password(p *spec.SecretRef) string {
	switch {
	case p == nil:
		return "none"
	case p.FromFile != "":
		return "from file " + p.FromFile
	case p.FromEnv != "":
		return "from environment variable " + p.FromEnv
	case p.Value != "" || p.FromSecret:
		return "<redacted> (plaintext in the source, kept in the rack's secrets: move it to fromFile or fromEnv)"
	}
	return "none"
}

func rootDisk(d *spec.DiskSelector) string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("path", d.Path)
	add("serial", d.Serial)
	add("model", d.Model)
	if d.MinSize > 0 {
		add("minSize", fmt.Sprint(int64(d.MinSize)))
	}
	if d.MaxSize > 0 {
		add("maxSize", fmt.Sprint(int64(d.MaxSize)))
	}
	if d.Rotational != nil {
		add("rotational", fmt.Sprint(*d.Rotational))
	}
	add("prefer", d.Prefer)
	return strings.Join(parts, " ")
}
