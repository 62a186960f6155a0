package boot

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// Body limits of the agent API.
const (
	MaxFactsBytes  = 1 << 20  // hardware facts: disks, NICs, DMI, LLDP
	MaxReportBytes = 16 << 10 // progress and result
	// MaxDiscoveredFactsBytes bounds the facts of an unknown MAC.
	MaxDiscoveredFactsBytes = 64 << 10
)

// task serves GET /agent/{machine}/task.
func (s *Server) task(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("machine")
	tok, ok := s.checkAuth(w, r, name, nil)
	if !ok {
		return
	}
	t := agentapi.Task{Machine: name, Purpose: agentapi.PurposeDiscover, BootID: tok.BootID}
	if !spec.IsDiscovered(name) {
		m, ok := s.backend.Machine(name)
		if !ok {
			http.Error(w, "no machine "+name+" in the inventory", http.StatusNotFound)
			return
		}
		p, err := s.backend.Purpose(r.Context(), name)
		if err != nil {
			s.log.Error("boot purpose", "machine", name, "err", err)
			http.Error(w, "cannot tell what this machine should do now, try again", http.StatusServiceUnavailable)
			return
		}
		t.Purpose = p
		base := s.agentURL(r)
		switch p {
		case agentapi.PurposeDeploy:
			img, ok := s.backend.Image(m.Spec.Image)
			if !ok || img.Spec.Disk == nil {
				http.Error(w, fmt.Sprintf("machine %s: OS image %q is not in the inventory or has no disk", name, m.Spec.Image), http.StatusServiceUnavailable)
				return
			}
			t.Image = &agentapi.TaskImage{
				Name:   img.Metadata.Name,
				URL:    CacheURL(base, img.Spec.Disk),
				SHA256: img.Spec.Disk.SHA256,
				Format: diskFormat(img),
			}
			t.RootDisk = m.Spec.RootDisk
			t.MetadataURL = base + "/metadata/" + name + "/"
		case agentapi.PurposeErase:
			t.Erase = m.Spec.Erase
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(t)
	s.backend.Record(name, EventTask, t.Purpose)
}

// diskFormat is the image's format, from its URL when not given.
func diskFormat(img *spec.Image) string {
	if img.Spec.Format != "" {
		return img.Spec.Format
	}
	u := img.Spec.Disk.URL
	switch {
	case strings.HasSuffix(u, ".gz"):
		return "raw.gz"
	case strings.HasSuffix(u, ".zst"):
		return "raw.zst"
	}
	return "raw"
}

// report serves POST /agent/{machine}/{facts,progress,result}.
func (s *Server) report(w http.ResponseWriter, r *http.Request) {
	name, what := r.PathValue("machine"), r.PathValue("what")
	limit := int64(MaxReportBytes)
	switch what {
	case "facts":
		limit = MaxFactsBytes
		if spec.IsDiscovered(name) {
			limit = MaxDiscoveredFactsBytes
		}
	case "progress", "result":
	default:
		http.Error(w, fmt.Sprintf("no agent endpoint %q (facts, progress, result)", what), http.StatusNotFound)
		return
	}
	tok, ok := s.checkAuth(w, r, name, nil)
	if !ok {
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		http.Error(w, "send application/json, not "+ct, http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		http.Error(w, fmt.Sprintf("%s report larger than %d bytes", what, limit), http.StatusRequestEntityTooLarge)
		return
	}
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	rep, err := DecodeReport(what, body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rep.TaskID, rep.BootID = tok.TaskID, tok.BootID // the boot the token belongs to
	if err := s.backend.Report(r.Context(), name, rep); err != nil {
		s.log.Error("store agent report", "machine", name, "report", what, "err", err)
		http.Error(w, "cannot store the report, try again", http.StatusServiceUnavailable)
		return
	}
	detail := what
	switch {
	case rep.Progress != nil:
		detail = fmt.Sprintf("progress %s %d/%d", rep.Progress.Phase, rep.Progress.BytesWritten, rep.Progress.TotalBytes)
	case rep.Result != nil && rep.Result.Success:
		detail = "result success"
	case rep.Result != nil:
		detail = "result failure: " + rep.Result.Reason
	}
	s.backend.Record(name, EventAgent, detail)
	w.WriteHeader(http.StatusNoContent)
}

// DecodeReport decodes an agent report of the given kind (facts,
// progress, result) strictly: one JSON value, no unknown fields.
func DecodeReport(kind string, body []byte) (agentapi.Report, error) {
	switch kind {
	case "facts":
		var obj map[string]json.RawMessage
		if err := decodeStrict(body, &obj); err != nil {
			return agentapi.Report{}, fmt.Errorf("facts: %w", err)
		}
		if obj == nil {
			return agentapi.Report{}, errors.New("facts: want a JSON object, got null")
		}
		return agentapi.Report{Facts: json.RawMessage(bytes.Clone(bytes.TrimSpace(body)))}, nil
	case "progress":
		var p agentapi.Progress
		if err := decodeStrict(body, &p); err != nil {
			return agentapi.Report{}, fmt.Errorf("progress: %w", err)
		}
		switch {
		case p.Phase == "" || len(p.Phase) > 64:
			return agentapi.Report{}, errors.New("progress: phase must be 1 to 64 characters")
		case p.BytesWritten < 0 || p.TotalBytes < 0:
			return agentapi.Report{}, errors.New("progress: byte counts must not be negative")
		case p.TotalBytes > 0 && p.BytesWritten > p.TotalBytes:
			return agentapi.Report{}, fmt.Errorf("progress: bytesWritten %d exceeds totalBytes %d", p.BytesWritten, p.TotalBytes)
		}
		return agentapi.Report{Progress: &p}, nil
	case "result":
		var res struct {
			Success *bool  `json:"success"`
			Reason  string `json:"reason"`
		}
		if err := decodeStrict(body, &res); err != nil {
			return agentapi.Report{}, fmt.Errorf("result: %w", err)
		}
		if res.Success == nil {
			return agentapi.Report{}, errors.New(`result: "success" is required`)
		}
		if len(res.Reason) > 4096 {
			return agentapi.Report{}, errors.New("result: reason longer than 4096 bytes")
		}
		if !*res.Success && res.Reason == "" {
			return agentapi.Report{}, errors.New(`result: a failure needs a "reason"`)
		}
		return agentapi.Report{Result: &agentapi.Result{Success: *res.Success, Reason: res.Reason}}, nil
	}
	return agentapi.Report{}, fmt.Errorf("unknown report kind %q", kind)
}

// decodeStrict decodes exactly one JSON value with no unknown fields.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty body, want a JSON object")
		}
		return fmt.Errorf("invalid JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("invalid JSON: more than one value in the body")
	}
	return nil
}
