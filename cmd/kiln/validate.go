package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kilnhq/kiln/spec"
)

// loadDir loads an inventory folder the way the directory source does:
// through an os.Root, so links out of the folder are refused.
func loadDir(dir string) (*spec.Result, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open inventory folder: %w", err)
	}
	defer root.Close()
	return spec.Load(root.FS()), nil
}

func runValidate(_ context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("validate", "PATH [flags]", errOut)
	format := fs.String("o", "text", "output: text, json, or github (workflow annotations)")
	quiet := fs.Bool("q", false, "print errors only, no warnings or summary")
	dir, res, code, ok := loadArg("validate", fs, args, errOut, exitFail)
	if !ok {
		return code
	}
	problems := res.Problems
	if *quiet {
		problems = nil
		for _, p := range res.Problems {
			if p.Severity == spec.Error {
				problems = append(problems, p)
			}
		}
	}
	switch *format {
	case "text":
		fmt.Fprint(out, problems.String())
		if !*quiet {
			fmt.Fprintf(out, "%s: %d objects in %d files: %d errors, %d warnings\n", dir, res.Inventory.Len(),
				res.Files, res.Problems.Errors(), len(res.Problems)-res.Problems.Errors())
		}
	case "json":
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		enc.Encode(struct {
			Valid    bool           `json:"valid"`
			Objects  int            `json:"objects"`
			Files    int            `json:"files"`
			Digest   string         `json:"digest"`
			Problems []spec.Problem `json:"problems"`
		}{res.Problems.Errors() == 0, res.Inventory.Len(), res.Files, res.Digest, nonNil(problems)})
	case "github":
		for _, p := range problems {
			fmt.Fprintf(out, "::%s file=%s,line=%d,col=%d::%s\n", p.Severity, ghEscape(p.Pos.File), p.Pos.Line, p.Pos.Col, ghEscape(strings.TrimPrefix(p.String(), p.Pos.String()+": ")))
		}
	default:
		fmt.Fprintf(errOut, "kiln validate: -o %q: use text, json or github\n", *format)
		return exitUsage
	}
	if res.Problems.Errors() > 0 {
		return exitFail
	}
	return exitOK
}

func nonNil(ps spec.Problems) []spec.Problem {
	if ps == nil {
		return []spec.Problem{}
	}
	return ps
}

func ghEscape(s string) string {
	return strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A", ",", "%2C", "::", "%3A%3A").Replace(s)
}

func runSchema(_ context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("schema", "", errOut)
	if _, code, ok := parse(fs, args); !ok {
		return code
	}
	b, err := spec.Schema()
	if err != nil {
		fmt.Fprintln(errOut, "kiln schema:", err)
		return exitFail
	}
	out.Write(b)
	if len(b) > 0 && b[len(b)-1] != '\n' {
		fmt.Fprintln(out)
	}
	return exitOK
}
