package inventory

import "time"

// Power task actions.
const (
	// TaskNetboot sets the next boot to the network and powers the
	// machine on, or cycles it when it is on.
	TaskNetboot = "netboot"
	// TaskDiskboot sets the next boot to the disk and powers the machine
	// on, or cycles it when it is on.
	TaskDiskboot = "diskboot"
	// TaskOff powers the machine off, hard.
	TaskOff = "off"
)

// Power task states.
const (
	TaskPending = "pending" // written by the region, not yet done
	// TaskRunning: a rack leader started it. A successor that finds it
	// checks the power state instead of cycling the machine again.
	TaskRunning = "running"
	TaskDone    = "done"   // the rack did it
	TaskFailed  = "failed" // the rack gave up; Error says why
	// TaskManual: the machine has no BMC Kiln can drive; a person must
	// act (Error says what). The region keeps waiting.
	TaskManual = "manual"
)

// PowerTask is what the region asks a rack leader to do to a machine's
// power, at tasks/<rack>/<machine>. One task per machine at a time: a new
// one replaces the old. The rack writes the outcome into the same key.
type PowerTask struct {
	ID      string `json:"id"`
	Machine string `json:"machine"`
	Action  string `json:"action"`
	// Purpose is the boot purpose the machine network-boots with after
	// a netboot (commission, deploy, erase), for logs and timelines.
	Purpose   string    `json:"purpose,omitempty"`
	CreatedAt time.Time `json:"createdAt"`

	State string `json:"state"`
	Error string `json:"error,omitempty"`
	// Power is the power state the rack saw while doing the task.
	Power  string    `json:"power,omitempty"`
	Agent  string    `json:"agent,omitempty"` // the rack agent that did it
	DoneAt time.Time `json:"doneAt,omitzero"`
}

// Finished reports whether the rack has ended the task.
func (t *PowerTask) Finished() bool {
	return t.State == TaskDone || t.State == TaskFailed || t.State == TaskManual
}
