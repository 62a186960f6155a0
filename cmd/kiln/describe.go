package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
)

func runDescribe(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("describe", "machine NAME [flags]", errOut)
	var cf clientFlags
	cf.register(fs)
	pos, code, ok := parse(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 2 || resources[strings.ToLower(pos[0])] != spec.KindMachine {
		fs.Usage()
		return exitUsage
	}
	name := pos[1]
	store, closeFn, err := cf.store()
	if err != nil {
		fmt.Fprintln(errOut, "kiln describe:", err)
		return exitFail
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	snap, err := store.Snapshot(ctx, spec.KindMachine, "Unmanaged")
	if err != nil {
		fmt.Fprintln(errOut, "kiln describe:", explain(cf, err))
		return exitFail
	}
	st, err := inventory.GetJSON[inventory.MachineStatus](ctx, store, store.MachineStatusKey(name))
	hasStatus := err == nil
	if err != nil && !errors.Is(err, inventory.ErrNotFound) {
		fmt.Fprintln(errOut, "kiln describe:", explain(cf, err))
		return exitFail
	}
	m := snap.Inventory.Machines[name]
	u, unmanaged := snap.Unmanaged[name]
	if m == nil && !unmanaged {
		fmt.Fprintf(errOut, "kiln describe: machine %q not found in revision %s\n", name, short(snap.Pointer.Revision))
		return exitFail
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer w.Flush()
	kv := func(k string, v any) { fmt.Fprintf(w, "%s:\t%v\n", k, v) }
	kv("Name", name)
	if unmanaged {
		kv("Managed", fmt.Sprintf("no: removed from the source in revision %s at %s", short(u.RemovedIn), u.RemovedAt.Format(time.RFC3339)))
		kv("", "Kiln leaves this machine as it is: nothing was powered off or wiped.")
		kv("", "Add it back to the source to manage it again.")
	}
	if m != nil {
		sp := &m.Spec
		kv("Rack", dash(sp.Rack))
		kv("Profile", dash(sp.Profile))
		kv("Labels", labels(m.Metadata.Labels))
		kv("Origin", fmt.Sprintf("%s (revision %s, applied %s)", m.Origin, short(snap.Pointer.Revision), snap.Pointer.AppliedAt.Format(time.RFC3339)))
		fmt.Fprintln(w, "Desired:")
		kv("  State", sp.State)
		kv("  Image", dash(sp.Image))
		kv("  Arch/Firmware", sp.Arch+"/"+sp.Firmware)
		kv("  Maintenance", sp.InMaintenance())
		kv("  Erase on release", sp.Erase)
		kv("  Generations", fmt.Sprintf("commission %d, deploy %d", sp.CommissionGeneration, sp.DeployGeneration))
		if sp.Zone != "" || sp.Pool != "" {
			kv("  Zone/Pool", dash(sp.Zone)+"/"+dash(sp.Pool))
		}
		if rd := sp.RootDisk; rd != nil {
			kv("  Root disk", rootDisk(rd))
		}
		if sp.UserData != "" {
			src := "inline"
			if sp.UserDataFile != "" {
				src = sp.UserDataFile
			}
			kv("  User data", fmt.Sprintf("%d bytes (%s)", len(sp.UserData), src))
		}
		fmt.Fprintln(w, "Interfaces:")
		fmt.Fprintln(w, "  NAME\tMAC\tSUBNET\tIP\tBOOT")
		boot := sp.BootInterface()
		for i := range sp.Interfaces {
			ifc := &sp.Interfaces[i]
			ip := ifc.IP
			if ip == "" {
				ip = "auto"
			}
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%v\n", ifc.Name, ifc.MAC, dash(ifc.Subnet), ip, ifc == boot)
		}
		for _, b := range sp.Bonds {
			fmt.Fprintf(w, "  %s\tbond %s of %s\t%s\t%s\t\n", b.Name, b.Mode, strings.Join(b.Interfaces, "+"), dash(b.Subnet), dash(b.IP))
		}
		for _, v := range sp.VLANs {
			fmt.Fprintf(w, "  %s\tvlan %d on %s\t%s\t%s\t\n", v.Name, v.ID, v.Link, dash(v.Subnet), dash(v.IP))
		}
		if b := sp.BMC; b != nil {
			fmt.Fprintln(w, "BMC:")
			kv("  Driver", b.Driver)
			kv("  Address", dash(b.Address))
			kv("  Username", dash(b.Username))
			kv("  Password", password(b.Password))
			if b.SkipVerify() {
				kv("  TLS", "not verified (insecure: true)")
			}
		} else {
			kv("BMC", "none: someone must power this machine by hand")
		}
	}
	if tl, err := inventory.GetJSON[inventory.Timeline](ctx, store, store.TimelineKey(name)); err == nil && len(tl.Events) > 0 {
		fmt.Fprintln(w, "Boot timeline (newest last):")
		evs := tl.Events[max(0, len(tl.Events)-20):]
		for _, ev := range evs {
			fmt.Fprintf(w, "  %s\t%s\t%s\n", ev.Time.Format("2006-01-02 15:04:05.000"), ev.Type, ev.Detail)
		}
	}
	fmt.Fprintln(w, "Status:")
	if !hasStatus {
		kv("  Phase", "- (no reconciler has reported on this machine yet)")
		return exitOK
	}
	kv("  Phase", dash(st.Phase))
	if st.Step != "" {
		kv("  Step", fmt.Sprintf("%s (since %s)", st.Step, st.StepStartedAt.Format(time.RFC3339)))
	}
	if !st.PhaseStartedAt.IsZero() {
		kv("  Phase started", st.PhaseStartedAt.Format(time.RFC3339))
	}
	if st.Message != "" {
		kv("  Message", st.Message)
	}
	if st.Reason != "" {
		kv("  Reason", st.Reason)
	}
	if st.Attempts > 0 {
		kv("  Attempts", st.Attempts)
	}
	if st.Paused != "" {
		kv("  Paused in", st.Paused)
	}
	kv("  Boot purpose", dash(st.BootPurpose))
	if st.TaskID != "" && st.Rack != "" {
		if t, err := inventory.GetJSON[inventory.PowerTask](ctx, store, store.TaskKey(st.Rack, name)); err == nil && t.ID == st.TaskID {
			task := fmt.Sprintf("%s on rack %s: %s since %s", t.Action, st.Rack, t.State, t.CreatedAt.Format(time.RFC3339))
			if t.Finished() {
				task = fmt.Sprintf("%s on rack %s: %s at %s by %s", t.Action, st.Rack, t.State, t.DoneAt.Format(time.RFC3339), dash(t.Agent))
			}
			if t.Error != "" {
				task += ": " + t.Error
			}
			kv("  Power task", task)
		}
	}
	if len(st.Addresses) > 0 {
		kv("  Addresses", strings.Join(st.Addresses, ", "))
	}
	if st.Power != "" {
		kv("  Power", fmt.Sprintf("%s (seen %s)", st.Power, st.PowerAt.Format(time.RFC3339)))
	}
	if st.DeployedImage != "" {
		kv("  Deployed", fmt.Sprintf("%s at %s", st.DeployedImage, st.DeployedAt.Format(time.RFC3339)))
	}
	if p := st.Progress; p != nil {
		pr := p.Phase
		if p.TotalBytes > 0 {
			pr += fmt.Sprintf(" %d/%d bytes (%.0f%%)", p.BytesWritten, p.TotalBytes, 100*float64(p.BytesWritten)/float64(p.TotalBytes))
		} else if p.BytesWritten > 0 {
			pr += fmt.Sprintf(" %d bytes", p.BytesWritten)
		}
		kv("  Agent progress", pr+" at "+p.At.Format(time.RFC3339))
	}
	if r := st.Result; r != nil {
		res := "success"
		if !r.Success {
			res = "failure: " + r.Reason
		}
		kv("  Agent result", res+" at "+r.At.Format(time.RFC3339))
	}
	if st.SourceRevision != "" {
		kv("  Source revision", short(st.SourceRevision))
	}
	kv("  Observed generation", st.ObservedGeneration)
	if !st.UpdatedAt.IsZero() {
		kv("  Updated", st.UpdatedAt.Format(time.RFC3339))
	}
	if len(st.Conditions) > 0 {
		fmt.Fprintln(w, "Conditions:")
		fmt.Fprintln(w, "  TYPE\tSTATUS\tREASON\tSINCE\tMESSAGE")
		for _, c := range st.Conditions {
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", c.Type, c.Status, dash(c.Reason), c.Since.Format(time.RFC3339), c.Message)
		}
	}
	if evs, _, err := store.Events(ctx, name); err == nil && len(evs) > 0 {
		fmt.Fprintln(w, "Events (newest last):")
		for _, ev := range evs[max(0, len(evs)-15):] {
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\n", ev.Time.Local().Format("2006-01-02 15:04:05"), ev.Type, ev.Reason, ev.Message)
		}
	}
	return exitOK
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
	case p.Value != "":
		return "<redacted> (plaintext in the source: move it to fromFile or fromEnv)"
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
