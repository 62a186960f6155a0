package inventory

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"
	"time"

	retry "github.com/kilnhq/kiln/inventory/backoff"
	"github.com/kilnhq/kiln/spec"
	"github.com/prometheus/client_golang/prometheus"
)

// Revision is one state of a source.
type Revision struct {
	ID  string // commit SHA; empty means "use the content digest"
	FS  fs.FS  // the tree to load; nil when Err is set
	Err error  // the source could not be read
	// Note is shown in the source status, e.g. "branch was force-pushed".
	Note string
}

// SourceInfo names and locates a source.
type SourceInfo struct {
	Name     string
	Type     string // dir or git
	Location string
	Branch   string
}

// Source produces revisions of the inventory.
type Source interface {
	Info() SourceInfo
	// Run calls sink with each new revision until ctx ends. Calls are
	// sequential: a source coalesces changes made while sink runs.
	Run(ctx context.Context, sink func(context.Context, Revision)) error
}

// SyncMetrics are the metrics of every Syncer sharing a registry.
type SyncMetrics struct {
	applies     *prometheus.CounterVec
	lastSuccess *prometheus.GaugeVec
	duration    *prometheus.HistogramVec
	problems    *prometheus.GaugeVec
	revision    *prometheus.GaugeVec
	objects     *prometheus.GaugeVec
	requests    *prometheus.CounterVec
}

// NewSyncMetrics registers the source metrics.
func NewSyncMetrics(reg prometheus.Registerer) *SyncMetrics {
	m := &SyncMetrics{
		applies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_source_apply_total",
			Help: "Source revisions handled, by result: applied, unchanged, invalid, unreachable, failed.",
		}, []string{"source", "result"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kiln_source_last_apply_success",
			Help: "1 if the source's latest observed revision is applied, 0 if it was rejected or could not be applied.",
		}, []string{"source"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kiln_source_apply_duration_seconds",
			Help:    "Time to load, validate and apply one source revision.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"source"}),
		problems: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kiln_source_problems",
			Help: "Validation problems in the latest observed revision, by severity.",
		}, []string{"source", "severity"}),
		revision: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kiln_source_revision_info",
			Help: "The applied revision of each source (value is always 1).",
		}, []string{"source", "revision"}),
		objects: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kiln_inventory_objects",
			Help: "Objects in the applied desired state, by kind.",
		}, []string{"kind"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_source_etcd_requests_total",
			Help: "etcd requests made to apply source revisions.",
		}, []string{"source"}),
	}
	reg.MustRegister(m.applies, m.lastSuccess, m.duration, m.problems, m.revision, m.objects, m.requests)
	return m
}

func (m *SyncMetrics) init(source string) {
	for _, r := range []string{"applied", "unchanged", "invalid", "unreachable", "failed"} {
		m.applies.WithLabelValues(source, r)
	}
	for _, s := range []string{"error", "warning"} {
		m.problems.WithLabelValues(source, s)
	}
	m.lastSuccess.WithLabelValues(source)
	m.requests.WithLabelValues(source)
	for _, k := range append(append([]string(nil), spec.Kinds...), KindUnmanaged) {
		m.objects.WithLabelValues(k)
	}
}

// Syncer applies a source's revisions to the store. An invalid revision is
// rejected whole and the last good one stays applied.
type Syncer struct {
	source  Source
	store   *Store
	metrics *SyncMetrics
	log     *slog.Logger
	loader  spec.Loader
	applied string // revision last applied
	// OnApplied, if set, is called after each handled revision (tests).
	OnApplied func(SourceStatus)
}

// NewSyncer returns a Syncer for one source.
func NewSyncer(src Source, store *Store, m *SyncMetrics, log *slog.Logger) *Syncer {
	info := src.Info()
	m.init(info.Name)
	return &Syncer{source: src, store: store, metrics: m, log: log.With("source", info.Name)}
}

// Run applies revisions until ctx ends.
func (y *Syncer) Run(ctx context.Context) error {
	if p, _, err := y.store.Current(ctx); err == nil {
		y.applied = p.Revision
	}
	return y.source.Run(ctx, y.handle)
}

func (y *Syncer) handle(ctx context.Context, rev Revision) {
	info := y.source.Info()
	start := time.Now()
	st := SourceStatus{Name: info.Name, Type: info.Type, Location: info.Location, Branch: info.Branch,
		ObservedRevision: rev.ID, ObservedAt: start.UTC()}
	defer func() {
		y.metrics.duration.WithLabelValues(info.Name).Observe(time.Since(start).Seconds())
		st = y.writeStatus(ctx, st)
		if y.OnApplied != nil {
			y.OnApplied(st)
		}
	}()
	if rev.Err != nil {
		y.unreachable(&st, rev.Err)
		return
	}
	res, ok := y.validate(&st, rev)
	if !ok {
		return
	}
	meta := ApplyMeta{Source: info.Name, Revision: st.ObservedRevision, Digest: res.Digest}
	ar, ok := y.apply(ctx, &st, res.Inventory, meta)
	if !ok {
		return
	}
	y.recordApplied(&st, rev, res, meta, ar)
	msg := "revision applied"
	if ar.Unchanged {
		msg = "revision already applied"
	}
	y.log.Info(msg, "revision", meta.Revision, "generation", ar.Generation,
		"added", ar.Added, "changed", ar.Changed, "removed", ar.Removed, "new_generation", ar.NewGeneration,
		"etcd_requests", ar.Requests, "duration", time.Since(start).Round(time.Millisecond))
}

// unreachable records that the source could not be read.
func (y *Syncer) unreachable(st *SourceStatus, err error) {
	st.State, st.Message = SourceUnreachable, err.Error()
	y.metrics.applies.WithLabelValues(st.Name, "unreachable").Inc()
	y.metrics.lastSuccess.WithLabelValues(st.Name).Set(0)
	y.log.Error("source unreachable; the last good revision stays applied", "err", err, "applied", y.applied)
}

// validate loads the revision and records its problems; ok is false
// when it has errors and is rejected whole.
func (y *Syncer) validate(st *SourceStatus, rev Revision) (*spec.Result, bool) {
	m := y.metrics
	res := y.loader.Load(rev.FS)
	if st.ObservedRevision == "" {
		st.ObservedRevision = res.Digest
	}
	st.Errors, st.Warnings = res.Problems.Errors(), len(res.Problems)-res.Problems.Errors()
	st.Problems = res.Problems[:min(len(res.Problems), maxProblems)]
	m.problems.WithLabelValues(st.Name, "error").Set(float64(st.Errors))
	m.problems.WithLabelValues(st.Name, "warning").Set(float64(st.Warnings))
	if st.Errors == 0 {
		return res, true
	}
	st.State = SourceInvalid
	st.Message = fmt.Sprintf("revision %s rejected: %d errors; %s stays applied", ShortRevision(st.ObservedRevision), st.Errors, orNone(ShortRevision(y.applied)))
	m.applies.WithLabelValues(st.Name, "invalid").Inc()
	m.lastSuccess.WithLabelValues(st.Name).Set(0)
	first := make([]string, 0, 5)
	for _, p := range res.Problems {
		if p.Severity == spec.Error && len(first) < 5 {
			first = append(first, p.String())
		}
	}
	y.log.Error("invalid revision rejected; the last good revision stays applied",
		"revision", st.ObservedRevision, "errors", st.Errors, "first", first)
	return res, false
}

// apply stores the revision, retrying with backoff while retrying can
// help; ok is false when it gave up or ctx ended.
func (y *Syncer) apply(ctx context.Context, st *SourceStatus, inv *spec.Inventory, meta ApplyMeta) (ApplyResult, bool) {
	m := y.metrics
	for attempt := 0; ; attempt++ {
		ar, err := y.store.Apply(ctx, inv, meta)
		m.requests.WithLabelValues(st.Name).Add(float64(ar.Requests))
		if err == nil {
			return ar, true
		}
		if ctx.Err() != nil {
			return ar, false
		}
		st.State, st.Message = SourceFailed, err.Error()
		m.applies.WithLabelValues(st.Name, "failed").Inc()
		m.lastSuccess.WithLabelValues(st.Name).Set(0)
		if errors.Is(err, ErrTooLarge) {
			y.log.Error("revision can't be stored; the last good revision stays applied", "revision", meta.Revision, "err", err)
			return ar, false // retrying can't help; the next revision may
		}
		wait := backoff(attempt)
		y.log.Error("apply failed; retrying", "revision", meta.Revision, "err", err, "retry_in", wait)
		if !errors.Is(err, ErrConflict) {
			*st = y.writeStatus(ctx, *st)
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// recordApplied records an applied revision in the status and the
// metrics.
func (y *Syncer) recordApplied(st *SourceStatus, rev Revision, res *spec.Result, meta ApplyMeta, ar ApplyResult) {
	m := y.metrics
	st.State, st.Message = SourceApplied, rev.Note
	st.AppliedRevision, st.AppliedAt, st.Generation = meta.Revision, time.Now().UTC(), ar.Generation
	st.Objects = map[string]int{}
	for _, k := range spec.Kinds {
		st.Objects[k] = len(res.Inventory.OfKind(k))
		m.objects.WithLabelValues(k).Set(float64(st.Objects[k]))
	}
	m.lastSuccess.WithLabelValues(st.Name).Set(1)
	if ar.Unchanged {
		m.applies.WithLabelValues(st.Name, "unchanged").Inc()
	} else {
		m.applies.WithLabelValues(st.Name, "applied").Inc()
	}
	if y.applied != meta.Revision {
		m.revision.DeletePartialMatch(prometheus.Labels{"source": st.Name})
		m.revision.WithLabelValues(st.Name, meta.Revision).Set(1)
	}
	y.applied = meta.Revision
	if len(ar.Unmanaged) > 0 {
		y.log.Warn("machines removed from the source are now unmanaged; nothing was powered off or wiped", "machines", ar.Unmanaged)
	}
}

// writeStatus records st, keeping the applied revision of the stored
// status when st has none, and returns what was recorded.
func (y *Syncer) writeStatus(ctx context.Context, st SourceStatus) SourceStatus {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := UpdateJSON(ctx, y.store, y.store.keys.Source(st.Name), func(old *SourceStatus) error {
		if st.AppliedRevision == "" { // keep what was applied before
			st.AppliedRevision, st.AppliedAt, st.Generation, st.Objects = old.AppliedRevision, old.AppliedAt, old.Generation, old.Objects
		}
		*old = st
		return nil
	})
	if err != nil {
		y.log.Warn("could not record source status", "err", err)
	}
	return st
}

// backoff spaces apply retries: 1s doubling to 32s, jittered.
func backoff(attempt int) time.Duration {
	return retry.Policy{Base: time.Second, Max: 32 * time.Second}.Delay(attempt)
}

// ShortRevision abbreviates a commit SHA to 12 digits and a content digest
// to "sha256:" and 12 digits, for people to read.
func ShortRevision(rev string) string {
	if strings.HasPrefix(rev, "sha256:") && len(rev) > 19 {
		return rev[:19]
	}
	if len(rev) > 12 && !strings.HasPrefix(rev, "sha256:") {
		return rev[:12]
	}
	return rev
}

func orNone(s string) string {
	if s == "" {
		return "nothing"
	}
	return s
}
