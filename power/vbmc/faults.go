package vbmc

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// Protocols a fault can be limited to.
const (
	ProtocolIPMI    = "ipmi"
	ProtocolRedfish = "redfish"
)

// Faults make a virtual BMC misbehave the way real ones do, so that
// clients' timeouts, retries and circuit breakers can be tested. The zero
// value is a healthy BMC.
//
// What they apply to: every Redfish request under /redfish (not the
// /vbmc admin API); for IPMI, latency and errors apply to chassis
// commands (status, control, boot options), while a hang drops every
// packet, session set-up included, as an unreachable BMC would.
type Faults struct {
	// Latency is added before every answer.
	Latency time.Duration `yaml:"latency"`
	// ErrorRate is the fraction (0 to 1) of requests that fail: Redfish
	// answers 500, IPMI answers IPMICompletionCode.
	ErrorRate float64 `yaml:"errorRate"`
	// FailNext fails the next N requests, then counts down to 0.
	FailNext int `yaml:"failNext"`
	// Hang answers nothing until the faults change.
	Hang bool `yaml:"hang"`
	// Protocol limits the faults to "ipmi" or "redfish"; empty means both.
	Protocol string `yaml:"protocol"`
	// IPMICompletionCode is the completion code of a failed IPMI request;
	// 0 means 0xFF (unspecified error). 0xC0 (node busy) is another
	// common choice.
	IPMICompletionCode uint8 `yaml:"ipmiCompletionCode"`
}

type faultsJSON struct {
	Latency            string  `json:"latency,omitempty"`
	ErrorRate          float64 `json:"errorRate,omitempty"`
	FailNext           int     `json:"failNext,omitempty"`
	Hang               bool    `json:"hang,omitempty"`
	Protocol           string  `json:"protocol,omitempty"`
	IPMICompletionCode uint8   `json:"ipmiCompletionCode,omitempty"`
}

// MarshalJSON writes Latency as a Go duration string ("250ms").
func (f Faults) MarshalJSON() ([]byte, error) {
	j := faultsJSON{ErrorRate: f.ErrorRate, FailNext: f.FailNext, Hang: f.Hang, Protocol: f.Protocol, IPMICompletionCode: f.IPMICompletionCode}
	if f.Latency > 0 {
		j.Latency = f.Latency.String()
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads Latency as a Go duration string ("250ms", "2s").
func (f *Faults) UnmarshalJSON(b []byte) error {
	var j faultsJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*f = Faults{ErrorRate: j.ErrorRate, FailNext: j.FailNext, Hang: j.Hang, Protocol: j.Protocol, IPMICompletionCode: j.IPMICompletionCode}
	if j.Latency != "" {
		d, err := time.ParseDuration(j.Latency)
		if err != nil {
			return fmt.Errorf("latency: %w", err)
		}
		f.Latency = d
	}
	return nil
}

// Validate checks the ranges.
func (f Faults) Validate() error {
	if f.Latency < 0 {
		return fmt.Errorf("faults: latency %v is negative", f.Latency)
	}
	if f.ErrorRate < 0 || f.ErrorRate > 1 {
		return fmt.Errorf("faults: errorRate %v is not between 0 and 1", f.ErrorRate)
	}
	if f.FailNext < 0 {
		return fmt.Errorf("faults: failNext %d is negative", f.FailNext)
	}
	switch f.Protocol {
	case "", ProtocolIPMI, ProtocolRedfish:
	default:
		return fmt.Errorf("faults: protocol %q: want ipmi, redfish or empty for both", f.Protocol)
	}
	return nil
}

// faultState holds a BMC's current faults.
type faultState struct {
	mu      sync.Mutex
	f       Faults
	changed chan struct{} // closed and replaced by every set
}

func newFaultState(f Faults) *faultState {
	return &faultState{f: f, changed: make(chan struct{})}
}

func (s *faultState) get() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f
}

func (s *faultState) set(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.f = f
	close(s.changed)
	s.changed = make(chan struct{})
}

// fault is what happens to one request.
type fault struct {
	hang    bool
	changed <-chan struct{} // when hang: wait for this, then ask again
	latency time.Duration
	fail    bool
	code    uint8 // IPMI completion code when fail
}

// take decides the fate of one request of protocol proto, counting it
// against FailNext.
func (s *faultState) take(proto string) fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := &s.f
	if f.Protocol != "" && f.Protocol != proto {
		return fault{}
	}
	if f.Hang {
		return fault{hang: true, changed: s.changed}
	}
	out := fault{latency: f.Latency, code: f.IPMICompletionCode}
	if out.code == 0 {
		out.code = 0xFF
	}
	switch {
	case f.FailNext > 0:
		f.FailNext--
		out.fail = true
	case f.ErrorRate >= 1:
		out.fail = true
	case f.ErrorRate > 0:
		out.fail = rand.Float64() < f.ErrorRate
	}
	return out
}

// hanging reports whether requests of proto are to be dropped now.
func (s *faultState) hanging(proto string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f.Hang && (s.f.Protocol == "" || s.f.Protocol == proto)
}
