package inventory

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/spec"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// BenchmarkApply validates and applies generated fleets to a fresh
// embedded etcd, then writes the same keys and bytes with a plain client
// loop (one Put per key) into another fresh etcd, in the same run.
//
//	kiln-s      validate + apply, seconds
//	validate-s  of which decoding and validation
//	raw-put-s   the same volume as serial Puts
//	kiln/raw    the ratio
//	etcd-reqs   requests Kiln used (the raw loop uses one per key)
func BenchmarkApply(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("machines=%d", n), func(b *testing.B) {
			fsys := fleet(n, "bench")
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				cli, _ := etcdtest.Start(b)
				st := NewStore(cli, "", quiet())
				b.StartTimer()

				start := time.Now()
				res := spec.Load(fsys)
				validate := time.Since(start)
				if res.Problems.Errors() > 0 {
					b.Fatalf("generated fleet invalid:\n%s", res.Problems[:min(5, len(res.Problems))])
				}
				ar, err := st.Apply(context.Background(), res.Inventory, ApplyMeta{Source: "bench", Revision: "r1"})
				if err != nil {
					b.Fatal(err)
				}
				kiln := time.Since(start)

				b.StopTimer()
				raw := rawPuts(b, res.Inventory)
				b.ReportMetric(kiln.Seconds(), "kiln-s")
				b.ReportMetric(validate.Seconds(), "validate-s")
				b.ReportMetric(raw.Seconds(), "raw-put-s")
				b.ReportMetric(kiln.Seconds()/raw.Seconds(), "kiln/raw")
				b.ReportMetric(float64(ar.Requests), "etcd-reqs")
				b.ReportMetric(float64(n), "raw-reqs")
				b.StartTimer()
			}
		})
	}
}

// rawPuts writes every object's JSON with one Put per key to a fresh etcd.
func rawPuts(b *testing.B, inv *spec.Inventory) time.Duration {
	cli, _ := etcdtest.Start(b)
	type kv struct{ k, v string }
	var kvs []kv
	for _, o := range inv.Objects() {
		h := o.GetHeader()
		v, err := json.Marshal(o)
		if err != nil {
			b.Fatal(err)
		}
		kvs = append(kvs, kv{"/raw/" + spec.Plural(h.Kind) + "/" + h.Metadata.Name, string(v)})
	}
	ctx := context.Background()
	start := time.Now()
	for _, x := range kvs {
		if _, err := cli.Put(ctx, x.k, x.v); err != nil {
			b.Fatal(err)
		}
	}
	d := time.Since(start)
	if resp, err := cli.Get(ctx, "/raw/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != int64(len(kvs)) {
		b.Fatalf("raw loop wrote %v keys (%v), want %d", resp, err, len(kvs))
	}
	return d
}

// BenchmarkEditLatency measures, in a watched folder of 10,000 machines,
// the time from an editor-style save of one machine to that revision
// being applied in etcd: p50 and p99 over 100 edits.
func BenchmarkEditLatency(b *testing.B) {
	const n, edits = 10_000, 100
	dir := b.TempDir()
	for name, f := range fleet(n, "z0") {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, f.Data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	cli, _ := etcdtest.Start(b)
	store := NewStore(cli, "", quiet())
	m := NewSyncMetrics(nopRegisterer{})
	y := NewSyncer(&Dir{Name: "bench", Path: dir, Log: quiet(), Debounce: 20 * time.Millisecond}, store, m, quiet())
	applied := make(chan SourceStatus, 16)
	y.OnApplied = func(s SourceStatus) { applied <- s }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { y.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if s := <-applied; s.State != SourceApplied {
		b.Fatalf("initial revision: %+v", s)
	}
	file := filepath.Join(dir, "machines", "005000.yaml")
	orig, err := os.ReadFile(file)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var lat []time.Duration
		for e := 1; e <= edits; e++ {
			data := strings.Replace(string(orig), "zone: z0", fmt.Sprintf("zone: e%d-%d", i, e), 1)
			tmp := file + ".tmp"
			if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			if err := os.Rename(tmp, file); err != nil {
				b.Fatal(err)
			}
			s := <-applied
			if s.State != SourceApplied {
				b.Fatalf("edit %d: %+v", e, s)
			}
			lat = append(lat, time.Since(start))
		}
		sort.Slice(lat, func(a, c int) bool { return lat[a] < lat[c] })
		b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "p99-ms")
	}
}

type nopRegisterer struct{}

func (nopRegisterer) Register(prometheus.Collector) error  { return nil }
func (nopRegisterer) MustRegister(...prometheus.Collector) {}
func (nopRegisterer) Unregister(prometheus.Collector) bool { return true }
