package reconciler_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/spec"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

// BenchmarkRegionReadyToDeployed drives 10,000 ready machines to
// deployed with instant simulated rack and machine agents, the region
// running as its own process (for its RSS), and compares the rate with a
// plain etcd client doing the same number of status writes, in the same
// run, against the same etcd.
//
//	make bench-region
func BenchmarkRegionReadyToDeployed(b *testing.B) {
	n := 10000
	if s := os.Getenv("KILN_BENCH_MACHINES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	for range b.N {
		benchRegion(b, n)
	}
}

func benchRegion(b *testing.B, n int) {
	cli, cfg := etcdtest.Start(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := inventory.NewStore(cli, "", quiet())
	inv := benchFleet(b, n)
	if _, err := store.Apply(ctx, inv, inventory.ApplyMeta{Source: "bench", Revision: "r1"}); err != nil {
		b.Fatal(err)
	}
	// Every machine commissioned and ready, as an earlier leader left it.
	now := time.Now().UTC()
	ready, _ := json.Marshal(inventory.MachineStatus{Phase: "ready", Rack: "r1", BootPurpose: "off", PhaseStartedAt: now,
		Facts: json.RawMessage(`{"cpu":{"count":2}}`), Conditions: []inventory.Condition{{Type: "Commissioned", Status: "True", Since: now}}})
	var ops []clientv3.Op
	for name := range inv.Machines {
		ops = append(ops, clientv3.OpPut(store.Keys().MachineStatus(name), string(ready)))
		if len(ops) == 100 {
			if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				b.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	if len(ops) > 0 {
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
	}

	s := newSim(store)
	s.instant = true
	go s.run(ctx)

	exe, _ := os.Executable()
	metricsAddr := etcdtest.FreeAddr(b)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), "KILN_TEST_REGION=bench-region", "KILN_TEST_ETCD="+cfg.Endpoints[0], "KILN_TEST_METRICS="+metricsAddr)
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	waitDeployed(b, ctx, metricsAddr, n)
	elapsed := time.Since(start)
	rss := peakRSS(cmd.Process.Pid)
	if os.Getenv("KILN_BENCH_TRACE") != "" {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err == nil {
			io.Copy(os.Stderr, resp.Body)
			resp.Body.Close()
		}
	}
	regionReqs := regionRequests(b, metricsAddr)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	// The same number of status writes with a plain client: three per
	// machine (deploying + task, boot-disk + task, deployed), from as
	// many goroutines as the region has workers.
	writes := 3 * n
	rawStart := time.Now()
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for range 32 {
		g.Go(func() error {
			for {
				i := next.Add(1) - 1
				if i >= int64(writes) {
					return nil
				}
				if _, err := cli.Put(gctx, store.Keys().MachineStatus(fmt.Sprintf("raw-%06d", i%int64(n))), string(ready)); err != nil {
					return err
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	rawElapsed := time.Since(rawStart)

	rate := float64(n) / elapsed.Seconds()
	rawRate := float64(n) / rawElapsed.Seconds()
	b.ReportMetric(rate, "machines/s")
	b.ReportMetric(rawRate, "raw_machines/s")
	b.ReportMetric(rate/rawRate, "ratio")
	b.ReportMetric(float64(regionReqs)/float64(n), "region_etcd_requests/machine")
	b.ReportMetric(float64(rss)/(1<<20), "region_peak_rss_MB")
	b.Logf("%d machines ready → deployed in %s (%.0f/s); plain client, %d status writes: %s (%.0f machines/s); ratio %.2f; region: %.2f etcd requests/machine, peak RSS %.0f MB",
		n, elapsed.Round(time.Millisecond), rate, writes, rawElapsed.Round(time.Millisecond), rawRate, rate/rawRate,
		float64(regionReqs)/float64(n), float64(rss)/(1<<20))
}

// waitDeployed polls the region's kiln_machines gauge until n machines
// are deployed (a watch of its own would load etcd and skew the figure).
func waitDeployed(b *testing.B, ctx context.Context, metricsAddr string, n int) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	start, last := time.Now(), time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		phases := scrape(metricsAddr, "kiln_machines")
		if phases["deployed"] == float64(n) {
			return
		}
		if os.Getenv("KILN_BENCH_TRACE") != "" && time.Since(last) > time.Second {
			last = time.Now()
			fmt.Fprintf(os.Stderr, "%5.1fs: %v\n", time.Since(start).Seconds(), phases)
		}
		select {
		case <-ctx.Done():
			b.Fatalf("only %v of %d machines deployed within 10 minutes", phases["deployed"], n)
		case <-tick.C:
		}
	}
}

// scrape reads a gauge from the region's metrics, by its first label.
func scrape(addr, name string) map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return out // not up yet
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return out
	}
	for _, m := range mfs[name].GetMetric() {
		if v := m.Gauge.GetValue(); v > 0 {
			out[m.Label[0].GetValue()] += v
		}
	}
	return out
}

// regionRequests counts the etcd requests of the region process from its
// metrics: its transactions (group-committed), the two reads that refresh
// a machine after a conflict, and the initial reads.
func regionRequests(b *testing.B, addr string) int64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	var n float64 = 4 // the initial reads of machines, statuses and tasks, and the events lease
	for _, m := range mfs["kiln_reconcile_write_batch_size"].GetMetric() {
		n += float64(m.Histogram.GetSampleCount()) // transactions
	}
	for _, m := range mfs["kiln_reconcile_total"].GetMetric() {
		if m.Label[0].GetValue() == "conflict" {
			n += 2 * m.Counter.GetValue() // the refresh reads
		}
	}
	return int64(n)
}

// peakRSS reads a process's peak resident set size (VmHWM).
func peakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// benchFleet is n deployable machines in one rack.
func benchFleet(b *testing.B, n int) *spec.Inventory {
	var sb strings.Builder
	sb.WriteString(`apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: net1}
spec: {cidr: 10.128.0.0/12, rack: r1, gateway: 10.128.0.1}
---
apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: debian}
spec:
  purpose: os
  disk: {url: "http://images.invalid/debian.raw", sha256: "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9"}
`)
	for i := range n {
		fmt.Fprintf(&sb, `---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m%06d}
spec:
  state: deployed
  image: debian
  bmc: {driver: manual}
  interfaces: [{name: eno1, mac: "02:00:%02x:%02x:%02x:%02x", subnet: net1, ip: 10.%d.%d.%d}]
`, i, byte(i>>24), byte(i>>16), byte(i>>8), byte(i), 128+(i+2)>>16, byte((i+2)>>8), byte(i+2))
	}
	return invtest.Load(b, sb.String())
}
