package examples_test

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/kilnhq/kiln/inventory/etcd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	promql "github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"
)

// The alert rules and the dashboard may name only metrics Kiln exports,
// each expression must parse as PromQL, each alert has promtool unit
// tests firing and not firing, and each runbook link reaches a heading of
// docs/troubleshooting.md.

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type ruleTests struct {
	Tests []struct {
		AlertRuleTest []struct {
			Alertname string           `yaml:"alertname"`
			ExpAlerts []map[string]any `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

func TestAlertRules(t *testing.T) {
	var rules ruleFile
	readYAML(t, "prometheus/kiln-rules.yml", &rules)
	var tests ruleTests
	readYAML(t, "prometheus/kiln-rules.test.yml", &tests)
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	anchors := headingAnchors(t, "../docs/troubleshooting.md")
	known := kilnMetrics(t)
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			n++
			if r.Alert == "" {
				t.Errorf("group %s: a rule without alert name (only alerts belong here)", g.Name)
				continue
			}
			checkExpr(t, r.Alert, r.Expr, known)
			if !fires[r.Alert] || !quiet[r.Alert] {
				t.Errorf("%s: kiln-rules.test.yml must test it firing (%v) and not firing (%v)", r.Alert, fires[r.Alert], quiet[r.Alert])
			}
			url := r.Annotations["runbook_url"]
			const base = "https://github.com/kilnhq/kiln/blob/main/docs/troubleshooting.md#"
			if !strings.HasPrefix(url, base) || !anchors[strings.TrimPrefix(url, base)] {
				t.Errorf("%s: runbook_url %q is not a heading of docs/troubleshooting.md", r.Alert, url)
			}
			if r.Annotations["summary"] == "" {
				t.Errorf("%s: no summary", r.Alert)
			}
		}
	}
	if n < 9 {
		t.Fatalf("only %d rules read from kiln-rules.yml", n)
	}
	promtool := lookPromtool(t)
	run(t, "prometheus", promtool, "check", "rules", "kiln-rules.yml")
	run(t, "prometheus", promtool, "test", "rules", "kiln-rules.test.yml")
	run(t, "prometheus", promtool, "check", "config", "prometheus.yml")
}

// grafanaDashboard is the part of Grafana's dashboard model the test reads.
type grafanaDashboard struct {
	Title  string `json:"title"`
	UID    string `json:"uid"`
	Panels []struct {
		ID      int    `json:"id"`
		Type    string `json:"type"`
		Title   string `json:"title"`
		GridPos struct {
			H, W, X, Y int
		} `json:"gridPos"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("grafana/kiln-fleet.json")
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	var d grafanaDashboard
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("kiln-fleet.json: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Fatal("the dashboard needs a title and a uid")
	}
	known := kilnMetrics(t)
	ids, exprs := map[int]bool{}, 0
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, p.GridPos)
		}
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q shows nothing", p.Title)
		}
		for _, tg := range p.Targets {
			exprs++
			checkExpr(t, p.Title+"/"+tg.RefID, grafanaVars.Replace(tg.Expr), known)
		}
	}
	// label_values(metric, label) in the variables names metrics too.
	for _, v := range d.Templating.List {
		q, _ := v.Query.(map[string]any)
		s, _ := q["query"].(string)
		if m := labelValues.FindStringSubmatch(s); m != nil {
			checkExpr(t, "variable "+v.Name, m[1], known)
		}
	}
	// The panels: each family has a panel.
	for _, want := range []string{"kiln_machines", "kiln_phase_duration_seconds_bucket", "kiln_machine_failures_total",
		"kiln_dhcp_packets_total", "kiln_tftp_transfers_total", "kiln_http_boot_requests_total", "kiln_power_operations_total",
		"kiln_power_operation_duration_seconds_bucket", "kiln_region_leader", "kiln_rack_has_leader", "kiln_reconcile_queue_depth",
		"kiln_reconcile_duration_seconds_bucket", "grpc_client_started_total"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("no panel shows %s", want)
		}
	}
	if exprs < 20 {
		t.Fatalf("only %d expressions in the dashboard", exprs)
	}
}

var (
	grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$rack_agent", ".*", "$rack", ".*")
	labelValues = regexp.MustCompile(`^label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,`)
)

// checkExpr parses expr as PromQL and checks that every metric it selects
// is one Kiln exports.
func checkExpr(t *testing.T, where, expr string, known map[string]bool) {
	t.Helper()
	e, err := promql.NewParser(promql.Options{}).ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: %q does not parse: %v", where, expr, err)
		return
	}
	promql.Inspect(e, func(n promql.Node, _ []promql.Node) error {
		vs, ok := n.(*promql.VectorSelector)
		if !ok {
			return nil
		}
		if vs.Name == "" {
			t.Errorf("%s: a selector without metric name: %s", where, vs)
		} else if !known[vs.Name] {
			t.Errorf("%s: %s is not a metric Kiln exports", where, vs.Name)
		}
		return nil
	})
}

// kilnMetrics is every series name Kiln's processes export: the kiln_*
// metrics named in the module's code (a Name field of a prometheus Opts
// literal or NewDesc's first argument), with a histogram's _bucket, _sum
// and _count, plus what the Go, process and etcd client collectors
// describe.
func kilnMetrics(t *testing.T) map[string]bool {
	t.Helper()
	known := map[string]bool{}
	fset := token.NewFileSet()
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != ".." && (d.Name() == "e2e" || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			var lit ast.Expr
			histogram := false
			switch n := n.(type) {
			case *ast.CompositeLit:
				typ := exprString(n.Type)
				if !strings.HasSuffix(typ, "Opts") {
					return true
				}
				histogram = strings.HasSuffix(typ, "HistogramOpts")
				for _, el := range n.Elts {
					if kv, ok := el.(*ast.KeyValueExpr); ok && exprString(kv.Key) == "Name" {
						lit = kv.Value
					}
				}
			case *ast.CallExpr:
				if exprString(n.Fun) == "prometheus.NewDesc" && len(n.Args) > 0 {
					lit = n.Args[0]
				}
			}
			if bl, ok := lit.(*ast.BasicLit); ok && bl.Kind == token.STRING {
				name, _ := strconv.Unquote(bl.Value)
				known[name] = true
				if histogram {
					for _, s := range []string{"_bucket", "_sum", "_count"} {
						known[name+s] = true
					}
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(known) < 40 || !known["kiln_machines"] || !known["kiln_rack_has_leader"] {
		t.Fatalf("the scan found only %d metric names: %v", len(known), sorted(known))
	}
	rec := &describer{names: known}
	rec.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	etcd.Instrument(rec)
	return known
}

func exprString(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.Ident:
		return e.Name
	case *ast.SelectorExpr:
		return exprString(e.X) + "." + e.Sel.Name
	}
	return ""
}

// describer is a Registerer that records the names its collectors describe.
type describer struct{ names map[string]bool }

var descName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (d *describer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for desc := range ch {
		if m := descName.FindStringSubmatch(desc.String()); m != nil {
			d.names[m[1]] = true
			// Histograms' and summaries' series; harmless for the rest.
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				d.names[m[1]+s] = true
			}
		}
	}
	return nil
}

func (d *describer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = d.Register(c)
	}
}

func (d *describer) Unregister(prometheus.Collector) bool { return false }

func sorted(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// headingAnchors is the set of GitHub anchors of a Markdown file's headings.
func headingAnchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.ToLower(strings.TrimSpace(strings.TrimLeft(line, "#")))
		var sb strings.Builder
		for _, r := range h {
			switch {
			case r == ' ':
				sb.WriteRune('-')
			case r == '-' || r == '_' || ('a' <= r && r <= 'z') || ('0' <= r && r <= '9'):
				sb.WriteRune(r)
			}
		}
		out[sb.String()] = true
	}
	return out
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// lookPromtool finds Debian's promtool; CI installs it (e2e/deps.sh), so
// only a developer's machine may skip.
func lookPromtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not found; e2e/deps.sh installs the prometheus package")
		}
		t.Skip("promtool not installed (apt-get install prometheus): the syntax and metric checks ran, promtool's did not")
	}
	return p
}

func run(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}
