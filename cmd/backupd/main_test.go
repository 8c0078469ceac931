package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/backupd/backupd/internal/testservers"
	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage/local"
	bsync "github.com/backupd/backupd/pkg/sync"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// binary is the daemon under test; backupctl the operator's CLI, for what
// an operator does beside a running daemon (repair index).
var binary, backupctl string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "backupd-test")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "backupd")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		panic("build backupd: " + err.Error() + "\n" + string(out))
	}
	backupctl = filepath.Join(dir, "backupctl")
	if out, err := exec.Command("go", "build", "-o", backupctl, "../backupctl").CombinedOutput(); err != nil {
		panic("build backupctl: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running backupd binary.
type proc struct {
	t       *testing.T
	cmd     *exec.Cmd
	client  pb.BackupServiceClient
	conn    *grpc.ClientConn
	root    string
	store   string
	sock    string
	metrics string // URL of the metrics endpoint

	logEnd chan struct{} // closed once the log is read to its end (the daemon exited)

	mu   sync.Mutex
	logs bytes.Buffer
	seen map[*lineWaiter]bool // log lines waited for
}

// lineWaiter waits for a log line that holds every one of parts.
type lineWaiter struct {
	parts []string
	ch    chan struct{} // closed when such a line has been read
}

func (w *lineWaiter) matches(line string) bool {
	for _, p := range w.parts {
		if !strings.Contains(line, p) {
			return false
		}
	}
	return true
}

// start runs backupd on a unix socket with a local store; uploads are
// capped at 1 MiB/s so that a backup of 8 MiB surely runs for seconds.
func start(t *testing.T, grace string) *proc { return startIn(t, grace, "") }

// startIn is start with the workspace root at root (created if missing;
// "" for one in the daemon's own temporary directory) and extra flags
// after the harness's own (a flag given again wins).
func startIn(t *testing.T, grace, root string, extra ...string) *proc {
	t.Helper()
	return startWith(t, root, append([]string{"--upload-limit", "1MiB", "--shutdown-grace", grace}, extra...)...)
}

// startWith runs backupd on a unix socket with a local store, one
// workspace root (root, or one in its temporary directory when ""), no
// node-local cache, and the extra flags.
func startWith(t *testing.T, root string, extra ...string) *proc {
	t.Helper()
	dir := t.TempDir()
	if root == "" {
		root = filepath.Join(dir, "workspaces")
	}
	d := &proc{t: t, root: root, store: filepath.Join(dir, "store"), seen: map[*lineWaiter]bool{}}
	os.MkdirAll(d.root, 0o755)
	sock := filepath.Join(dir, "backupd.sock")
	d.sock = sock
	d.cmd = exec.Command(binary, append([]string{"--listen", "unix://" + sock, "--workspace-root", d.root, "--repo", "file://" + d.store,
		"--cache-dir", "none", "--metrics-listen", "127.0.0.1:0"}, extra...)...)
	// A pipe of the test's own, not cmd.StderrPipe: Wait closes that one's
	// reading end, maybe before the last lines are read.
	stderr, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stderr = w
	d.logEnd = make(chan struct{})
	ready := d.waiter("backupd listening")
	metricsUp := d.waiter("metrics listening")
	err = d.cmd.Start()
	w.Close()
	if err != nil {
		stderr.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.cmd.Process.Kill()
			d.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("backupd log:\n%s", d.log())
		}
	})
	go func() {
		defer close(d.logEnd)
		defer stderr.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 16<<20) // a panic's stack is one line
		for sc.Scan() {
			line := sc.Text()
			d.mu.Lock()
			d.logs.WriteString(line + "\n")
			for w := range d.seen {
				if w.matches(line) {
					close(w.ch)
					delete(d.seen, w)
				}
			}
			d.mu.Unlock()
		}
	}()
	d.wait(metricsUp, "metrics listening")
	d.wait(ready, "backupd listening")
	for _, l := range strings.Split(d.log(), "\n") {
		var entry struct{ Msg, Address string }
		if json.Unmarshal([]byte(l), &entry) == nil && entry.Msg == "metrics listening" {
			d.metrics = "http://" + entry.Address + "/metrics"
		}
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d.conn = conn
	d.client = pb.NewBackupServiceClient(conn)
	h, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: "backupd.v1.BackupService"})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", h, err)
	}
	return d
}

// waiter returns a channel closed when a log line with msg appears
// (after this call).
func (d *proc) waiter(msg string) chan struct{} { return d.lineWaiter(false, `"msg":"`+msg) }

// lineWaiter returns a channel closed once a log line holding all of
// parts is read; with past, a line read already counts.
func (d *proc) lineWaiter(past bool, parts ...string) chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	w := &lineWaiter{parts: parts, ch: make(chan struct{})}
	if past {
		for _, l := range strings.Split(d.logs.String(), "\n") {
			if w.matches(l) {
				close(w.ch)
				return w.ch
			}
		}
	}
	d.seen[w] = true
	return w.ch
}

// loggedEnd waits until the daemon's log line for the end of operation id
// has been read, at most a minute. The log reaches this test through a
// pipe, so a line may be read after the call that it belongs to has
// returned: once the end's line is read, every line the operation
// logged is in d.log(). It is safe to call from any goroutine.
func (d *proc) loggedEnd(id string) error {
	select {
	case <-d.lineWaiter(true, `"msg":"operation ended`, `"operation":"`+id+`"`):
		return nil
	case <-time.After(time.Minute):
		return fmt.Errorf("no end of operation %s in the log within a minute", id)
	}
}

func (d *proc) wait(ch chan struct{}, what string) {
	d.t.Helper()
	select {
	case <-ch:
	case <-time.After(time.Minute):
		d.t.Fatalf("no %q in the log within a minute", what)
	}
}

func (d *proc) log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.logs.String()
}

func writeRandom(t *testing.T, p string, n int, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// backup starts a backup and follows it; onRunning is called once when it
// is transferring.
func (d *proc) backup(dir string, onRunning func()) *pb.Operation {
	d.t.Helper()
	ctx := context.Background()
	resp, err := d.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: "o", Workspace: "w", Path: dir})
	if err != nil {
		d.t.Fatal(err)
	}
	stream, err := d.client.WatchOperation(ctx, &pb.WatchOperationRequest{OperationId: resp.Operation.Id})
	if err != nil {
		d.t.Fatal(err)
	}
	var last *pb.Operation
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return last
		}
		if err != nil {
			d.t.Fatalf("watch: %v", err)
		}
		last = m.Operation
		if onRunning != nil && last.Progress.Phase == pb.OperationPhase_OPERATION_PHASE_TRANSFERRING && last.Progress.BytesDone > 0 {
			onRunning()
			onRunning = nil
		}
	}
}

// snapshots opens the store the daemon used and lists workspace w.
func (d *proc) snapshots() (*repo.Repository, []repo.SnapshotRef) {
	d.t.Helper()
	root, err := local.New(d.store)
	if err != nil {
		d.t.Fatal(err)
	}
	st, err := placement.NewPrefixPerOwner(root).Owner(context.Background(), "o", false)
	if err != nil {
		d.t.Fatal(err)
	}
	r, err := repo.Load(context.Background(), st, false)
	if err != nil {
		d.t.Fatal(err)
	}
	refs, err := r.ListSnapshots(context.Background(), "w")
	if err != nil {
		d.t.Fatal(err)
	}
	return r, refs
}

func TestSIGTERMCancelsBackupAfterGrace(t *testing.T) {
	d := start(t, "2s")
	ws := filepath.Join(d.root, "ws")
	writeRandom(t, filepath.Join(ws, "small"), 1000, 1)
	first := d.backup(ws, nil)
	if first.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		t.Fatalf("first backup: %v", first)
	}
	writeRandom(t, filepath.Join(ws, "big"), 8<<20, 2)

	draining := d.waiter("shutting down")
	last := d.backup(ws, func() {
		if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		// While the backup runs out its grace period, new work is refused.
		d.wait(draining, "shutting down")
		_, err := d.client.BackupWorkspace(context.Background(), &pb.BackupWorkspaceRequest{Owner: "o", Workspace: "other", Path: ws})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("backup during shutdown: %v", err)
		}
		h, err := healthpb.NewHealthClient(d.conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: "backupd.v1.BackupService"})
		if err != nil || h.Status != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("health during shutdown: %v %v", h, err)
		}
	})
	if last.State != pb.OperationState_OPERATION_STATE_CANCELLED {
		t.Fatalf("backup running at SIGTERM ended %v %s", last.State, last.ErrorMessage)
	}
	if err := d.cmd.Wait(); err != nil {
		t.Fatalf("backupd exited: %v", err)
	}
	<-d.logEnd
	logs := d.log()
	for _, want := range []string{`"msg":"shutdown grace period over`, `"result":"cancelled"`, `"msg":"shut down"`, `"grace":"2s"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s", want)
		}
	}
	// No partial snapshot, no temporary files; the first still restores.
	r, refs := d.snapshots()
	if len(refs) != 1 || refs[0].ID.String() != first.Result.SnapshotId {
		t.Fatalf("snapshots after SIGTERM: %v", refs)
	}
	filepath.WalkDir(d.store, func(p string, e fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("temporary file left in the store: %s", p)
		}
		return nil
	})
	snap, err := r.LoadSnapshot(context.Background(), refs[0])
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	res, err := bsync.Restore(context.Background(), r, snap, dst, bsync.RestoreOptions{})
	if err != nil || res.Files != 1 {
		t.Fatalf("restore of the first snapshot: %v %v", res, err)
	}
}

func TestSIGTERMLetsBackupFinishWithinGrace(t *testing.T) {
	d := start(t, "1m")
	ws := filepath.Join(d.root, "ws")
	writeRandom(t, filepath.Join(ws, "data"), 2<<20, 3)
	last := d.backup(ws, func() {
		if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	})
	if last.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		t.Fatalf("backup running at SIGTERM ended %v %s", last.State, last.ErrorMessage)
	}
	if err := d.cmd.Wait(); err != nil {
		t.Fatalf("backupd exited: %v", err)
	}
	if _, refs := d.snapshots(); len(refs) != 1 || refs[0].ID.String() != last.Result.SnapshotId {
		t.Fatalf("snapshots: %v", refs)
	}
}

func TestBadFlagsAndConfig(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--bogus"}, 2, "unknown flag: --bogus"},
		{[]string{"--listen", "127.0.0.1:0"}, 2, "no workspace root"},
		{[]string{"--listen", "0.0.0.0:7070", "--workspace-root", "/tmp"}, 1, "plaintext gRPC on a non-loopback address"},
		{[]string{"--listen", "nonsense", "--workspace-root", "/tmp"}, 1, "want host:port or unix:///path"},
		{[]string{"--workspace-root", "/tmp", "--upload-limit", "fast"}, 2, "--upload-limit"},
		{[]string{"--workspace-root", "/tmp", "--tls-client-ca", "/x.pem"}, 1, "cert and key are both required"},
		{[]string{"--config", "/does/not/exist.yaml"}, 1, "no such file"},
	} {
		out, err := exec.Command(binary, c.args...).CombinedOutput()
		lines := strings.Count(string(out), "\n")
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != c.code || !strings.Contains(string(out), c.want) || !strings.HasPrefix(string(out), "backupd: ") ||
			lines != c.code { // a usage error adds the line pointing to --help
			t.Errorf("%v: %v\n%s", c.args, err, out)
		}
	}
	out, err := exec.Command(binary, "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--workspace-root") || !strings.Contains(string(out), "SIGTERM") {
		t.Errorf("--help: %v\n%s", err, out)
	}
}

func TestConfigFileEnvAndFlags(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "backupd.yaml")
	os.WriteFile(cfgFile, []byte(`listen: 127.0.0.1:7001
workspace_roots: [/from/file]
limits:
  backups: 3
  upload_bytes_per_second: 1000
storage:
  url: file:///from/file
  connections: 6
log:
  format: console
`), 0o644)
	t.Setenv("BACKUPD_LISTEN", "127.0.0.1:7002")
	t.Setenv("BACKUPD_WORKSPACE_ROOTS", "/env/a:/env/b")
	f := &flags{}
	cmd := f.command()
	if err := cmd.ParseFlags([]string{"--config", cfgFile, "--max-backups", "5", "--download-limit", "2MiB", "--repo", "file:///from/flag"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := f.load(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:7002" || strings.Join(cfg.WorkspaceRoots, ",") != "/env/a,/env/b" || cfg.Limits.Backups != 5 ||
		cfg.Limits.UploadBytesPerSecond != 1000 || cfg.Limits.DownloadBytesPerSecond != 2<<20 || cfg.Storage.URL != "file:///from/flag" ||
		cfg.Storage.Connections != 6 || cfg.Log.Format != "console" {
		t.Fatalf("merged config: %+v", cfg)
	}
	os.WriteFile(cfgFile, []byte("listne: typo\n"), 0o644)
	if _, err := f.load(cmd); err == nil || !strings.Contains(err.Error(), "listne") {
		t.Fatalf("unknown key: %v", err)
	}
}

// TestGrpcurl drives the daemon as the README shows, with grpcurl and
// server reflection.
func TestGrpcurl(t *testing.T) {
	grpcurl := testservers.Tool(t, "grpcurl")
	d := start(t, "30s")
	ws := filepath.Join(d.root, "ws1")
	writeRandom(t, filepath.Join(ws, "f"), 1000, 9)
	call := func(method, body string) string {
		t.Helper()
		out, err := exec.Command(grpcurl, "-plaintext", "-unix", "-d", body, d.sock, "backupd.v1.BackupService/"+method).CombinedOutput()
		if err != nil {
			t.Fatalf("grpcurl %s: %v\n%s", method, err, out)
		}
		return string(out)
	}
	out, err := exec.Command(grpcurl, "-plaintext", "-unix", d.sock, "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "backupd.v1.BackupService") || !strings.Contains(string(out), "grpc.health.v1.Health") {
		t.Fatalf("grpcurl list: %v\n%s", err, out)
	}
	var started struct {
		Operation struct{ ID string }
	}
	if err := json.Unmarshal([]byte(call("BackupWorkspace", `{"owner":"alice","workspace":"ws1","path":"`+ws+`"}`)), &started); err != nil || started.Operation.ID == "" {
		t.Fatalf("BackupWorkspace: %v", err)
	}
	watched := call("WatchOperation", `{"operation_id":"`+started.Operation.ID+`"}`)
	if !strings.Contains(watched, `"OPERATION_STATE_SUCCEEDED"`) || !strings.Contains(watched, `"snapshotId"`) {
		t.Fatalf("WatchOperation:\n%s", watched)
	}
	call("RestoreWorkspace", `{"owner":"alice","workspace":"ws1","path":"`+filepath.Join(d.root, "ws1-again")+`"}`)
	if list := call("ListSnapshots", `{"owner":"alice"}`); !strings.Contains(list, `"workspace": "ws1"`) {
		t.Fatalf("ListSnapshots:\n%s", list)
	}
	// The metrics endpoint, over HTTP as Prometheus scrapes it.
	resp, err := http.Get(d.metrics)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, series := range []string{
		`backupd_operations_total{kind="backup",result="succeeded"} 1`,
		`backupd_operation_duration_seconds_count{kind="backup",result="succeeded"} 1`,
		`backupd_operation_bytes_total{kind="backup"} 1000`,
		`backupd_queue_wait_seconds_count{kind="backup"} 1`,
		`backupd_operations_queued{kind="backup"}`,
		`backupd_operations_running{kind="restore"}`,
		`backupd_storage_calls_total{op="put",result="ok"}`,
		`backupd_storage_errors_total{op="get"}`,
		`backupd_storage_bytes_total{op="put"}`,
		`backupd_storage_call_duration_seconds_bucket{op="put",le="+Inf"}`,
	} {
		if !strings.Contains(string(body), series) {
			t.Errorf("metrics endpoint lacks %s", series)
		}
	}
}
