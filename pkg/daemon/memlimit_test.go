package daemon

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// recorder is a stand-in for debug.SetMemoryLimit that records the limits
// it is given.
type recorder struct {
	mu   sync.Mutex
	sets []int64
}

func (r *recorder) set(n int64) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sets = append(r.sets, n)
	return 0
}

func (r *recorder) got() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.sets)
}

// TestMemoryLimitFollowsOperations: the base while at most one operation
// runs, the per-operation bytes more for each further one, never above the
// max, and back down as they end; none at all with soft_memory_bytes -1,
// and a fixed base with soft_memory_per_operation_bytes -1.
func TestMemoryLimitFollowsOperations(t *testing.T) {
	const mib = 1 << 20
	var r recorder
	m := newMemoryLimit(Limits{SoftMemoryBytes: 100 * mib, SoftMemoryPerOperationBytes: 40 * mib, SoftMemoryMaxBytes: 190 * mib}, r.set)
	for range 4 {
		m.add(1)
	}
	for range 4 {
		m.add(-1)
	}
	want := []int64{100 * mib, 100 * mib, 140 * mib, 180 * mib, 190 * mib, 180 * mib, 140 * mib, 100 * mib, 100 * mib}
	if got := r.got(); !slices.Equal(got, want) {
		t.Fatalf("limits set %v MiB, want %v MiB", div(got, mib), div(want, mib))
	}

	if m := newMemoryLimit(Limits{SoftMemoryBytes: -1, SoftMemoryPerOperationBytes: 40 * mib, SoftMemoryMaxBytes: 190 * mib}, func(int64) int64 {
		t.Fatal("set with soft_memory_bytes -1")
		return 0
	}); m != nil {
		t.Fatal("a limit kept with soft_memory_bytes -1")
	}
	var nilLimit *memoryLimit
	nilLimit.add(1) // what the manager does when the limit is not the daemon's

	var fixed recorder
	m = newMemoryLimit(Limits{SoftMemoryBytes: 100 * mib, SoftMemoryPerOperationBytes: -1, SoftMemoryMaxBytes: 190 * mib}, fixed.set)
	m.add(1)
	m.add(1)
	m.add(-1)
	if got := fixed.got(); !slices.Equal(got, []int64{100 * mib, 100 * mib, 100 * mib, 100 * mib}) {
		t.Fatalf("with no per-operation bytes: %v MiB, want 100 each time", div(got, mib))
	}

	// A per-operation figure whose sum would overflow stops at the max.
	var huge recorder
	m = newMemoryLimit(Limits{SoftMemoryBytes: 100 * mib, SoftMemoryPerOperationBytes: 1 << 62, SoftMemoryMaxBytes: 190 * mib}, huge.set)
	for range 4 {
		m.add(1)
	}
	if got := huge.got(); got[len(got)-1] != 190*mib {
		t.Fatalf("with a huge per-operation figure: %v MiB, want the max last", div(got, mib))
	}
}

func div(s []int64, d int64) []int64 {
	out := make([]int64, len(s))
	for i, v := range s {
		out[i] = v / d
	}
	return out
}

// TestServerRaisesMemoryLimitWhileTwoRun: through the daemon, a backup
// that runs while another workspace's checkpoint is held raises the soft
// limit by the per-operation bytes for as long as it runs; when it and the
// checkpoint have ended the limit is the base again.
func TestServerRaisesMemoryLimitWhileTwoRun(t *testing.T) {
	const mib = 1 << 20
	held, release := make(chan struct{}), make(chan struct{})
	var packs atomic.Int32
	e := newEnvHooks(t, func(c *Config) {
		c.Limits.SoftMemoryBytes, c.Limits.SoftMemoryPerOperationBytes, c.Limits.SoftMemoryMaxBytes = 200*mib, 150*mib, 1000*mib
	}, hooks{checkpointPack: func(ctx context.Context) error {
		if packs.Add(1) == 1 {
			close(held)
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}})
	var r recorder
	e.srv.ManageMemoryLimit(r.set)
	a := e.workspace("wsa", 1, 8<<20)
	b := e.workspace("wsb", 2, 1<<20)

	cresp, err := e.client.CheckpointWorkspace(context.Background(), &pb.CheckpointWorkspaceRequest{Owner: "alice", Workspace: "wsa", Path: a})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-held:
	case <-time.After(2 * time.Minute):
		t.Fatal("the checkpoint never reached its first pack")
	}
	if got := r.got(); !slices.Equal(got, []int64{200 * mib, 200 * mib}) {
		t.Fatalf("limits with the checkpoint running: %v MiB, want 200, 200", div(got, mib))
	}
	e.backup(b, "bob", "wsb")
	if got := r.got(); !slices.Equal(got, []int64{200 * mib, 200 * mib, 350 * mib, 200 * mib}) {
		t.Fatalf("limits after a backup beside the checkpoint: %v MiB, want 200, 200, 350, 200", div(got, mib))
	}
	close(release)
	if cp := lastOf(e.watch(cresp.Operation.Id, nil)); cp.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		t.Fatalf("checkpoint: %v %s", cp.State, cp.ErrorMessage)
	}
	// The checkpoint's end is published after its limit is set back.
	if got := r.got(); !slices.Equal(got, []int64{200 * mib, 200 * mib, 350 * mib, 200 * mib, 200 * mib}) {
		t.Fatalf("limits after both: %v MiB, want 200, 200, 350, 200, 200", div(got, mib))
	}
}
