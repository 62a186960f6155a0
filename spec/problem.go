package spec

import (
	"fmt"
	"sort"
	"strings"
)

// Severity says whether a Problem blocks applying an inventory.
type Severity int

// Severities.
const (
	Error Severity = iota
	Warning
)

func (s Severity) String() string {
	if s == Warning {
		return "warning"
	}
	return "error"
}

// MarshalText writes "error" or "warning".
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads "error" or "warning".
func (s *Severity) UnmarshalText(b []byte) error {
	switch string(b) {
	case "error":
		*s = Error
	case "warning":
		*s = Warning
	default:
		return fmt.Errorf("unknown severity %q", b)
	}
	return nil
}

// Pos is a place in a source file; Line and Col count from 1.
type Pos struct {
	File string `json:"file"`
	Line int    `json:"line,omitempty"`
	Col  int    `json:"col,omitempty"`
}

func (p Pos) String() string {
	switch {
	case p.Line == 0:
		return p.File
	case p.Col == 0:
		return fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col)
}

// Problem is one thing wrong with an inventory.
type Problem struct {
	Pos      Pos      `json:"pos"`
	Severity Severity `json:"severity"`
	Field    string   `json:"field,omitempty"`
	Message  string   `json:"message"`

	// doc and path locate the problem before positions are resolved.
	doc  *docRef
	path string
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.Pos.String())
	b.WriteString(": ")
	b.WriteString(p.Severity.String())
	b.WriteString(": ")
	if p.Field != "" {
		b.WriteString(p.Field)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// Problems is a list of problems with helpers.
type Problems []Problem

// Errors counts the error-severity problems.
func (ps Problems) Errors() int {
	n := 0
	for _, p := range ps {
		if p.Severity == Error {
			n++
		}
	}
	return n
}

// Err returns nil when there are no errors, else an error summarising them.
func (ps Problems) Err() error {
	if ps.Errors() == 0 {
		return nil
	}
	return &InvalidError{Problems: ps}
}

// InvalidError is returned when an inventory has errors.
type InvalidError struct{ Problems Problems }

func (e *InvalidError) Error() string {
	n := e.Problems.Errors()
	var first string
	for _, p := range e.Problems {
		if p.Severity == Error {
			first = p.String()
			break
		}
	}
	if n == 1 {
		return "invalid inventory: " + first
	}
	return fmt.Sprintf("invalid inventory: %d errors, first: %s", n, first)
}

func (ps Problems) sort() {
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i].Pos, ps[j].Pos
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		if a.Col != b.Col {
			return a.Col < b.Col
		}
		return ps[i].Message < ps[j].Message
	})
}

// String prints one problem a line.
func (ps Problems) String() string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString(p.String())
		b.WriteByte('\n')
	}
	return b.String()
}
