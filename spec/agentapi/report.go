package agentapi

import "encoding/json"

// Report is one report of a machine agent, or of the deployed OS:
// exactly one field is set.
type Report struct {
	Facts    json.RawMessage `json:"facts,omitempty"` // a JSON object, as the agent sent it
	Progress *Progress       `json:"progress,omitempty"`
	Result   *Result         `json:"result,omitempty"`
	OS       *OSReport       `json:"os,omitempty"`
	// TaskID and BootID name the boot the report belongs to, from the
	// token it came with; the region ignores a report of another boot.
	TaskID string `json:"taskID,omitempty"`
	BootID string `json:"bootID,omitempty"`
}

// OSReport is the deployed OS reporting in after its first boot: what
// cloud-init's phone_home posts (instance_id, hostname, fqdn, as a form),
// or the same as JSON with the boot ID. Every field is checked against a
// narrow alphabet before it is stored.
type OSReport struct {
	Hostname   string `json:"hostname,omitempty"`
	FQDN       string `json:"fqdn,omitempty"`
	InstanceID string `json:"instanceID,omitempty"`
	BootID     string `json:"bootID,omitempty"`
	Address    string `json:"-"` // the address the report came from, set by the server
}

// Progress is how far the agent is.
type Progress struct {
	Phase        string `json:"phase"`
	BytesWritten int64  `json:"bytesWritten,omitempty"`
	TotalBytes   int64  `json:"totalBytes,omitempty"`
}

// Result ends a task.
type Result struct {
	Success bool   `json:"success"`
	Reason  string `json:"reason,omitempty"`
}
