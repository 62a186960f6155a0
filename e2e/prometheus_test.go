//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/e2e/netlab"
)

// A real Prometheus (Debian's) scrapes a running region server and rack
// agent with Kiln's alert rules loaded, and PromQL answers the machine
// count by phase; promtool lints both live /metrics pages.
func TestPrometheusScrapesKiln(t *testing.T) {
	netlab.Require(t)
	netlab.RequireBinary(t, "prometheus", "promtool", "curl")
	r := netlab.Rack(t)
	startKilnRack(t, r, "managed", 1)

	for _, target := range []string{"127.0.0.1:9420", "127.0.0.1:9500"} {
		page := r.Srv.MustExec("curl", "-sf", "http://"+target+"/metrics")
		cmd := r.Srv.Command("promtool", "check", "metrics")
		cmd.Stdin = strings.NewReader(page)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics on %s: %v\n%s", target, err, out)
		}
	}

	dir := t.TempDir()
	rules, err := os.ReadFile("../examples/prometheus/kiln-rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	conf := `global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [kiln-rules.yml]
scrape_configs:
  - job_name: kiln
    static_configs: [{targets: ['127.0.0.1:9420']}]
  - job_name: kiln-rack
    static_configs: [{targets: ['127.0.0.1:9500'], labels: {rack: r1}}]
`
	for name, b := range map[string][]byte{"prometheus.yml": []byte(conf), "kiln-rules.yml": rules} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	prom := r.Srv.Start("prometheus", "prometheus", "--config.file", filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path", filepath.Join(dir, "data"), "--web.listen-address", "127.0.0.1:9090")
	prom.Expect(`Server is ready to receive web requests`, 60*time.Second)

	// The four machines of the inventory, by phase, summed.
	var total float64
	var byPhase map[string]float64
	eventually(t, 60*time.Second, "Prometheus to count the machines by phase",
		func() string { return fmt.Sprintf("last answer: %v", byPhase) }, func() bool {
			byPhase = promQuery(t, r, `sum by (phase) (kiln_machines)`, "phase")
			total = 0
			for _, v := range byPhase {
				total += v
			}
			return total == 4
		})
	t.Logf("kiln_machines by phase through Prometheus: %v", byPhase)

	// The region reports r1's leader, and the rules loaded and evaluate.
	eventually(t, 60*time.Second, "kiln_rack_has_leader{rack=r1} = 1", func() string { return "" }, func() bool {
		return promQuery(t, r, `kiln_rack_has_leader`, "rack")["r1"] == 1
	})
	var groups struct {
		Data struct {
			Groups []struct {
				Name  string
				Rules []struct {
					Name, Health, LastError string
				}
			}
		}
	}
	eventually(t, 30*time.Second, "every rule evaluated without error", func() string { return fmt.Sprintf("%+v", groups) }, func() bool {
		if err := json.Unmarshal([]byte(r.Srv.MustExec("curl", "-sf", "http://127.0.0.1:9090/api/v1/rules")), &groups); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, g := range groups.Data.Groups {
			for _, rule := range g.Rules {
				if rule.Health != "ok" {
					return false
				}
				n++
			}
		}
		return n >= 9
	})
	// Before the first scrape KilnNoRegionLeader may be pending; once the
	// leading server is scraped it is not.
	var pending map[string]float64
	eventually(t, 30*time.Second, "KilnNoRegionLeader quiet with a leader", func() string { return fmt.Sprint(pending) }, func() bool {
		pending = promQuery(t, r, `ALERTS{alertname="KilnNoRegionLeader"}`, "alertstate")
		return len(pending) == 0
	})
}

// promQuery runs an instant query in srv and returns each series' value by
// the given label.
func promQuery(t *testing.T, r *netlab.RackNet, q, label string) map[string]float64 {
	t.Helper()
	out := r.Srv.MustExec("curl", "-sf", "http://127.0.0.1:9090/api/v1/query?query="+url.QueryEscape(q))
	var resp struct {
		Status string
		Data   struct {
			Result []struct {
				Metric map[string]string
				Value  [2]any
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil || resp.Status != "success" {
		t.Fatalf("query %s: %v\n%s", q, err, out)
	}
	res := map[string]float64{}
	for _, s := range resp.Data.Result {
		v, _ := strconv.ParseFloat(fmt.Sprint(s.Value[1]), 64)
		res[s.Metric[label]] = v
	}
	return res
}
