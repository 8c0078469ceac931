package daemon

import (
	"context"
	"errors"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// maintainer is the periodic maintenance (Config.Maintenance): it keeps
// the owners whose snapshots this node forgot, or whose workspaces it
// deleted, since their last successful prune here, and prunes them one
// after another at every pass, each as a prune operation under the node's
// limits.
type maintainer struct {
	s   *Server
	cfg Maintenance

	// wait returns a channel that delivers once the next pass is due, d
	// from now (time.After; tests inject their trigger). jitter is a
	// random delay of at most max. passed, if set, receives every pass's
	// report (tests).
	wait   func(d time.Duration) <-chan time.Time
	jitter func(max time.Duration) time.Duration
	passed func(maintenancePass)

	mu      sync.Mutex
	pending map[string]uint64 // owner -> the mark that made it pending
	marks   uint64            // the last mark given out

	stop context.CancelFunc
	done chan struct{}
}

// maintenancePass is what one pass did: the owners it pruned (their
// prune operations succeeded), those whose prune failed, with the
// operation ids.
type maintenancePass struct {
	Pruned     []string
	Failed     []string
	Operations []string
}

func newMaintainer(s *Server, cfg Maintenance, h *hooks) *maintainer {
	m := &maintainer{s: s, cfg: cfg, pending: map[string]uint64{}, wait: time.After,
		jitter: func(max time.Duration) time.Duration {
			if max <= 0 {
				return 0
			}
			return rand.N(max + 1)
		}}
	if h != nil {
		if h.maintenanceWait != nil {
			m.wait = h.maintenanceWait
		}
		m.passed = h.maintenancePassed
	}
	return m
}

// mark records that owner has something for a prune to free. It does
// nothing while maintenance is off (nothing would ever clear the mark).
func (m *maintainer) mark(owner string) {
	if !m.cfg.Enabled() {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.marks++
	m.pending[owner] = m.marks
	m.s.metrics.pendingPrunes.Set(float64(len(m.pending)))
}

// seen returns the last mark given out, to be handed to pruned once a
// prune that starts after this call has succeeded.
func (m *maintainer) seen() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.marks
}

// pruned clears owner's mark if no mark came after seen: what was marked
// before a prune started is what that prune frees.
func (m *maintainer) pruned(owner string, seen uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mk, ok := m.pending[owner]; ok && mk <= seen {
		delete(m.pending, owner)
	}
	m.s.metrics.pendingPrunes.Set(float64(len(m.pending)))
}

// drop forgets owner (its repository is gone).
func (m *maintainer) drop(owner string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.pending, owner)
	m.s.metrics.pendingPrunes.Set(float64(len(m.pending)))
}

// start runs the passes until close; nothing when maintenance is off.
func (m *maintainer) start() {
	m.done = make(chan struct{})
	if !m.cfg.Enabled() {
		close(m.done)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.stop = cancel
	go func() {
		defer close(m.done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-m.wait(m.cfg.Interval + m.jitter(m.cfg.Jitter)):
			}
			p := m.pass(ctx)
			if m.passed != nil {
				m.passed(p)
			}
		}
	}()
}

// close stops the passes and waits for the loop to return; a prune it
// started goes on as any operation does until the shutdown ends it.
func (m *maintainer) close() {
	if m.stop != nil {
		m.stop()
	}
	<-m.done
}

// pass prunes the pending owners, those marked first first, one at a
// time.
func (m *maintainer) pass(ctx context.Context) maintenancePass {
	m.mu.Lock()
	owners := make([]string, 0, len(m.pending))
	for o := range m.pending {
		owners = append(owners, o)
	}
	sort.Slice(owners, func(i, j int) bool { return m.pending[owners[i]] < m.pending[owners[j]] })
	m.mu.Unlock()
	var p maintenancePass
	log := m.s.log
	for _, owner := range owners {
		if ctx.Err() != nil {
			break
		}
		// The request an operator would send (max_unused is the daemon's
		// default), so that the pass joins an identical prune under way.
		op, _, err := m.s.startPrune(&pb.PruneRepositoryRequest{Owner: owner})
		if errors.Is(err, errDraining) {
			break
		}
		if err != nil {
			// A prune of the owner with other parameters, or a delete of
			// it, is under way: the owner stays pending if it must.
			log.Info("maintenance: owner not pruned in this pass", zap.String("owner", owner), zap.String("error", truncate(err.Error())))
			p.Failed = append(p.Failed, owner)
			continue
		}
		p.Operations = append(p.Operations, op.id)
		select {
		case <-op.done:
		case <-ctx.Done():
			return p
		}
		if op.proto().State == pb.OperationState_OPERATION_STATE_SUCCEEDED {
			p.Pruned = append(p.Pruned, owner)
		} else {
			p.Failed = append(p.Failed, owner)
		}
	}
	if len(owners) > 0 {
		log.Info("maintenance pass done", zap.Strings("pruned", p.Pruned), zap.Strings("not_pruned", p.Failed))
	}
	return p
}
