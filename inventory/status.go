package inventory

import (
	"encoding/json"
	"time"

	"github.com/kilnhq/kiln/spec"
)

// Source states.
const (
	SourceApplied     = "Applied"     // the observed revision is applied
	SourceInvalid     = "Invalid"     // the observed revision failed validation; the last good one stays
	SourceUnreachable = "Unreachable" // the source could not be read; the last good one stays
	SourceFailed      = "Failed"      // applying to etcd failed; retrying
)

// SourceStatus is what Kiln knows about a source, stored at sources/<name>.
type SourceStatus struct {
	Name     string `json:"name"`
	Type     string `json:"type"`
	Location string `json:"location"`
	Branch   string `json:"branch,omitempty"`

	State   string `json:"state"`
	Message string `json:"message,omitempty"`

	ObservedRevision string    `json:"observedRevision,omitempty"`
	ObservedAt       time.Time `json:"observedAt"`
	AppliedRevision  string    `json:"appliedRevision,omitempty"`
	AppliedAt        time.Time `json:"appliedAt,omitzero"`
	Generation       string    `json:"generation,omitempty"`

	Errors   int            `json:"errors"`
	Warnings int            `json:"warnings"`
	Problems []spec.Problem `json:"problems,omitempty"` // the first maxProblems
	Objects  map[string]int `json:"objects,omitempty"`
}

// maxProblems bounds the problems kept in a source status.
const maxProblems = 100

// MachineStatus is the observed state of a machine, stored at
// status/machines/<name>. Reconcilers and agents of later stages fill it.
type MachineStatus struct {
	Phase string `json:"phase,omitempty"`
	// BootPurpose is what the machine does on its next network boot:
	// discover, commission, deploy, erase, local or off. The region
	// reconciler sets it; empty means local.
	BootPurpose        string      `json:"bootPurpose,omitempty"`
	Message            string      `json:"message,omitempty"`
	ObservedGeneration int64       `json:"observedGeneration,omitempty"`
	Conditions         []Condition `json:"conditions,omitempty"`
	UpdatedAt          time.Time   `json:"updatedAt,omitzero"`
	// Facts are the hardware facts of the last successful commissioning,
	// and OSReport the deployed OS's report-in of the last deployment:
	// the region copies them from the rack's MachineReport of the boot
	// it waited for. Agents never write a status.
	Facts    json.RawMessage `json:"facts,omitempty"`
	OSReport *OSReport       `json:"osReport,omitempty"`

	// The region reconciler's bookkeeping: where in its phase the machine
	// is, so that a new leader resumes there.
	Rack   string `json:"rack,omitempty"`
	Step   string `json:"step,omitempty"`
	TaskID string `json:"taskID,omitempty"` // the power task the step waits for
	// BootTaskID is the network-boot task of the current phase: the only
	// boot whose MachineReport the region acts on (reports carry the
	// task of the token they came with).
	BootTaskID string `json:"bootTaskID,omitempty"`
	// IgnoredReport is the task of the last report of another boot the
	// region ignored (so that it says so once).
	IgnoredReport string `json:"ignoredReport,omitempty"`
	// FastTrackFrom is the commissioning boot (its network-boot task)
	// whose still-running agent was handed this deploy (fast track): the
	// rack files that boot's reports under BootTaskID.
	FastTrackFrom  string    `json:"fastTrackFrom,omitempty"`
	PhaseStartedAt time.Time `json:"phaseStartedAt,omitzero"`
	StepStartedAt  time.Time `json:"stepStartedAt,omitzero"`
	// Attempts counts failed attempts of the current (or failed) phase.
	Attempts int `json:"attempts,omitempty"`
	// Reason says why the machine failed or waits.
	Reason string `json:"reason,omitempty"`
	// FailedGeneration is the spec generation (commission or deploy) of
	// the attempt that failed; raising it past this retries.
	FailedGeneration int64 `json:"failedGeneration,omitempty"`
	// Retry asks the reconciler to try a failed phase again (kiln retry).
	Retry bool `json:"retry,omitempty"`
	// PowerRequest is a power action asked through the region API,
	// waiting for the region leader to decide it (it clears it).
	PowerRequest *PowerRequest `json:"powerRequest,omitempty"`
	// PowerWanted is the power state the last power action asked for
	// ("on" or "off"): until the phase changes, the power watch takes it
	// over what the phase implies.
	PowerWanted string `json:"powerWanted,omitempty"`
	// Paused is the phase a machine in maintenance returns to.
	Paused string `json:"paused,omitempty"`
	// SourceRevision is the source revision (git commit) last reconciled.
	SourceRevision string `json:"sourceRevision,omitempty"`
	// CommissionedGeneration and DeployedGeneration are the spec's
	// commissionGeneration and deployGeneration last carried out.
	CommissionedGeneration int64     `json:"commissionedGeneration,omitempty"`
	DeployedGeneration     int64     `json:"deployedGeneration,omitempty"`
	DeployedImage          string    `json:"deployedImage,omitempty"`
	CommissionedAt         time.Time `json:"commissionedAt,omitzero"`
	DeployedAt             time.Time `json:"deployedAt,omitzero"`
	// Power is the power state the rack last observed (on, off, unknown).
	Power     string    `json:"power,omitempty"`
	PowerAt   time.Time `json:"powerAt,omitzero"`
	Addresses []string  `json:"addresses,omitempty"`
}

// Condition returns the condition of the given type, or nil.
func (s *MachineStatus) Condition(typ string) *Condition {
	for i := range s.Conditions {
		if s.Conditions[i].Type == typ {
			return &s.Conditions[i]
		}
	}
	return nil
}

// SetCondition sets a condition; Since changes only when Status does.
func (s *MachineStatus) SetCondition(typ, status, reason, message string, now time.Time) {
	if c := s.Condition(typ); c != nil {
		if c.Status != status {
			c.Since = now
		}
		c.Status, c.Reason, c.Message = status, reason, message
		return
	}
	s.Conditions = append(s.Conditions, Condition{Type: typ, Status: status, Reason: reason, Message: message, Since: now})
}

// Condition is one named fact about a machine.
type Condition struct {
	Type    string    `json:"type"`
	Status  string    `json:"status"` // True, False, Unknown
	Reason  string    `json:"reason,omitempty"`
	Message string    `json:"message,omitempty"`
	Since   time.Time `json:"since"`
}

// PowerRequest is one power action asked through the region API.
type PowerRequest struct {
	Action string    `json:"action"` // on, off, cycle
	By     string    `json:"by"`     // the token's name
	At     time.Time `json:"at"`
	Force  bool      `json:"force,omitempty"` // interrupt a working phase
}

// SyncRequest asks the region leader's source to poll now.
type SyncRequest struct {
	By string    `json:"by"`
	At time.Time `json:"at"`
}
