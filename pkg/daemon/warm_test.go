package daemon

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/local"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// callRecorder records the reads and listings that reach the daemon's
// storage (inside its metering: every call the metered storage counts),
// by key.
type callRecorder struct {
	storage.Storage
	mu    sync.Mutex
	calls []string // "get KEY", "list PREFIX"
}

func (c *callRecorder) record(op, key string) {
	c.mu.Lock()
	c.calls = append(c.calls, op+" "+key)
	c.mu.Unlock()
}

func (c *callRecorder) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	c.record("get", key)
	return c.Storage.Get(ctx, key, off, n)
}

func (c *callRecorder) GetWithInfo(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	c.record("get", key)
	return c.Storage.GetWithInfo(ctx, key)
}

func (c *callRecorder) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	c.record("list", prefix)
	return c.Storage.List(ctx, prefix, fn)
}

// take returns the calls recorded since the last take that contain sub.
func (c *callRecorder) take(sub string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, k := range c.calls {
		if strings.Contains(k, sub) {
			out = append(out, k)
		}
	}
	c.calls = nil
	return out
}

// recordedEnv is a daemon whose storage calls rec records, without the
// node-local cache (which would hide index reads from the storage).
func recordedEnv(t *testing.T, mutate func(*Config)) (*env, *callRecorder) {
	rec := &callRecorder{}
	e := newEnvHooks(t, func(c *Config) {
		c.CacheDir = "none"
		if mutate != nil {
			mutate(c)
		}
	}, hooks{wrapStorage: func(st storage.Storage) storage.Storage { rec.Storage = st; return rec }})
	return e, rec
}

// addIndexObject stores, as another node's backup would, a pack of one
// blob and an index object naming it in owner's repository, and returns
// the index object's key under the store.
func (e *env) addIndexObject(owner, content string) string {
	e.t.Helper()
	ctx := context.Background()
	st, err := local.New(filepath.Join(e.store, owner))
	if err != nil {
		e.t.Fatal(err)
	}
	r, err := repo.Load(ctx, st, false)
	if err != nil {
		e.t.Fatal(err)
	}
	raw := []byte(content)
	pk := repo.NewPackBuilder(1 << 10)
	pk.Add(chunk.Hash(raw), repo.DataBlob, chunk.Raw, raw, len(raw))
	data, id, entries := pk.Finish()
	if err := r.SavePack(ctx, data, id, entries); err != nil {
		e.t.Fatal(err)
	}
	ids, err := r.SaveIndex(ctx, []repo.PackIndex{{Pack: id, Blobs: entries}})
	if err != nil || len(ids) != 1 {
		e.t.Fatal(ids, err)
	}
	return owner + "/index/" + ids[0].String()
}

// TestWarmRepositoryReadsOnlyNewIndexObjects: the daemon keeps an owner's
// repository open, so that its next backup reads no index object it has
// already read (nor its own), and reads the one another writer added;
// listing and deleting snapshots read no index object at all.
func TestWarmRepositoryReadsOnlyNewIndexObjects(t *testing.T) {
	e, rec := recordedEnv(t, nil)
	ctx := context.Background()
	src := e.workspace("ws", 1, 300<<10, 100)
	e.backup(src, "alice", "ws")
	if got := rec.take("alice/index/"); len(got) == 0 || !strings.HasPrefix(got[0], "list") {
		t.Fatalf("first backup: index calls %v, want a listing", got)
	}

	write(t, filepath.Join(src, "new.txt"), []byte("changed"))
	e.backup(src, "alice", "ws")
	if got := rec.take("get alice/index/"); len(got) != 0 {
		t.Fatalf("second backup read index objects: %v", got)
	}

	other := e.addIndexObject("alice", "another node's blob")
	write(t, filepath.Join(src, "new.txt"), []byte("changed again"))
	e.backup(src, "alice", "ws")
	if got := rec.take("get alice/index/"); len(got) != 1 || got[0] != "get "+other {
		t.Fatalf("third backup read index objects %v, want only %s", got, other)
	}
	e.restoreInto("alice", "ws", "restored", src)
	if got := rec.take("get alice/index/"); len(got) != 0 {
		t.Fatalf("restore read index objects: %v", got)
	}
	text := scrape(t, e.srv)
	if full, refresh := metricValue(t, text, `backupd_index_loads_total{how="full"}`), metricValue(t, text, `backupd_index_loads_total{how="refresh"}`); full != 1 || refresh != 3 {
		t.Fatalf("index loads: %v full, %v refreshes; want 1 and 3", full, refresh)
	}

	list, err := e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "alice", Workspace: "ws"})
	if err != nil || len(list.Snapshots) != 3 {
		t.Fatalf("list: %v %v", list, err)
	}
	if _, err := e.client.DeleteSnapshot(ctx, &pb.DeleteSnapshotRequest{Owner: "alice", Workspace: "ws", SnapshotId: list.Snapshots[2].Id}); err != nil {
		t.Fatal(err)
	}
	if got := rec.take("/index/"); len(got) != 0 {
		t.Fatalf("list and delete touched the index: %v", got)
	}
}

// TestWarmRepositorySharedByConcurrentOperations: a backup and a restore
// of one owner at once share one open repository, loaded once, and both
// succeed (run with -race).
func TestWarmRepositorySharedByConcurrentOperations(t *testing.T) {
	// Restores slow enough to overlap the backup.
	e := newEnv(t, func(c *Config) { c.Limits.DownloadBytesPerSecond = 2 << 20 })
	ctx := context.Background()
	src1 := e.workspace("ws1", 1, 3<<20)
	src2 := e.workspace("ws2", 2, 1<<20, 1000)
	e.backup(src1, "alice", "ws1")

	for round, fresh := range []bool{false, true} {
		if fresh {
			e.srv.repos.drop("alice") // both operations find none open
		}
		write(t, filepath.Join(src2, fmt.Sprint("round", round)), []byte("x"))
		rr, err := e.client.RestoreWorkspace(ctx, &pb.RestoreWorkspaceRequest{Owner: "alice", Workspace: "ws1", Path: filepath.Join(e.root, fmt.Sprint("restored", round))})
		if err != nil {
			t.Fatal(err)
		}
		br, err := e.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: "alice", Workspace: "ws2", Path: src2})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var restore, backup *pb.Operation
		wg.Add(2)
		go func() { defer wg.Done(); restore = e.done(rr.Operation) }()
		go func() { defer wg.Done(); backup = e.done(br.Operation) }()
		wg.Wait()
		for _, op := range []*pb.Operation{restore, backup} {
			if op.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
				t.Fatalf("round %d: %v %v %s", round, op.Kind, op.State, op.ErrorMessage)
			}
		}
		if !restore.StartTime.AsTime().Before(backup.EndTime.AsTime()) || !backup.StartTime.AsTime().Before(restore.EndTime.AsTime()) {
			t.Logf("round %d: the operations did not overlap", round)
		}
		sameTree(t, src1, filepath.Join(e.root, fmt.Sprint("restored", round)))
	}
	text := scrape(t, e.srv)
	if full, refresh := metricValue(t, text, `backupd_index_loads_total{how="full"}`), metricValue(t, text, `backupd_index_loads_total{how="refresh"}`); full != 2 || refresh < 2 {
		t.Fatalf("index loads: %v full, %v refreshes; want 2 (the first backup's, one shared after the drop) and at least 2", full, refresh)
	}
	if n := metricValue(t, text, "backupd_open_repositories"); n != 1 {
		t.Fatalf("%v repositories open, want 1", n)
	}
	e.restoreInto("alice", "ws2", "restored-ws2", src2)
}

// TestWarmRepositoryEvictedUnderTinyBudget: with a budget no index fits
// in, every repository is closed once its operation ends, and every
// operation loads its own and is served correctly.
func TestWarmRepositoryEvictedUnderTinyBudget(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Limits.IndexMemory = 1 })
	owners := []string{"ann", "bob", "cyd"}
	srcs := map[string]string{}
	for i, o := range owners {
		srcs[o] = e.workspace("ws-"+o, uint64(i+1), 200<<10, 10)
	}
	ops := 0
	for round := range 2 {
		for _, o := range owners {
			write(t, filepath.Join(srcs[o], "round"), []byte(fmt.Sprint(round)))
			e.backup(srcs[o], o, "ws")
			e.restoreInto(o, "ws", fmt.Sprintf("restored-%s-%d", o, round), srcs[o])
			ops += 2
		}
	}
	text := scrape(t, e.srv)
	if full := metricValue(t, text, `backupd_index_loads_total{how="full"}`); int(full) != ops {
		t.Fatalf("%v full loads for %d operations", full, ops)
	}
	if n, ev := metricValue(t, text, "backupd_open_repositories"), metricValue(t, text, "backupd_open_repository_evictions_total"); n != 0 || int(ev) != ops {
		t.Fatalf("%v open, %v evicted after %d operations", n, ev, ops)
	}

	// A budget for about one: the least recently used goes first.
	c := newRepoCache(1, e.srv.metrics)
	ctx := context.Background()
	load := func(o string) *openRepo {
		en, _, err := c.acquire(ctx, repoKey{owner: o}, func(ctx context.Context) (*repo.Repository, error) {
			st, err := e.srv.place.Owner(ctx, o, false)
			if err != nil {
				return nil, err
			}
			return repo.Load(ctx, st, false)
		})
		if err != nil {
			t.Fatal(err)
		}
		return en
	}
	a := load("ann")
	c.budget = a.r.MemBytes() * 3 / 2 // ann fits; ann and bob do not
	b := load("bob")
	if len(c.entries) != 2 {
		t.Fatalf("%d entries while both are in use", len(c.entries))
	}
	c.release(a, false)
	c.release(b, false) // over the budget at ann's end: ann, idle, went
	if _, ok := c.entries[repoKey{owner: "ann"}]; ok || len(c.entries) != 1 {
		t.Fatalf("entries after both ended: %v", c.entries)
	}
}

// TestFailedBackupDropsTheRepository: after a failed backup the owner's
// repository is loaded anew (the backup may have stored packs that are in
// the open index but in no index object: a new load adopts them); after
// a failed restore, or a successful backup, it stays open.
func TestFailedBackupDropsTheRepository(t *testing.T) {
	e := newEnv(t, nil)
	src := e.workspace("ws", 1, 10)
	e.backup(src, "alice", "ws")
	ctx := context.Background()
	use := func(backup, failed bool) *repo.Repository {
		t.Helper()
		r, done, err := e.srv.useRepo(ctx, "alice", backup)
		if err != nil {
			t.Fatal(err)
		}
		done(failed)
		return r
	}
	r := use(true, false)
	if use(false, true) != r || use(true, false) != r {
		t.Fatal("the repository was not kept open")
	}
	if use(true, true) != r || use(false, false) == r {
		t.Fatal("the repository was kept open after a failed backup")
	}
}
