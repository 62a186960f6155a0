package inventory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// MachineReport is what a machine's agents and deployed OS reported
// during one network boot, stored by the machine's rack at
// reports/<rack>/<machine>. The region reads it only for the boot it
// waits for (TaskID); a report of a new TaskID starts a fresh record.
type MachineReport struct {
	TaskID    string          `json:"taskID,omitempty"`
	BootID    string          `json:"bootID,omitempty"`
	Facts     json.RawMessage `json:"facts,omitempty"`
	Progress  *AgentProgress  `json:"progress,omitempty"`
	Result    *AgentResult    `json:"result,omitempty"`
	OSReport  *OSReport       `json:"osReport,omitempty"`
	UpdatedAt time.Time       `json:"updatedAt,omitzero"`
}

// AgentProgress is the machine agent's last progress report.
type AgentProgress struct {
	Phase        string    `json:"phase"`
	BytesWritten int64     `json:"bytesWritten,omitempty"`
	TotalBytes   int64     `json:"totalBytes,omitempty"`
	At           time.Time `json:"at"`
}

// AgentResult is how the machine agent's last task ended.
type AgentResult struct {
	Success bool      `json:"success"`
	Reason  string    `json:"reason,omitempty"`
	At      time.Time `json:"at"`
}

// OSReport is what the deployed OS said when it reported in. Every field
// came from the machine and was checked against a narrow alphabet.
type OSReport struct {
	Hostname   string    `json:"hostname,omitempty"`
	FQDN       string    `json:"fqdn,omitempty"`
	InstanceID string    `json:"instanceID,omitempty"`
	BootID     string    `json:"bootID,omitempty"`
	Address    string    `json:"address,omitempty"` // the address it reported from
	At         time.Time `json:"at"`
}

// UpdateReport changes the report at reports/<rack>/<machine> for the
// boot of task taskID: a stored report of another task is dropped first,
// so one boot's facts and result never pass for another's.
//
// lease, when not clientv3.NoLease, is attached to the key (an unknown
// MAC's report expires with its discovered record).
func (s *Store) UpdateReport(ctx context.Context, rack, machine, taskID string, lease clientv3.LeaseID, fn func(*MachineReport)) error {
	key := s.keys.Report(rack, machine)
	err := UpdateJSON(ctx, s, key, func(rep *MachineReport) error {
		if rep.TaskID != taskID {
			*rep = MachineReport{TaskID: taskID}
		}
		fn(rep)
		rep.UpdatedAt = time.Now().UTC()
		return nil
	}, withLease(lease)...)
	if err != nil {
		return fmt.Errorf("report of %s: %w", machine, err)
	}
	return nil
}

// MachineReportOf reads a machine's report from its rack; nil when there
// is none.
func (s *Store) MachineReportOf(ctx context.Context, rack, machine string) (*MachineReport, error) {
	if rack == "" {
		return nil, nil
	}
	r, err := GetJSON[MachineReport](ctx, s, s.keys.Report(rack, machine))
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &r, nil
}
