package reconciler

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Group commit: workers hand their decisions to a few committers, which
// write as many as are waiting in one transaction (fenced once, each
// decision keeping its own compares). A batch whose compares fail is
// retried decision by decision, so one conflict costs only itself.
// Under load this turns thousands of small transactions into a few
// hundred, which is what lets one leader drive a large fleet.

// etcd refuses transactions of more than 128 compares or operations
// (its --max-txn-ops default).
const maxTxnOps = 128

// committers run in parallel, so that one slow transaction does not stop
// the others.
const committers = 4

type write struct {
	cmps []clientv3.Cmp
	ops  []clientv3.Op
	done chan writeResult
}

type writeResult struct {
	rev       int64 // revision of the write
	conflict  bool  // one of the decision's compares failed
	notLeader bool
	err       error
}

// commit hands a decision's writes to the committers and waits.
func (c *controller) commit(ctx context.Context, cmps []clientv3.Cmp, ops []clientv3.Op) writeResult {
	w := write{cmps: cmps, ops: ops, done: make(chan writeResult, 1)}
	select {
	case c.writes <- w:
	case <-ctx.Done():
		return writeResult{err: ctx.Err()}
	}
	select {
	case r := <-w.done:
		return r
	case <-ctx.Done():
		return writeResult{err: ctx.Err()}
	}
}

// committer writes batches until ctx ends.
func (c *controller) committer(ctx context.Context) error {
	for {
		var batch []write
		select {
		case <-ctx.Done():
			return nil
		case w := <-c.writes:
			batch = append(batch, w)
		}
		nc, no := 1+len(batch[0].cmps), len(batch[0].ops)
	fill:
		for {
			select {
			case w := <-c.writes:
				if nc+len(w.cmps) > maxTxnOps || no+len(w.ops) > maxTxnOps {
					c.flush(ctx, batch)
					batch, nc, no = nil, 1, 0
				}
				batch = append(batch, w)
				nc, no = nc+len(w.cmps), no+len(w.ops)
			default:
				break fill
			}
		}
		c.flush(ctx, batch)
	}
}

// flush writes a batch in one transaction, or one by one if that fails.
func (c *controller) flush(ctx context.Context, batch []write) {
	if len(batch) == 0 {
		return
	}
	if len(batch) > 1 {
		cmps := []clientv3.Cmp{c.fence.Held()}
		var ops []clientv3.Op
		for _, w := range batch {
			cmps = append(cmps, w.cmps...)
			ops = append(ops, w.ops...)
		}
		resp, err := c.store.Client().Txn(ctx).If(cmps...).Then(ops...).Commit()
		c.r.metrics.batch.Observe(float64(len(batch)))
		if err == nil && resp.Succeeded {
			for _, w := range batch {
				w.done <- writeResult{rev: resp.Header.Revision}
			}
			return
		}
		if err != nil && ctx.Err() != nil {
			for _, w := range batch {
				w.done <- writeResult{err: err}
			}
			return
		}
		// Find out whose compare failed: each on its own.
	}
	for _, w := range batch {
		w.done <- c.writeOne(ctx, w)
	}
}

func (c *controller) writeOne(ctx context.Context, w write) writeResult {
	cmps := append([]clientv3.Cmp{c.fence.Held()}, w.cmps...)
	resp, err := c.store.Client().Txn(ctx).If(cmps...).Then(w.ops...).Else(clientv3.OpGet(c.fence.Key)).Commit()
	c.r.metrics.batch.Observe(1)
	if err != nil {
		return writeResult{err: fmt.Errorf("write: %w", err)}
	}
	if !resp.Succeeded {
		if !c.fence.HeldIn(resp.Responses[0].GetResponseRange()) {
			return writeResult{notLeader: true}
		}
		return writeResult{conflict: true}
	}
	return writeResult{rev: resp.Header.Revision}
}
