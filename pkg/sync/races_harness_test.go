package sync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backupd/backupd/internal/testservers"
	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/mem"
	"github.com/backupd/backupd/pkg/storage/s3"
)

// The harness of the lifecycle race tests (races_test.go): each runs on
// mem storage and on a real MinIO; every "node" (a backup, a prune) opens
// the repository itself, through a gate that lets a test cut it off from
// some objects or pause it at one storage call.

// raceBackends runs fn on mem storage and on MinIO.
func raceBackends(t *testing.T, fn func(t *testing.T, root storage.Storage)) {
	t.Run("mem", func(t *testing.T) { fn(t, mem.New()) })
	t.Run("minio", func(t *testing.T) { fn(t, minioRoot(t)) })
}

func minioRoot(t testing.TB) storage.Storage {
	srv := testservers.MinIO(t)
	bucket := srv.NewBucket(t)
	st, err := s3.New(context.Background(), s3.Config{Bucket: bucket, Region: srv.Region, RegionEndpoint: srv.URL,
		AccessKey: srv.UserAccessKey, SecretKey: srv.UserSecretKey, RootDirectory: "races"})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// errCut is what a gate returns for a call it cuts off: transient, as a
// network partition's would be.
var errCut = storage.Transient(errors.New("cut off by the test"))

// gate wraps a node's storage: before each call, the function set with
// on decides (it may block, to pause the node at that call, or return an
// error, to cut it off).
type gate struct {
	storage.Storage
	fn atomic.Pointer[func(op, key string) error]
}

func newGate(st storage.Storage) *gate { return &gate{Storage: st} }

func (g *gate) on(fn func(op, key string) error) { g.fn.Store(&fn) }

func (g *gate) check(op, key string) error {
	if fn := g.fn.Load(); fn != nil && *fn != nil {
		return (*fn)(op, key)
	}
	return nil
}

func (g *gate) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if err := g.check("put", key); err != nil {
		return err
	}
	return g.Storage.Put(ctx, key, body, size)
}

func (g *gate) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if err := g.check("put", key); err != nil {
		return err
	}
	return g.Storage.PutIfAbsent(ctx, key, body, size)
}

func (g *gate) PutIfMatch(ctx context.Context, key string, body io.ReadSeeker, size int64, version string) (string, error) {
	if err := g.check("put", key); err != nil {
		return "", err
	}
	return g.Storage.PutIfMatch(ctx, key, body, size, version)
}

func (g *gate) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	if err := g.check("get", key); err != nil {
		return nil, err
	}
	return g.Storage.Get(ctx, key, off, n)
}

func (g *gate) GetWithInfo(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	if err := g.check("get", key); err != nil {
		return nil, storage.ObjectInfo{}, err
	}
	return g.Storage.GetWithInfo(ctx, key)
}

func (g *gate) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := g.check("stat", key); err != nil {
		return storage.ObjectInfo{}, err
	}
	return g.Storage.Stat(ctx, key)
}

func (g *gate) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if err := g.check("list", prefix); err != nil {
		return err
	}
	return g.Storage.List(ctx, prefix, fn)
}

func (g *gate) Delete(ctx context.Context, key string) error {
	if err := g.check("delete", key); err != nil {
		return err
	}
	return g.Storage.Delete(ctx, key)
}

// cutWrites returns a gate function failing every write whose key holds
// part (a node partitioned from its session or prune state: it cannot
// renew its lease).
func cutWrites(part string) func(op, key string) error {
	return func(op, key string) error {
		if op == "put" && strings.Contains(key, part) {
			return errCut
		}
		return nil
	}
}

// pause is a point where a test holds a backup or a prune: the paused
// side calls wait (from a hook), the test waits for reached, then
// releases it (optionally making the hook fail).
type pause struct {
	reached chan struct{}
	release chan error
	once    gosync.Once
}

func newPause() *pause { return &pause{reached: make(chan struct{}), release: make(chan error, 1)} }

// wait is called by the paused side; only the first call pauses.
func (p *pause) wait() error {
	first := false
	p.once.Do(func() { first = true })
	if !first {
		return nil
	}
	close(p.reached)
	return <-p.release
}

// await waits until the paused side is there.
func (p *pause) await(t testing.TB) {
	t.Helper()
	select {
	case <-p.reached:
	case <-time.After(30 * time.Second):
		t.Fatal("the paused side never got there")
	}
}

func (p *pause) go_(err error) { p.release <- err }

// async runs fn in a goroutine; the returned function waits for its
// result.
func async[T any](fn func() (T, error)) func() (T, error) {
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	go func() {
		v, err := fn()
		ch <- res{v, err}
	}()
	return func() (T, error) {
		select {
		case r := <-ch:
			return r.v, r.err
		case <-time.After(60 * time.Second):
			return *new(T), errors.New("timed out after 60 s")
		}
	}
}

// world is what a test expects the repository to hold: each committed
// snapshot with the contents it was taken of.
type world struct {
	t    *testing.T
	root storage.Storage
	mu   gosync.Mutex
	want map[chunk.ID]map[string]entry
	// leftovers: a backup failed after storing packs, which are in no
	// index object until the next prune (check warns of them).
	leftovers bool
}

func newWorld(t *testing.T, root storage.Storage) *world {
	return &world{t: t, root: root, want: map[chunk.ID]map[string]entry{}}
}

// backup backs src up as workspace ws from a node of its own (through g
// if not nil) and records the snapshot; it returns the backup's error.
func (w *world) backup(g *gate, src, ws string, opts BackupOptions) (*BackupResult, error) {
	st := storage.Storage(w.root)
	if g != nil {
		st = g
	}
	r := ownerRepo(w.t, st)
	contents := snapshotDir(w.t, src)
	opts.Owner, opts.Workspace = "owner1", ws
	res, err := Backup(context.Background(), r, src, opts)
	if err == nil {
		w.mu.Lock()
		w.want[res.SnapshotID] = contents
		w.mu.Unlock()
	}
	return res, err
}

func (w *world) mustBackup(src, ws string, opts BackupOptions) *BackupResult {
	w.t.Helper()
	res, err := w.backup(nil, src, ws, opts)
	must(w.t, err)
	return res
}

// forget deletes every snapshot of ws (their data goes at the next prune).
func (w *world) forget(ws string) {
	w.t.Helper()
	r := ownerRepo(w.t, w.root)
	refs, err := r.ListSnapshots(context.Background(), ws)
	must(w.t, err)
	_, err = r.DeleteWorkspace(context.Background(), ws)
	must(w.t, err)
	w.mu.Lock()
	for _, ref := range refs {
		delete(w.want, ref.ID)
	}
	w.mu.Unlock()
}

// prune runs a prune from a node of its own (through g if not nil).
func prune(t testing.TB, root storage.Storage, g *gate, opts repo.PruneOptions) (*repo.PruneResult, error) {
	st := storage.Storage(root)
	if g != nil {
		st = g
	}
	if opts.Poll == 0 {
		opts.Poll = 10 * time.Millisecond
	}
	return ownerRepo2(t, st).Prune(context.Background(), opts)
}

func ownerRepo2(t testing.TB, st storage.Storage) *repo.Repository {
	t.Helper()
	return openRepo(t, st)
}

// verify: exactly the expected snapshots are there and each restores
// byte-identical, check --read-data is clean; then a final prune
// succeeds, after which all of that still holds, no session is left and
// no pack holds only blobs no snapshot reaches.
func (w *world) verify() {
	t := w.t
	t.Helper()
	w.restoreAll()
	if w.leftovers {
		checkLeftovers(t, w.root)
	} else {
		checkClean(t, w.root)
	}
	res, err := prune(t, w.root, nil, repo.PruneOptions{})
	must(t, err)
	t.Logf("final prune: condemned %d, packs deleted %d, repacked %d", res.CondemnedBlobs, res.PacksDeleted, res.PacksRepacked)
	w.restoreAll()
	checkClean(t, w.root)
	if _, n := storedBytes(t, w.root, "owner1/sessions/"); n != 0 {
		t.Errorf("%d session objects left", n)
	}
	if un := unreferencedPacks(t, w.root); len(un) > 0 {
		t.Errorf("after the final prune, %d packs hold nothing a snapshot reaches: %v", len(un), un)
	}
}

func (w *world) restoreAll() {
	t := w.t
	t.Helper()
	ctx := context.Background()
	r := ownerRepo(t, w.root)
	refs, err := r.ListSnapshots(ctx, "")
	must(t, err)
	got := map[chunk.ID]bool{}
	for _, ref := range refs {
		got[ref.ID] = true
		want, ok := w.want[ref.ID]
		if !ok {
			t.Errorf("snapshot %s is there; no backup committed it", ref.Key)
			continue
		}
		snap, err := r.LoadSnapshot(ctx, ref)
		must(t, err)
		dst := filepath.Join(t.TempDir(), "r")
		if _, err := Restore(ctx, r, snap, dst, RestoreOptions{}); err != nil {
			t.Errorf("restore %s: %v", ref.Key, err)
			continue
		}
		compareDirs(t, want, snapshotDir(t, dst))
	}
	for id := range w.want {
		if !got[id] {
			t.Errorf("snapshot %s committed, not there", id.Short())
		}
	}
}

// unreferencedPacks returns the packs in storage none of whose blobs a
// snapshot reaches.
func unreferencedPacks(t testing.TB, root storage.Storage) []string {
	t.Helper()
	ctx := context.Background()
	r := openRepo(t, root)
	refs, err := r.ListSnapshots(ctx, "")
	must(t, err)
	seen := map[chunk.ID]bool{}
	var walk func(id chunk.ID)
	walk = func(id chunk.ID) {
		if seen[id] {
			return
		}
		seen[id] = true
		tr, err := r.LoadTree(ctx, id)
		must(t, err)
		for _, n := range tr.Nodes {
			switch n.Type {
			case repo.TypeDir:
				walk(n.Subtree)
			case repo.TypeFile:
				for _, b := range n.Content {
					seen[b] = true
				}
			}
		}
	}
	for _, ref := range refs {
		s, err := r.LoadSnapshot(ctx, ref)
		must(t, err)
		walk(s.Tree)
	}
	var out []string
	packs := r.Index().Packs()
	must(t, root.List(ctx, "owner1/data/", func(oi storage.ObjectInfo) error {
		id, err := chunk.ParseID(oi.Key[strings.LastIndexByte(oi.Key, '/')+1:])
		if err != nil {
			return fmt.Errorf("pack key %s: %w", oi.Key, err)
		}
		used := false
		for _, e := range packs[id] {
			used = used || seen[e.ID]
		}
		if !used {
			out = append(out, oi.Key)
		}
		return nil
	}))
	return out
}

// makeSource writes n files of seed into dir (old mtimes, so that a
// later backup trusts their metadata once racyWindow is 0).
func makeSource(t testing.TB, dir string, seed uint64, n int) {
	t.Helper()
	for i := range n {
		writeFile(t, filepath.Join(dir, fmt.Sprintf("d%d", i%3), fmt.Sprintf("f%02d", i)), genData(seed*1000+uint64(i), 3000+int(seed%7)*1000+i*500), 0o644, time.Unix(1e9, 0))
	}
}

// trustMetadata makes backups trust a parent's metadata at once.
func trustMetadata(t *testing.T) {
	old := racyWindow
	racyWindow = 0
	t.Cleanup(func() { racyWindow = old })
}

// checkLeftovers is checkClean allowing warnings of packs in no index
// object (what a failed backup stored).
func checkLeftovers(t *testing.T, root storage.Storage) {
	t.Helper()
	res, err := ownerRepo(t, root).Check(context.Background(), true)
	must(t, err)
	for _, w := range res.Warnings {
		if !strings.Contains(w, "is in no readable index object") {
			t.Errorf("check --read-data: warning %q", w)
		}
	}
	if len(res.Problems) != 0 {
		t.Fatalf("check --read-data: problems %q", res.Problems)
	}
}

// coarseClock wraps a storage to give every object written through it
// the modification time of a test-controlled clock, truncated to whole
// seconds as S3's Last-Modified is.
type coarseClock struct {
	storage.Storage
	mu   gosync.Mutex
	now  time.Time
	mods map[string]time.Time
}

func newCoarseClock(st storage.Storage, now time.Time) *coarseClock {
	return &coarseClock{Storage: st, now: now, mods: map[string]time.Time{}}
}

func (c *coarseClock) set(now time.Time) {
	c.mu.Lock()
	c.now = now
	c.mu.Unlock()
}

func (c *coarseClock) wrote(key string, err error) error {
	if err == nil {
		c.mu.Lock()
		c.mods[key] = c.now.Truncate(time.Second)
		c.mu.Unlock()
	}
	return err
}

func (c *coarseClock) info(oi storage.ObjectInfo) storage.ObjectInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.mods[oi.Key]; ok {
		oi.ModTime = t
	}
	return oi
}

func (c *coarseClock) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	return c.wrote(key, c.Storage.Put(ctx, key, body, size))
}

func (c *coarseClock) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	return c.wrote(key, c.Storage.PutIfAbsent(ctx, key, body, size))
}

func (c *coarseClock) PutIfMatch(ctx context.Context, key string, body io.ReadSeeker, size int64, version string) (string, error) {
	v, err := c.Storage.PutIfMatch(ctx, key, body, size, version)
	return v, c.wrote(key, err)
}

func (c *coarseClock) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	oi, err := c.Storage.Stat(ctx, key)
	return c.info(oi), err
}

func (c *coarseClock) GetWithInfo(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	rc, oi, err := c.Storage.GetWithInfo(ctx, key)
	return rc, c.info(oi), err
}

func (c *coarseClock) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	return c.Storage.List(ctx, prefix, func(oi storage.ObjectInfo) error { return fn(c.info(oi)) })
}
