package api

import (
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
)

// MachineSummary is a machine as lists and the watch show it.
type MachineSummary struct {
	Name           string            `json:"name"`
	Rack           string            `json:"rack,omitempty"`
	Labels         map[string]string `json:"labels,omitempty"`
	State          string            `json:"state,omitempty"` // the spec's: ready, deployed
	Image          string            `json:"image,omitempty"`
	Maintenance    bool              `json:"maintenance,omitempty"`
	Phase          string            `json:"phase,omitempty"`
	Step           string            `json:"step,omitempty"`
	Message        string            `json:"message,omitempty"`
	Reason         string            `json:"reason,omitempty"` // why it failed
	PhaseStartedAt time.Time         `json:"phaseStartedAt,omitzero"`
	DeployedImage  string            `json:"deployedImage,omitempty"`
	Power          string            `json:"power,omitempty"`
	// Warnings are the conditions that call for a look (PowerDrift,
	// CablingMismatch, ImageDrift, ... when True).
	Warnings []string `json:"warnings,omitempty"`
	// Unmanaged: removed from the source; its status is kept.
	Unmanaged bool `json:"unmanaged,omitempty"`
}

// MachineDetail is one machine: its document (secrets redacted) and
// where it came from, and its status.
type MachineDetail struct {
	Name    string                   `json:"name"`
	Machine *spec.Machine            `json:"machine,omitempty"`
	Status  *inventory.MachineStatus `json:"status,omitempty"`
	// Unmanaged is set for a machine removed from the source.
	Unmanaged *inventory.Unmanaged `json:"unmanaged,omitempty"`
}

// List is a page of a list: Continue, when set, is the name to pass as
// ?continue= for the next page; Revision is the cache's etcd revision to
// watch from.
type List[T any] struct {
	Items    []T    `json:"items"`
	Revision int64  `json:"revision"`
	Continue string `json:"continue,omitempty"`
	// Applied is the applied desired state the items come from (lists of
	// the inventory's kinds).
	Applied *inventory.Pointer `json:"applied,omitempty"`
}

// warningConditions are the conditions a summary lists when True.
var warningConditions = map[string]bool{
	"PowerDrift": true, "CablingMismatch": true, "ImageDrift": true, "ImageNotReady": true,
	"CommissionPending": true, "RolloutWaiting": true,
}

// summary builds a machine's summary from the cache; c.mu is held. A
// machine neither in the inventory nor with a status is not found.
func (c *cache) summary(name string) (MachineSummary, bool) {
	m := c.snap.Inventory.Machines[name]
	st, hasStatus := c.statuses[name]
	_, unmanaged := c.snap.Unmanaged[name]
	if m == nil && !hasStatus && !unmanaged {
		return MachineSummary{}, false
	}
	s := MachineSummary{Name: name, Unmanaged: m == nil}
	if m != nil {
		s.Rack, s.Labels, s.State, s.Image = m.Spec.Rack, m.Metadata.Labels, m.Spec.State, m.Spec.Image
		s.Maintenance = m.Spec.InMaintenance()
	}
	if hasStatus {
		s.Phase, s.Step, s.Message, s.Reason = st.Phase, st.Step, st.Message, st.Reason
		s.PhaseStartedAt, s.DeployedImage, s.Power = st.PhaseStartedAt, st.DeployedImage, st.Power
		if s.Rack == "" {
			s.Rack = st.Rack
		}
		for _, cd := range st.Conditions {
			if warningConditions[cd.Type] && cd.Status == "True" {
				s.Warnings = append(s.Warnings, cd.Type)
			}
		}
	}
	return s, true
}

// detail builds a machine's detail from the cache; c.mu is held.
func (c *cache) detail(name string) (MachineDetail, bool) {
	d := MachineDetail{Name: name, Machine: redact(c.snap.Inventory.Machines[name])}
	if st, ok := c.statuses[name]; ok {
		d.Status = &st
	}
	if u, ok := c.snap.Unmanaged[name]; ok {
		d.Unmanaged = &u
	}
	return d, d.Machine != nil || d.Status != nil || d.Unmanaged != nil
}

// redact returns a machine safe to show: no plaintext secret.
func redact(m *spec.Machine) *spec.Machine {
	if m == nil || m.Spec.BMC == nil || m.Spec.BMC.Password == nil || m.Spec.BMC.Password.Value == "" {
		return m
	}
	c, b := *m, *m.Spec.BMC
	p := *b.Password
	p.Value = "<redacted>"
	b.Password, c.Spec.BMC = &p, &b
	return &c
}
