package inventory

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory/etcdtest"
)

// DHCP, TFTP and HTTP events arrive in batches that interleave; the
// timeline is kept in time order (stable for equal times), and the cut to
// TimelineLimit drops the oldest, not the last written.
func TestAppendTimelineKeepsTimeOrder(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	st := NewStore(cli, "", quiet())
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s int, typ string) TimelineEvent {
		return TimelineEvent{Time: t0.Add(time.Duration(s) * time.Second), Type: typ}
	}

	// HTTP's batch (later events) is written before DHCP's (earlier ones).
	if err := st.AppendTimeline(ctx, "r1", "m1", 0, at(5, "http"), at(7, "http")); err != nil {
		t.Fatal(err)
	}
	if err := st.AppendTimeline(ctx, "r1", "m1", 0, at(1, "dhcp-discover"), at(1, "dhcp-offer"), at(6, "tftp")); err != nil {
		t.Fatal(err)
	}
	got, err := GetJSON[Timeline](ctx, st, st.Keys().Timeline("r1", "m1"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"dhcp-discover", "dhcp-offer", "http", "tftp", "http"}
	if g := types(got.Events); fmt.Sprint(g) != fmt.Sprint(want) {
		t.Fatalf("timeline %v, want %v", g, want)
	}

	// A full timeline then gets an old event: it is the one cut.
	var many []TimelineEvent
	for i := range TimelineLimit {
		many = append(many, at(100+i, fmt.Sprint("e", i)))
	}
	if err := st.AppendTimeline(ctx, "r1", "m2", 0, many...); err != nil {
		t.Fatal(err)
	}
	if err := st.AppendTimeline(ctx, "r1", "m2", 0, at(0, "late-old")); err != nil {
		t.Fatal(err)
	}
	got, err = GetJSON[Timeline](ctx, st, st.Keys().Timeline("r1", "m2"))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(got.Events); n != TimelineLimit || got.Events[0].Type != "e0" || got.Events[n-1].Type != fmt.Sprint("e", TimelineLimit-1) {
		t.Fatalf("after a late old event: %d events, first %q, last %q; want the old one dropped", n, got.Events[0].Type, got.Events[n-1].Type)
	}
}

func types(evs []TimelineEvent) []string {
	var s []string
	for _, e := range evs {
		s = append(s, e.Type)
	}
	return s
}
