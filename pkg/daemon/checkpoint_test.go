package daemon

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/backupd/backupd/pkg/dirfd"
	"github.com/backupd/backupd/pkg/storage"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// checkpoint runs a checkpoint to its end and returns its last state.
func (e *env) checkpoint(dir, owner, ws string, keep int32) *pb.Operation {
	e.t.Helper()
	resp, err := e.client.CheckpointWorkspace(context.Background(), &pb.CheckpointWorkspaceRequest{Owner: owner, Workspace: ws, Path: dir, Keep: keep})
	if err != nil {
		e.t.Fatal(err)
	}
	last := lastOf(e.watch(resp.Operation.Id, nil))
	if last.State != pb.OperationState_OPERATION_STATE_SUCCEEDED || !last.Result.GetCheckpoint() || last.Kind != pb.OperationKind_OPERATION_KIND_CHECKPOINT {
		e.t.Fatalf("checkpoint: %v", last)
	}
	return last
}

// snapshots lists a workspace's snapshots, newest first.
func (e *env) snapshots(owner, ws string) []*pb.Snapshot {
	e.t.Helper()
	list, err := e.client.ListSnapshots(context.Background(), &pb.ListSnapshotsRequest{Owner: owner, Workspace: ws})
	if err != nil {
		e.t.Fatal(err)
	}
	return list.Snapshots
}

// pastRacyWindow waits until every file under dir changed more than the
// backup's racy window (2s) ago: a backup trusts the metadata of a file
// only when its ctime is that long before its parent's start. This waits
// for the clock the code under test reads, not for another goroutine.
func pastRacyWindow(t *testing.T, dir string) {
	t.Helper()
	var newest time.Time
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil {
			st := fi.Sys().(*syscall.Stat_t)
			if c := time.Unix(st.Ctim.Sec, st.Ctim.Nsec); c.After(newest) {
				newest = c
			}
		}
		return nil
	})
	time.Sleep(time.Until(newest.Add(2*time.Second + 50*time.Millisecond)))
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestCheckpointIsTheStopBackupsParent: the backup after a checkpoint
// has it as its parent and reads only the file changed since.
func TestCheckpointIsTheStopBackupsParent(t *testing.T) {
	e := newEnv(t, nil)
	dir := e.workspace("ws1", 1, 1<<20, 2<<20) // 4 files
	pastRacyWindow(t, dir)
	cp := e.checkpoint(dir, "alice", "ws1", 0)
	if cp.Result.Files != 4 || cp.Result.UnchangedFiles != 0 {
		t.Fatalf("checkpoint result %v", cp.Result)
	}
	write(t, filepath.Join(dir, "data", "bloba"), randomBytes(9, 1<<20))
	stop := e.backup(dir, "alice", "ws1")
	if r := stop.Result; r.Checkpoint || r.Files != 4 || r.UnchangedFiles != 3 || r.NewBytes < 1<<20 || r.NewBytes > 1<<20+8<<10 {
		t.Fatalf("stop backup after the checkpoint: %v, want 3 of 4 files unchanged and 1 MiB new (and the trees)", r)
	}
	snaps := e.snapshots("alice", "ws1")
	if len(snaps) != 2 || snaps[0].Id != stop.Result.SnapshotId || snaps[0].ParentId != cp.Result.SnapshotId ||
		snaps[0].Checkpoint || !snaps[1].Checkpoint || snaps[1].Id != cp.Result.SnapshotId {
		t.Fatalf("snapshots %v: want the stop backup, child of the checkpoint %s", snaps, cp.Result.SnapshotId)
	}
	if v := metricValue(t, scrape(t, e.srv), `backupd_backup_uploaded_bytes_total{kind="checkpoint"}`); v < 3<<20 {
		t.Fatalf("checkpoint uploaded bytes %v, want at least 3 MiB", v)
	}
}

// TestStopAfterCheckpointResumesAppendedFile: a file appended to after a
// checkpoint is hashed through the chunks the checkpoint stored and cut
// only after them; the stop's result says how many bytes were resumed,
// and the snapshot restores byte for byte.
func TestStopAfterCheckpointResumesAppendedFile(t *testing.T) {
	e := newEnv(t, nil)
	dir := e.workspace("ws1", 21, 8<<20)
	log := filepath.Join(dir, "data", "bloba")
	old, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	cp := e.checkpoint(dir, "alice", "ws1", 0)
	if cp.Result.ResumedBytes != 0 {
		t.Fatalf("a first backup resumed %d bytes", cp.Result.ResumedBytes)
	}
	f, err := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(randomBytes(22, 1<<20)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	stop := e.backup(dir, "alice", "ws1")
	if r := stop.Result.ResumedBytes; r <= 0 || r >= int64(len(old)) {
		t.Fatalf("stop backup resumed %d bytes of the %d the checkpoint stored (result %v)", r, len(old), stop.Result)
	}
	e.restoreInto("alice", "ws1", "restored", dir)
}

// TestStopBackupCancelsCheckpoint: a backup of a workspace whose
// checkpoint is mid-way (held before its third pack, its first two
// stored) cancels it and finishes; the checkpoint writes no snapshot, and
// the backup stores again none of what those packs hold.
func TestStopBackupCancelsCheckpoint(t *testing.T) {
	held := make(chan struct{})
	var packs atomic.Int32
	// The third pack's turn can come while the second is still being
	// stored by the other uploader: the hold waits for two data packs in
	// the store, so that the stop cancels none of them.
	stored := &countPuts{two: make(chan struct{})}
	e := newEnvHooks(t, nil, hooks{
		wrapStorage: func(st storage.Storage) storage.Storage { stored.Storage = st; return stored },
		checkpointPack: func(ctx context.Context) error {
			if packs.Add(1) == 3 {
				select {
				case <-stored.two:
				case <-ctx.Done():
					return ctx.Err()
				}
				close(held)
				<-ctx.Done() // held until cancelled
				return ctx.Err()
			}
			return nil
		},
	})
	dir := e.workspace("ws1", 1, 40<<20)
	ctx := context.Background()
	cresp, err := e.client.CheckpointWorkspace(ctx, &pb.CheckpointWorkspaceRequest{Owner: "alice", Workspace: "ws1", Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-held:
	case <-time.After(2 * time.Minute):
		t.Fatal("the checkpoint never reached its third pack")
	}
	stop := e.backup(dir, "alice", "ws1")
	cp := lastOf(e.watch(cresp.Operation.Id, nil))
	if cp.State != pb.OperationState_OPERATION_STATE_CANCELLED || cp.Result != nil {
		t.Fatalf("checkpoint after the stop backup: %v, want cancelled", cp)
	}
	// The checkpoint stored its first two packs (aimed at 4 and 8 MiB,
	// but a pack is closed before a chunk, up to 8 MiB, would take it past
	// its aim: 8 MB in all was seen). The stop stores none of their bytes
	// again (alone, it stores all 40 MiB and its trees); the 64 KiB are
	// the packs' headers and the trees.
	reused := stored.bytes2.Load()
	if r := stop.Result; r.Files != 3 || r.NewBytes > int64(r.Bytes)-reused+64<<10 {
		t.Fatalf("stop backup %v: want at most %d new, the checkpoint's first packs (%d bytes) reused", r, int64(r.Bytes)-reused+64<<10, reused)
	}
	snaps := e.snapshots("alice", "ws1")
	if len(snaps) != 1 || snaps[0].Id != stop.Result.SnapshotId || snaps[0].Checkpoint {
		t.Fatalf("snapshots %v: want only the stop backup's", snaps)
	}
}

// countPuts is a Storage that closes two once two data packs are stored,
// and adds up their sizes in bytes2.
type countPuts struct {
	storage.Storage
	packs  atomic.Int32
	bytes2 atomic.Int64
	two    chan struct{}
}

func (c *countPuts) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	err := c.Storage.Put(ctx, key, body, size)
	if err != nil || !strings.Contains(key, "data/") {
		return err
	}
	if n := c.packs.Add(1); n <= 2 {
		c.bytes2.Add(size)
		if n == 2 {
			close(c.two)
		}
	}
	return err
}

// TestCheckpointRetention: keep=N leaves the newest N checkpoints and
// every other snapshot; a backup's retention counts no checkpoint.
func TestCheckpointRetention(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Retention.KeepLast = 2 })
	dir := e.workspace("ws1", 1, 1000)
	var backups []string
	for range 2 {
		backups = append(backups, e.backup(dir, "alice", "ws1").Result.SnapshotId)
	}
	var cps []string
	for i := range 4 {
		r := e.checkpoint(dir, "alice", "ws1", 2).Result
		if want := int64(min(i, 2) - min(i, 1)); i >= 2 && r.ForgottenSnapshots != 1 || i < 2 && r.ForgottenSnapshots != 0 {
			t.Fatalf("checkpoint %d forgot %d (%d)", i, r.ForgottenSnapshots, want)
		}
		cps = append(cps, r.SnapshotId)
	}
	// The backup's retention (keep_last 2) counts the 2 backups and
	// itself, not the checkpoints: it forgets the oldest backup only.
	b := e.backup(dir, "alice", "ws1").Result
	if b.ForgottenSnapshots != 1 {
		t.Fatalf("backup after checkpoints forgot %d, want 1", b.ForgottenSnapshots)
	}
	want := map[string]bool{b.SnapshotId: false, backups[1]: false, cps[2]: true, cps[3]: true}
	snaps := e.snapshots("alice", "ws1")
	if len(snaps) != len(want) {
		t.Fatalf("%d snapshots left, want %d: %v", len(snaps), len(want), snaps)
	}
	for _, s := range snaps {
		if cp, ok := want[s.Id]; !ok || cp != s.Checkpoint {
			t.Fatalf("snapshot %s (checkpoint %v) left; want %v", s.Id, s.Checkpoint, want)
		}
	}
}

// TestCheckpointAndBackupConflicts: a checkpoint is refused while a
// backup of its workspace is active; a backup cancels the workspace's
// checkpoint (on the same path) and waits for it.
func TestCheckpointAndBackupConflicts(t *testing.T) {
	m := newManager(zaptest.NewLogger(t), newMetrics(prometheus.NewRegistry()), Limits{Backups: 1, Restores: 1, Maintenance: 1, QueueTimeout: time.Minute}, time.Hour)
	running := make(chan struct{}, 1)
	release := make(chan struct{})
	hold := func(ctx context.Context, _ *operation) (*pb.OperationResult, error) {
		running <- struct{}{}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-release:
			return &pb.OperationResult{}, nil
		}
	}
	start := func(kind pb.OperationKind, ws string, run runFunc) (*operation, error) {
		key, req := "backup/o/"+ws, proto.Message(&pb.BackupWorkspaceRequest{Owner: "o", Workspace: ws})
		if kind == pb.OperationKind_OPERATION_KIND_CHECKPOINT {
			key, req = "checkpoint/o/"+ws, &pb.CheckpointWorkspaceRequest{Owner: "o", Workspace: ws}
		}
		op, _, err := m.start(opSpec{kind: kind, owner: "o", workspace: ws, path: "/w/" + ws, joinKey: key, req: req, run: run})
		return op, err
	}
	cp, err := start(pb.OperationKind_OPERATION_KIND_CHECKPOINT, "a", hold)
	if err != nil {
		t.Fatal(err)
	}
	<-running
	waited := make(chan []*operation, 1)
	b, err := start(pb.OperationKind_OPERATION_KIND_BACKUP, "a", func(ctx context.Context, op *operation) (*pb.OperationResult, error) {
		err := waitEnded(ctx, op.waitFor)
		waited <- op.waitFor
		if err != nil {
			return nil, err
		}
		return hold(ctx, op)
	})
	if err != nil {
		t.Fatalf("backup while the checkpoint runs: %v", err)
	}
	if w := <-waited; len(w) != 1 || w[0] != cp || !cp.finished() {
		t.Fatalf("the backup waited for %v, want the checkpoint %s ended", w, cp.id)
	}
	if st := cp.proto().State; st != pb.OperationState_OPERATION_STATE_CANCELLED {
		t.Fatalf("checkpoint %v, want cancelled", st)
	}
	<-running // the backup runs
	_, err = start(pb.OperationKind_OPERATION_KIND_CHECKPOINT, "a", hold)
	if ce := (*conflictError)(nil); !errors.As(err, &ce) || codes.Code(grpcCode(err)) != codes.FailedPrecondition || !strings.Contains(err.Error(), b.id) {
		t.Fatalf("checkpoint while a backup runs: %v, want FAILED_PRECONDITION naming %s", err, b.id)
	}
	// Another workspace's checkpoint is not refused.
	other, err := start(pb.OperationKind_OPERATION_KIND_CHECKPOINT, "b", func(context.Context, *operation) (*pb.OperationResult, error) {
		return &pb.OperationResult{}, nil
	})
	if err != nil {
		t.Fatalf("checkpoint of another workspace: %v", err)
	}
	<-other.done
	close(release)
	<-b.done
}

// TestCheckpointThrottle: the checkpoints' budget makes a pack wait for
// its bytes (at least, whatever the machine's load), in bursts within the
// limiter's, and a cancelled context stops the wait.
func TestCheckpointThrottle(t *testing.T) {
	s := &Server{checkpointRate: rate.NewLimiter(1<<20, 256<<10)}
	start := time.Now()
	if err := s.checkpointThrottle(context.Background(), 1<<20); err != nil {
		t.Fatal(err)
	}
	// The bucket starts full (256 KiB): the other 768 KiB take 0.75s.
	if d := time.Since(start); d < 700*time.Millisecond {
		t.Fatalf("1 MiB at 1 MiB/s paid in %v", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.checkpointThrottle(ctx, 1<<20); err == nil {
		t.Fatal("a cancelled throttle succeeded")
	}
	if err := (&Server{}).checkpointThrottle(ctx, 1<<30); err != nil {
		t.Fatalf("no budget: %v", err)
	}
}

// TestCheckpointYieldsToOthersDiskIO: while another process writes the
// disk that the workspace and the local store are on (dd, each block
// synced), a checkpoint holds its packs back (checkpoint.disk_wait, the
// time in backupd_checkpoint_disk_wait_seconds_total) and still finishes;
// with disk_wait negative it never waits.
func TestCheckpointYieldsToOthersDiskIO(t *testing.T) {
	for _, c := range []struct {
		wait time.Duration
		held bool
	}{{200 * time.Millisecond, true}, {-1, false}} {
		t.Run(c.wait.String(), func(t *testing.T) {
			e := newEnv(t, func(cfg *Config) { cfg.Checkpoint.DiskWait = c.wait })
			dir := e.workspace("ws", 9, 20<<20, 20<<20, 20<<20) // 4 packs or so
			var devs []string
			if c.held {
				if devs = e.srv.checkpointGate(mustOpenDir(t, dir)).Devices(); len(devs) == 0 {
					t.Fatalf("the test's temporary directories (%s) are on no block device: this test needs one", dir)
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			dd := exec.CommandContext(ctx, "dd", "if=/dev/zero", "of="+filepath.Join(t.TempDir(), "other"), "bs=4M", "count=4096", "oflag=dsync", "status=none")
			if err := dd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cancel(); dd.Wait() }()
			last := e.checkpoint(dir, "o", "ws", 0)
			held := metricValue(t, scrape(t, e.srv), "backupd_checkpoint_disk_wait_seconds_total")
			t.Logf("devices %v; checkpoint of %d bytes held back %.2fs", devs, last.Result.Bytes, held)
			if held > 0 != c.held {
				t.Errorf("disk_wait %v: held back %.2fs while dd wrote the disk", c.wait, held)
			}
		})
	}
}

func mustOpenDir(t *testing.T, path string) *dirfd.Dir {
	t.Helper()
	d, err := dirfd.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}
