package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// env is a daemon serving on a real loopback listener, with a local store
// and one workspace root, and a real gRPC client.
type env struct {
	t      *testing.T
	srv    *Server
	client pb.BackupServiceClient
	conn   *grpc.ClientConn
	root   string // the workspace root
	store  string // the local store's directory
}

// testLogger logs warnings and errors through t.
func testLogger(t *testing.T) *zap.Logger {
	return zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
}

// logger makes the logger of the next newEnv.
var logger = testLogger

func newEnv(t *testing.T, mutate func(*Config)) *env {
	t.Helper()
	return newEnvHooks(t, mutate, hooks{})
}

// newEnvHooks is newEnv with the server's test hooks.
func newEnvHooks(t *testing.T, mutate func(*Config), h hooks) *env {
	t.Helper()
	e := &env{t: t, root: t.TempDir(), store: t.TempDir()}
	cfg := Config{
		Listen:         "127.0.0.1:0",
		WorkspaceRoots: []string{e.root},
		CacheDir:       t.TempDir(),
	}
	cfg.Storage.URL = "file://" + e.store
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := newServer(context.Background(), cfg, logger(t), h)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	lis, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	e.conn, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.conn.Close() })
	e.client = pb.NewBackupServiceClient(e.conn)
	return e
}

// workspace makes a directory under the root holding files of the given
// sizes (random, incompressible content) and a few small text files.
func (e *env) workspace(name string, seed uint64, sizes ...int) string {
	e.t.Helper()
	dir := filepath.Join(e.root, name)
	r := rand.New(rand.NewPCG(seed, 1))
	for i, n := range sizes {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		write(e.t, filepath.Join(dir, "data", "blob"+string(rune('a'+i))), b)
	}
	write(e.t, filepath.Join(dir, "src", "main.go"), []byte("package main\n\nfunc main() {}\n"))
	write(e.t, filepath.Join(dir, "README"), []byte(name))
	return dir
}

func write(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// watch follows an operation to its end and returns every state seen.
func (e *env) watch(id string, onUpdate func(*pb.Operation)) []*pb.Operation {
	e.t.Helper()
	stream, err := e.client.WatchOperation(context.Background(), &pb.WatchOperationRequest{OperationId: id, Interval: durationpb.New(100 * time.Millisecond)})
	if err != nil {
		e.t.Fatal(err)
	}
	var seen []*pb.Operation
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			e.t.Fatalf("watch %s: %v", id, err)
		}
		seen = append(seen, m.Operation)
		if onUpdate != nil {
			onUpdate(m.Operation)
		}
	}
	if len(seen) == 0 || !final(seen[len(seen)-1].State) {
		e.t.Fatalf("watch %s ended without a final state: %v", id, seen)
	}
	return seen
}

func final(s pb.OperationState) bool {
	return s == pb.OperationState_OPERATION_STATE_SUCCEEDED || s == pb.OperationState_OPERATION_STATE_FAILED || s == pb.OperationState_OPERATION_STATE_CANCELLED
}

func (e *env) backup(dir, owner, ws string) *pb.Operation {
	e.t.Helper()
	resp, err := e.client.BackupWorkspace(context.Background(), &pb.BackupWorkspaceRequest{Owner: owner, Workspace: ws, Path: dir})
	if err != nil {
		e.t.Fatal(err)
	}
	seen := e.watch(resp.Operation.Id, nil)
	last := seen[len(seen)-1]
	if last.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		e.t.Fatalf("backup: %v %s", last.State, last.ErrorMessage)
	}
	return last
}

// tree maps every path under dir to its type and content hash.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		v := d.Type().String()
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			v += string(sum[:8])
		}
		m[rel] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func sameTree(t *testing.T, want, got string) {
	t.Helper()
	a, b := tree(t, want), tree(t, got)
	if len(a) != len(b) {
		t.Fatalf("%s has %d entries, %s has %d", want, len(a), got, len(b))
	}
	for p, v := range a {
		if b[p] != v {
			t.Fatalf("%s differs after restore", p)
		}
	}
}

func TestBackupAndRestore(t *testing.T) {
	e := newEnv(t, nil)
	src := e.workspace("ws1", 1, 3<<20, 100)
	ctx := context.Background()

	resp, err := e.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: "alice", Workspace: "ws1", Path: src, Tags: map[string]string{"reason": "stop"}})
	if err != nil {
		t.Fatal(err)
	}
	op := resp.Operation
	if op.Id == "" || resp.Joined || op.Kind != pb.OperationKind_OPERATION_KIND_BACKUP || op.Path != src {
		t.Fatalf("start: %v", resp)
	}
	seen := e.watch(op.Id, nil)
	last := seen[len(seen)-1]
	if last.State != pb.OperationState_OPERATION_STATE_SUCCEEDED || last.Result.GetSnapshotId() == "" || last.Result.Files != 4 || last.Result.Bytes != 3<<20+100+int64(len("package main\n\nfunc main() {}\n")+len("ws1")) {
		t.Fatalf("backup ended %v", last)
	}
	if last.Progress.Phase != pb.OperationPhase_OPERATION_PHASE_DONE || last.EndTime == nil || last.StartTime == nil {
		t.Fatalf("final progress %v", last)
	}
	got, err := e.client.GetOperation(ctx, &pb.GetOperationRequest{OperationId: op.Id})
	if err != nil || got.Operation.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		t.Fatalf("get: %v %v", got, err)
	}

	list, err := e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "alice"})
	if err != nil || len(list.Snapshots) != 1 || list.Snapshots[0].Id != last.Result.SnapshotId || list.Snapshots[0].Tags["reason"] != "stop" || list.Snapshots[0].Path != src {
		t.Fatalf("list: %v %v", list, err)
	}

	dst := filepath.Join(e.root, "restored", "ws1")
	rresp, err := e.client.RestoreWorkspace(ctx, &pb.RestoreWorkspaceRequest{Owner: "alice", Workspace: "ws1", Path: dst})
	if err != nil {
		t.Fatal(err)
	}
	rseen := e.watch(rresp.Operation.Id, nil)
	rlast := rseen[len(rseen)-1]
	if rlast.State != pb.OperationState_OPERATION_STATE_SUCCEEDED || rlast.Result.SnapshotId != last.Result.SnapshotId || rlast.Result.Files != 4 {
		t.Fatalf("restore ended %v", rlast)
	}
	sameTree(t, src, dst)

	// Restoring again into the now non-empty directory needs overwrite.
	rresp, err = e.client.RestoreWorkspace(ctx, &pb.RestoreWorkspaceRequest{Owner: "alice", Workspace: "ws1", Path: dst})
	if err != nil {
		t.Fatal(err)
	}
	rlast = lastOf(e.watch(rresp.Operation.Id, nil))
	if rlast.State != pb.OperationState_OPERATION_STATE_FAILED || codes.Code(rlast.ErrorCode) != codes.FailedPrecondition {
		t.Fatalf("restore into a non-empty directory: %v", rlast)
	}
	rresp, err = e.client.RestoreWorkspace(ctx, &pb.RestoreWorkspaceRequest{Owner: "alice", Workspace: "ws1", Path: dst, Overwrite: true, Delete: true})
	if err != nil {
		t.Fatal(err)
	}
	if rlast = lastOf(e.watch(rresp.Operation.Id, nil)); rlast.Result.GetUnchangedFiles() != 4 || rlast.Result.NewBytes != 0 {
		t.Fatalf("restore over an identical directory: %v", rlast)
	}

	// Delete and check.
	chk, err := e.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: "alice", ReadData: true})
	if err != nil || !chk.Ok || chk.Snapshots != 1 || chk.PacksRead == 0 {
		t.Fatalf("check: %v %v", chk, err)
	}
	if _, err := e.client.DeleteSnapshot(ctx, &pb.DeleteSnapshotRequest{Owner: "alice", Workspace: "ws1", SnapshotId: last.Result.SnapshotId}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.DeleteSnapshot(ctx, &pb.DeleteSnapshotRequest{Owner: "alice", Workspace: "ws1", SnapshotId: last.Result.SnapshotId}); status.Code(err) != codes.NotFound {
		t.Fatalf("deleting twice: %v", err)
	}
	if list, _ = e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "alice"}); len(list.GetSnapshots()) != 0 {
		t.Fatalf("after delete: %v", list)
	}
}

func lastOf(ops []*pb.Operation) *pb.Operation { return ops[len(ops)-1] }

func TestListSnapshotsPages(t *testing.T) {
	e := newEnv(t, nil)
	src := e.workspace("ws", 2, 10)
	var ids []string
	for range 5 {
		ids = append(ids, e.backup(src, "bob", "ws").Result.SnapshotId)
	}
	var got []string
	token := ""
	pages := 0
	for {
		resp, err := e.client.ListSnapshots(context.Background(), &pb.ListSnapshotsRequest{Owner: "bob", Workspace: "ws", PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, s := range resp.Snapshots {
			got = append(got, s.Id)
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	// Newest first.
	want := []string{ids[4], ids[3], ids[2], ids[1], ids[0]}
	if pages != 3 || strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("%d pages: %v, want %v", pages, got, want)
	}
	resp, err := e.client.ListSnapshots(context.Background(), &pb.ListSnapshotsRequest{Owner: "nobody"})
	if err != nil || len(resp.Snapshots) != 0 {
		t.Fatalf("owner without a repository: %v %v", resp, err)
	}
}

// A workspace big enough, with uploads slow enough, that a backup is
// surely still running when the test acts on it: 8 MiB of incompressible
// data at 1 MiB/s takes at least 6 s whatever the machine.
func slowEnv(t *testing.T, mutate func(*Config)) *env {
	return newEnv(t, func(c *Config) {
		c.Limits.UploadBytesPerSecond = 1 << 20
		if mutate != nil {
			mutate(c)
		}
	})
}

func TestProgressAndCancelMidBackup(t *testing.T) {
	e := slowEnv(t, nil)
	ctx := context.Background()
	src := e.workspace("ws", 3, 64<<10)
	first := e.backup(src, "carol", "ws")
	e.workspace("ws", 4, 8<<20, 64<<10) // grows the workspace

	resp, err := e.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: "carol", Workspace: "ws", Path: src})
	if err != nil {
		t.Fatal(err)
	}
	var phases []pb.OperationPhase
	cancelled := false
	seen := e.watch(resp.Operation.Id, func(op *pb.Operation) {
		if len(phases) == 0 || phases[len(phases)-1] != op.Progress.Phase {
			phases = append(phases, op.Progress.Phase)
		}
		if !cancelled && op.Progress.Phase == pb.OperationPhase_OPERATION_PHASE_TRANSFERRING && op.Progress.BytesDone > 0 {
			if op.Progress.BytesTotal == 0 || op.Progress.BytesPerSecond <= 0 {
				t.Errorf("progress while transferring: %v", op.Progress)
			}
			cancelled = true
			if _, err := e.client.CancelOperation(ctx, &pb.CancelOperationRequest{OperationId: op.Id}); err != nil {
				t.Error(err)
			}
		}
	})
	last := lastOf(seen)
	if !cancelled || last.State != pb.OperationState_OPERATION_STATE_CANCELLED || codes.Code(last.ErrorCode) != codes.Canceled {
		t.Fatalf("cancelled mid-backup: ended %v (cancel sent: %v)", last, cancelled)
	}
	if phases[len(phases)-1] != pb.OperationPhase_OPERATION_PHASE_DONE {
		t.Fatalf("phases %v", phases)
	}
	// No partial snapshot; the previous one restores.
	list, err := e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "carol", Workspace: "ws"})
	if err != nil || len(list.Snapshots) != 1 || list.Snapshots[0].Id != first.Result.SnapshotId {
		t.Fatalf("snapshots after a cancelled backup: %v %v", list, err)
	}
	dst := filepath.Join(e.root, "back")
	r, err := e.client.RestoreWorkspace(ctx, &pb.RestoreWorkspaceRequest{Owner: "carol", Workspace: "ws", Path: dst})
	if err != nil {
		t.Fatal(err)
	}
	if last := lastOf(e.watch(r.Operation.Id, nil)); last.State != pb.OperationState_OPERATION_STATE_SUCCEEDED || last.Result.Files != 3 {
		t.Fatalf("restore of the previous snapshot: %v", last)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "data", "blobb")); b != nil {
		t.Fatal("the restored snapshot holds a file of the cancelled backup")
	}
}

func TestRestoreProgressHasETA(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Limits.DownloadBytesPerSecond = 2 << 20 })
	src := e.workspace("ws", 5, 4<<20)
	e.backup(src, "dave", "ws")
	r, err := e.client.RestoreWorkspace(context.Background(), &pb.RestoreWorkspaceRequest{Owner: "dave", Workspace: "ws", Path: filepath.Join(e.root, "r"), Verify: false})
	if err != nil {
		t.Fatal(err)
	}
	var eta bool
	e.watch(r.Operation.Id, func(op *pb.Operation) {
		p := op.Progress
		if p.Phase == pb.OperationPhase_OPERATION_PHASE_TRANSFERRING && p.EstimatedTimeLeft != nil && p.BytesTotal == 4<<20+int64(len("package main\n\nfunc main() {}\n")+2) && p.BytesPerSecond > 0 {
			eta = true
		}
	})
	if !eta {
		t.Fatal("no progress message of the restore had a rate and an estimated time left")
	}
}

func TestConcurrencyLimitQueues(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Limits.Backups = 2
		c.Limits.UploadBytesPerSecond = 8 << 20
		c.MetricsListen = "127.0.0.1:0"
	})
	ctx := context.Background()
	var dirs, ids []string
	for i := range 8 {
		dirs = append(dirs, e.workspace("ws"+string(rune('a'+i)), uint64(10+i), 2<<20))
	}
	for _, dir := range dirs {
		resp, err := e.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: "erin", Workspace: filepath.Base(dir), Path: dir})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, resp.Operation.Id)
	}
	var ops []*pb.Operation
	for _, id := range ids {
		last := lastOf(e.watch(id, nil))
		if last.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
			t.Fatalf("%s: %v", id, last)
		}
		ops = append(ops, last)
	}
	// At no moment did more than 2 run: at each start, count those running.
	for _, a := range ops {
		t0 := a.StartTime.AsTime()
		n := 0
		for _, b := range ops {
			if !b.StartTime.AsTime().After(t0) && b.EndTime.AsTime().After(t0) {
				n++
			}
		}
		if n > 2 {
			t.Fatalf("%d backups running at %v under a limit of 2", n, t0)
		}
	}
	m := scrape(t, e.srv)
	for _, want := range []string{
		`backupd_queue_wait_seconds_count{kind="backup"} 8`,
		`backupd_operations_total{kind="backup",result="succeeded"} 8`,
		`backupd_operations_running{kind="backup"} 0`,
		`backupd_operations_queued{kind="backup"} 0`,
	} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	// All eight were asked for at once: two got a slot at once, six
	// waited (16 MiB at 8 MiB/s takes 2 s, so their waits are long).
	if quick := metricValue(t, m, `backupd_queue_wait_seconds_bucket{kind="backup",le="0.1"}`); quick > 2 {
		t.Errorf("%v backups waited less than 0.1 s for a slot under a limit of 2", quick)
	}
}

func scrape(t *testing.T, s *Server) string {
	t.Helper()
	ts := httptest.NewServer(s.MetricsHandler())
	defer ts.Close()
	resp, err := http.Get(ts.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func metricValue(t *testing.T, text, series string) float64 {
	t.Helper()
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no series %s", series)
	return 0
}

func TestMetricsSeries(t *testing.T) {
	e := newEnv(t, nil)
	src := e.workspace("ws", 6, 1000)
	e.backup(src, "frank", "ws")
	m := scrape(t, e.srv)
	for _, want := range []string{
		`backupd_operations_total{kind="backup",result="succeeded"} 1`,
		`backupd_operations_total{kind="restore",result="failed"} 0`,
		`backupd_operation_duration_seconds_bucket{kind="backup",result="succeeded",le="+Inf"} 1`,
		`backupd_operation_bytes_total{kind="backup"}`,
		`backupd_queue_wait_seconds_count{kind="backup"} 1`,
		`backupd_operations_queued{kind="restore"} 0`,
		`backupd_operations_running{kind="backup"} 0`,
		`backupd_storage_calls_total{op="put",result="ok"}`,
		`backupd_storage_calls_total{op="list",result="ok"}`,
		`backupd_storage_errors_total{op="put"} 0`,
		`backupd_storage_bytes_total{op="put"}`,
		`backupd_storage_call_duration_seconds_count{op="put"}`,
		`go_goroutines`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if metricValue(t, m, `backupd_storage_calls_total{op="put",result="ok"}`) < 3 {
		t.Error("a first backup made fewer than 3 puts (config, pack, index, snapshot)")
	}
}

func TestIdempotency(t *testing.T) {
	e := slowEnv(t, nil)
	ctx := context.Background()
	src := e.workspace("ws", 7, 8<<20)
	req := &pb.BackupWorkspaceRequest{Owner: "gina", Workspace: "ws", Path: src}
	a, err := e.client.BackupWorkspace(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	// A second backup of the same workspace while the first runs joins it.
	b, err := e.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: "gina", Workspace: "ws", Path: src, RequestId: "retry-1"})
	if err != nil {
		t.Fatal(err)
	}
	if a.Joined || !b.Joined || a.Operation.Id != b.Operation.Id {
		t.Fatalf("second backup did not join: %v / %v", a, b)
	}
	// A restore into the path being backed up is refused meanwhile.
	_, err = e.client.RestoreWorkspace(ctx, &pb.RestoreWorkspaceRequest{Owner: "gina", Workspace: "ws", Path: src, Overwrite: true})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("restore into a path being backed up: %v", err)
	}
	if _, err := e.client.CancelOperation(ctx, &pb.CancelOperationRequest{OperationId: a.Operation.Id}); err != nil {
		t.Fatal(err)
	}
	e.watch(a.Operation.Id, nil)

	// The request id still names that operation after it ended: a retry
	// gets it back rather than a new backup.
	c, err := e.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: "gina", Workspace: "ws", Path: src, RequestId: "retry-1"})
	if err != nil || c.Operation.Id != a.Operation.Id || !c.Joined || c.Operation.State != pb.OperationState_OPERATION_STATE_CANCELLED {
		t.Fatalf("retry with the same request id: %v %v", c, err)
	}
	// The same request id for a different request is refused.
	_, err = e.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: "gina", Workspace: "other", Path: src, RequestId: "retry-1"})
	if field := badField(err); field != "request_id" {
		t.Fatalf("request id reused for another request: %v", err)
	}
}

// badField returns the field an InvalidArgument error names.
func badField(err error) string {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		return "not InvalidArgument: " + errString(err)
	}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.FieldViolations) == 1 {
			if !strings.HasPrefix(st.Message(), br.FieldViolations[0].Field+": ") {
				return "message does not start with the field: " + st.Message()
			}
			return br.FieldViolations[0].Field
		}
	}
	return "no BadRequest detail: " + st.Message()
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

func TestInvalidArguments(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	ws := e.workspace("ws", 8, 10)
	outside := t.TempDir()
	escape := filepath.Join(e.root, "escape")
	if err := os.Symlink(outside, escape); err != nil {
		t.Fatal(err)
	}
	// A link below the root is not followed even when it stays inside.
	inner := filepath.Join(e.root, "inner")
	if err := os.Symlink(ws, inner); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(ws, "README")
	backup := func(mut func(*pb.BackupWorkspaceRequest)) error {
		r := &pb.BackupWorkspaceRequest{Owner: "o", Workspace: "w", Path: ws}
		mut(r)
		_, err := e.client.BackupWorkspace(ctx, r)
		return err
	}
	restore := func(mut func(*pb.RestoreWorkspaceRequest)) error {
		r := &pb.RestoreWorkspaceRequest{Owner: "o", Workspace: "w", Path: filepath.Join(e.root, "new")}
		mut(r)
		_, err := e.client.RestoreWorkspace(ctx, r)
		return err
	}
	cases := []struct {
		name, field string
		err         error
	}{
		{"backup request_id", "request_id", backup(func(r *pb.BackupWorkspaceRequest) { r.RequestId = "no spaces" })},
		{"backup owner missing", "owner", backup(func(r *pb.BackupWorkspaceRequest) { r.Owner = "" })},
		{"backup owner syntax", "owner", backup(func(r *pb.BackupWorkspaceRequest) { r.Owner = "../etc" })},
		{"backup workspace", "workspace", backup(func(r *pb.BackupWorkspaceRequest) { r.Workspace = "a/b" })},
		{"backup path missing", "path", backup(func(r *pb.BackupWorkspaceRequest) { r.Path = "" })},
		{"backup path relative", "path", backup(func(r *pb.BackupWorkspaceRequest) { r.Path = "ws" })},
		{"backup path unclean", "path", backup(func(r *pb.BackupWorkspaceRequest) { r.Path = ws + "/../ws" })},
		{"backup path outside roots", "path", backup(func(r *pb.BackupWorkspaceRequest) { r.Path = outside })},
		{"backup path is the root", "path", backup(func(r *pb.BackupWorkspaceRequest) { r.Path = e.root })},
		{"backup path through a symlink out", "path", backup(func(r *pb.BackupWorkspaceRequest) { r.Path = escape })},
		{"backup path not a directory", "path", backup(func(r *pb.BackupWorkspaceRequest) { r.Path = file })},
		{"backup path a symlink inside", "path", backup(func(r *pb.BackupWorkspaceRequest) { r.Path = inner })},
		{"backup tags", "tags", backup(func(r *pb.BackupWorkspaceRequest) { r.Tags = map[string]string{"": "x"} })},
		{"backup excludes", "excludes", backup(func(r *pb.BackupWorkspaceRequest) { r.Excludes = []string{"[oops"} })},
		{"backup parent", "parent_snapshot_id", backup(func(r *pb.BackupWorkspaceRequest) { r.ParentSnapshotId = "xyz" })},
		{"backup uid_mappings", "uid_mappings", backup(func(r *pb.BackupWorkspaceRequest) {
			r.UidMappings = []*pb.IdMapping{{ContainerId: 0, HostId: 1000, Count: 0}}
		})},
		{"backup gid_mappings", "gid_mappings", backup(func(r *pb.BackupWorkspaceRequest) {
			r.GidMappings = []*pb.IdMapping{{ContainerId: 1, HostId: 4294967295, Count: 2}}
		})},
		{"restore request_id", "request_id", restore(func(r *pb.RestoreWorkspaceRequest) { r.RequestId = strings.Repeat("x", 200) })},
		{"restore owner", "owner", restore(func(r *pb.RestoreWorkspaceRequest) { r.Owner = "-x" })},
		{"restore workspace", "workspace", restore(func(r *pb.RestoreWorkspaceRequest) { r.Workspace = "" })},
		{"restore snapshot_id", "snapshot_id", restore(func(r *pb.RestoreWorkspaceRequest) { r.SnapshotId = "ab" })},
		{"restore path outside", "path", restore(func(r *pb.RestoreWorkspaceRequest) { r.Path = filepath.Join(outside, "x") })},
		{"restore path through a symlink out", "path", restore(func(r *pb.RestoreWorkspaceRequest) { r.Path = filepath.Join(escape, "x") })},
		{"restore path through a symlink inside", "path", restore(func(r *pb.RestoreWorkspaceRequest) { r.Path = filepath.Join(inner, "x") })},
		{"restore uid_mappings", "uid_mappings", restore(func(r *pb.RestoreWorkspaceRequest) { r.UidMappings = []*pb.IdMapping{{Count: 0}} })},
		{"restore gid_mappings", "gid_mappings", restore(func(r *pb.RestoreWorkspaceRequest) { r.GidMappings = []*pb.IdMapping{{Count: 0}} })},
		{"restore verify without overwrite", "verify", restore(func(r *pb.RestoreWorkspaceRequest) { r.Verify = true })},
		{"restore delete without overwrite", "delete", restore(func(r *pb.RestoreWorkspaceRequest) { r.Delete = true })},
		{"restore includes", "includes", restore(func(r *pb.RestoreWorkspaceRequest) { r.Includes = []string{"../x"} })},
	}
	_, err := e.client.GetOperation(ctx, &pb.GetOperationRequest{})
	cases = append(cases, struct {
		name, field string
		err         error
	}{"get operation_id", "operation_id", err})
	_, err = e.client.CancelOperation(ctx, &pb.CancelOperationRequest{})
	cases = append(cases, struct {
		name, field string
		err         error
	}{"cancel operation_id", "operation_id", err})
	stream, _ := e.client.WatchOperation(ctx, &pb.WatchOperationRequest{OperationId: "op-x", Interval: durationpb.New(time.Millisecond)})
	_, err = stream.Recv()
	cases = append(cases, struct {
		name, field string
		err         error
	}{"watch interval", "interval", err})
	for _, c := range []struct {
		name, field string
		req         *pb.ListSnapshotsRequest
	}{
		{"list owner", "owner", &pb.ListSnapshotsRequest{}},
		{"list workspace", "workspace", &pb.ListSnapshotsRequest{Owner: "o", Workspace: "x y"}},
		{"list page_size", "page_size", &pb.ListSnapshotsRequest{Owner: "o", PageSize: 5000}},
		{"list page_token", "page_token", &pb.ListSnapshotsRequest{Owner: "o", PageToken: "garbage!"}},
	} {
		_, err := e.client.ListSnapshots(ctx, c.req)
		cases = append(cases, struct {
			name, field string
			err         error
		}{c.name, c.field, err})
	}
	_, err = e.client.DeleteSnapshot(ctx, &pb.DeleteSnapshotRequest{Owner: "o", Workspace: "w", SnapshotId: "abcd1234"})
	cases = append(cases, struct {
		name, field string
		err         error
	}{"delete snapshot_id prefix", "snapshot_id", err})
	_, err = e.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: ""})
	cases = append(cases, struct {
		name, field string
		err         error
	}{"check owner", "owner", err})

	for _, c := range cases {
		if got := badField(c.err); got != c.field {
			t.Errorf("%s: want InvalidArgument naming %s, got %s", c.name, c.field, got)
		}
	}
	// Nothing was started by any of them.
	if n := len(e.srv.ops.ops); n != 0 {
		t.Errorf("%d operations started by invalid requests", n)
	}
	_, err = e.client.GetOperation(ctx, &pb.GetOperationRequest{OperationId: "op-doesnotexist"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("unknown operation: %v", err)
	}
}

func TestQueueTimeout(t *testing.T) {
	e := slowEnv(t, func(c *Config) {
		c.Limits.Backups = 1
		c.Limits.QueueTimeout = 200 * time.Millisecond
	})
	ctx := context.Background()
	long := e.workspace("long", 30, 8<<20) // runs for seconds at 1 MiB/s
	other := e.workspace("other", 31, 10)
	a, err := e.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: "ivy", Workspace: "long", Path: long})
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: "ivy", Workspace: "other", Path: other})
	if err != nil {
		t.Fatal(err)
	}
	last := lastOf(e.watch(b.Operation.Id, nil))
	if last.State != pb.OperationState_OPERATION_STATE_FAILED || codes.Code(last.ErrorCode) != codes.ResourceExhausted || !strings.Contains(last.ErrorMessage, "queue") {
		t.Fatalf("queued past the timeout: %v", last)
	}
	if a, _ := e.client.GetOperation(ctx, &pb.GetOperationRequest{OperationId: a.Operation.Id}); a.GetOperation().GetState() != pb.OperationState_OPERATION_STATE_RUNNING {
		t.Fatalf("the long backup is not running any more: %v", a)
	}
	e.client.CancelOperation(ctx, &pb.CancelOperationRequest{OperationId: a.Operation.Id})
	e.watch(a.Operation.Id, nil)
}

// snapshotObject is the local store's file of an owner's snapshot.
func (e *env) snapshotObject(owner, ws, id string) string {
	e.t.Helper()
	m, err := filepath.Glob(filepath.Join(e.store, owner, "snapshots", ws, "*-"+id))
	if err != nil || len(m) != 1 {
		e.t.Fatalf("snapshot object %s of %s/%s: %v %v", id, owner, ws, m, err)
	}
	return m[0]
}

// One damaged snapshot object, one of an unknown format version and a
// damaged index object leave the rest of the listing readable: the two
// are named in unreadable_snapshots, on their page; deleting them works.
func TestListSnapshotsNamesUnreadable(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.CacheDir = "none" }) // the index read from storage
	ctx := context.Background()
	src := e.workspace("ws", 60, 100)
	var ids []string
	for range 3 {
		ids = append(ids, e.backup(src, "kim", "ws").Result.SnapshotId)
	}
	damagedObj := e.snapshotObject("kim", "ws", ids[1])
	if err := os.WriteFile(damagedObj, []byte("not a snapshot"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A snapshot of a later format, well-formed and named by its hash.
	future := []byte(`{"version":99,"time":"2000-01-01T00:00:00Z","owner":"kim","workspace":"ws"}`)
	sum := sha256.Sum256(future)
	futureID := hex.EncodeToString(sum[:])
	write(t, filepath.Join(e.store, "kim", "snapshots", "ws", fmt.Sprintf("%020d-%s", time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano(), futureID)), future)
	// Listing needs no index: a damaged index object does not stop it.
	idx, _ := filepath.Glob(filepath.Join(e.store, "kim", "index", "*"))
	if len(idx) == 0 {
		t.Fatal("no index object")
	}
	if err := os.WriteFile(idx[0], []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}

	list, err := e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "kim"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Snapshots) != 2 || list.Snapshots[0].Id != ids[2] || list.Snapshots[1].Id != ids[0] {
		t.Fatalf("readable snapshots: %v", list.Snapshots)
	}
	if len(list.UnreadableSnapshots) != 2 {
		t.Fatalf("unreadable snapshots: %v", list.UnreadableSnapshots)
	}
	bad, old := list.UnreadableSnapshots[0], list.UnreadableSnapshots[1]
	if bad.Id != ids[1] || bad.Owner != "kim" || bad.Workspace != "ws" || bad.Time.AsTime().IsZero() ||
		!strings.Contains(bad.Error, "corrupt object") || !strings.Contains(bad.Error, ids[1]) {
		t.Errorf("the damaged snapshot: %v", bad)
	}
	if old.Id != futureID || !old.Time.AsTime().Equal(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)) || !strings.Contains(old.Error, "version 99") {
		t.Errorf("the snapshot of a later format: %v", old)
	}
	// Pages of one: four pages, the unreadable ones on theirs.
	var pages []string
	for token := ""; ; {
		resp, err := e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "kim", PageSize: 1, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if n := len(resp.Snapshots) + len(resp.UnreadableSnapshots); n != 1 {
			t.Fatalf("a page of %d", n)
		}
		for _, s := range resp.Snapshots {
			pages = append(pages, s.Id[:8])
		}
		for _, s := range resp.UnreadableSnapshots {
			pages = append(pages, "!"+s.Id[:8])
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	if want := []string{ids[2][:8], "!" + ids[1][:8], ids[0][:8], "!" + futureID[:8]}; strings.Join(pages, " ") != strings.Join(want, " ") {
		t.Fatalf("pages %v, want %v", pages, want)
	}
	// Unreadable snapshots can be deleted (the index is not needed either).
	for _, id := range []string{ids[1], futureID} {
		if _, err := e.client.DeleteSnapshot(ctx, &pb.DeleteSnapshotRequest{Owner: "kim", Workspace: "ws", SnapshotId: id}); err != nil {
			t.Fatalf("delete %s: %v", id, err)
		}
	}
	list, err = e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "kim"})
	if err != nil || len(list.Snapshots) != 2 || len(list.UnreadableSnapshots) != 0 {
		t.Fatalf("after deleting the unreadable ones: %v %v", list, err)
	}
}

// CheckRepository reports damage as problems, naming the objects: a
// damaged snapshot object, and an index object damaged in storage though
// the node-local cache still holds it intact (the check reads storage).
func TestCheckRepositoryReportsDamage(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	src := e.workspace("ws", 61, 100)
	a := e.backup(src, "lee", "ws").Result.SnapshotId
	e.backup(src, "lee", "ws")
	if chk, err := e.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: "lee"}); err != nil || !chk.Ok || chk.Snapshots != 2 {
		t.Fatalf("check before any damage: %v %v", chk, err)
	}
	write(t, e.snapshotObject("lee", "ws", a), []byte("{}"))
	chk, err := e.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: "lee", ReadData: true})
	if err != nil || chk.Ok || chk.Snapshots != 2 || len(chk.Problems) != 1 || !strings.Contains(chk.Problems[0], a) || chk.PacksRead == 0 {
		t.Fatalf("check with a damaged snapshot: %v %v", chk, err)
	}
	idx, _ := filepath.Glob(filepath.Join(e.store, "lee", "index", "*"))
	write(t, idx[0], []byte("garbage"))
	chk, err = e.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: "lee"})
	// Both damaged objects are named; the damaged index object's packs,
	// indexed from their trailers, are warnings, and the check goes on.
	if err != nil || chk.Ok || len(chk.Problems) != 2 || !strings.Contains(chk.Problems[0], filepath.Base(idx[0])) ||
		!strings.Contains(chk.Problems[0], "corrupt object") || !strings.Contains(chk.Problems[1], a) || len(chk.Warnings) == 0 || chk.Trees == 0 {
		t.Fatalf("check with a damaged index object: %v %v", chk, err)
	}
	// The listing is not stopped by either.
	list, err := e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "lee"})
	if err != nil || len(list.Snapshots) != 1 || len(list.UnreadableSnapshots) != 1 || list.UnreadableSnapshots[0].Id != a {
		t.Fatalf("list: %v %v", list, err)
	}
	if _, err := e.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: "nobody"}); status.Code(err) != codes.NotFound {
		t.Fatalf("check of an owner without a repository: %v", err)
	}
}
