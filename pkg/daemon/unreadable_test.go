package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// daemonChildEnv makes the test binary a daemon serving the config it
// holds (JSON) until SIGTERM: TestUnreadableThroughDaemon runs it as
// another user.
const daemonChildEnv = "BACKUPD_TEST_DAEMON_CHILD"

// daemonChildConfig is what a child daemon serves.
type daemonChildConfig struct {
	Socket, Root, StorageURL string
}

// daemonChild serves the daemonChildConfig in job (JSON) until SIGTERM.
func daemonChild(job string) int {
	var c daemonChildConfig
	if err := json.Unmarshal([]byte(job), &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cfg := Config{Listen: "unix://" + c.Socket, WorkspaceRoots: []string{c.Root}, CacheDir: "none"}
	cfg.Storage.URL = c.StorageURL
	log, _ := zap.NewDevelopment()
	srv, err := New(context.Background(), cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	lis, err := srv.Listen()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() {
		<-sig
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// nobody is the uid and gid the child daemon runs as.
const nobody = 65534

// A daemon running as uid 65534 (the test binary re-executed) backs up a
// workspace holding a file and a directory of mode 000: with strict the
// backup fails (PERMISSION_DENIED) and writes no snapshot; without, it
// succeeds and its result and the snapshot listing count both entries.
// The earlier snapshot, made by a daemon running as root, restores byte
// for byte after either.
func TestUnreadableThroughDaemon(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run the daemon as another user")
	}
	base, err := os.MkdirTemp("", "backupd-daemon-unreadable-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(base, 0o755)
	roots, store, run := filepath.Join(base, "workspaces"), filepath.Join(base, "store"), filepath.Join(base, "run")
	src := filepath.Join(roots, "ws1")
	t.Cleanup(func() { os.Chmod(filepath.Join(src, "locked"), 0o755); os.RemoveAll(base) })
	write(t, filepath.Join(src, "keep"), []byte("kept"))
	write(t, filepath.Join(src, "secret"), []byte("secret"))
	write(t, filepath.Join(src, "locked", "inside"), []byte("inside"))
	os.Chmod(filepath.Join(src, "secret"), 0o000)
	os.Chmod(filepath.Join(src, "locked"), 0o000)
	for _, d := range []string{store, run} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	// The earlier snapshot, by a daemon running as root: everything.
	e := newEnv(t, func(c *Config) {
		c.WorkspaceRoots = []string{roots}
		c.Storage.URL = "file://" + store
	})
	first := e.backup(src, "o1", "ws1").Result.SnapshotId

	if err := filepath.WalkDir(store, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, nobody, nobody)
	}); err != nil {
		t.Fatal(err)
	}
	os.Chown(run, nobody, nobody)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "daemon.test")
	copyExecutable(t, self, bin)
	sock := filepath.Join(run, "d.sock")
	cfg, _ := json.Marshal(daemonChildConfig{Socket: sock, Root: roots, StorageURL: "file://" + store})
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), daemonChildEnv+"="+string(cfg), "HOME="+run)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}, Pdeathsig: syscall.SIGKILL}
	logs := &syncBuffer{b: &bytes.Buffer{}}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			<-exited
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		// Listening, not just bound: the socket file exists from bind(),
		// and a connect before listen() is refused.
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("the daemon as uid %d exited: %v\n%s", nobody, err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon as uid %d did not listen:\n%s", nobody, logs.String())
		}
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	child := &env{t: t, root: roots, conn: conn, client: pb.NewBackupServiceClient(conn)}
	ctx := context.Background()
	backup := func(strict bool) *pb.Operation {
		t.Helper()
		resp, err := child.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: "o1", Workspace: "ws1", Path: src, Strict: strict})
		if err != nil {
			t.Fatal(err)
		}
		return child.done(resp.Operation)
	}
	snapshots := func() []*pb.Snapshot {
		t.Helper()
		list, err := child.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "o1", Workspace: "ws1"})
		if err != nil {
			t.Fatal(err)
		}
		return list.Snapshots
	}
	restoreFirst := func(name string) {
		t.Helper()
		dst := filepath.Join(roots, name)
		r, err := e.client.RestoreWorkspace(ctx, &pb.RestoreWorkspaceRequest{Owner: "o1", Workspace: "ws1", SnapshotId: first, Path: dst})
		if err != nil {
			t.Fatal(err)
		}
		e.succeeded("restore of the first snapshot", r.Operation)
		sameTree(t, src, dst)
		os.Chmod(filepath.Join(dst, "locked"), 0o755) // for the cleanup
	}

	op := backup(true)
	if op.State != pb.OperationState_OPERATION_STATE_FAILED || codes.Code(op.ErrorCode) != codes.PermissionDenied ||
		!strings.Contains(op.ErrorMessage, "permission denied") {
		t.Fatalf("strict backup: %v %v %s\n%s", op.State, codes.Code(op.ErrorCode), op.ErrorMessage, logs.String())
	}
	if s := snapshots(); len(s) != 1 || s[0].Id != first {
		t.Fatalf("snapshots after the strict backup: %v", s)
	}
	restoreFirst("back1")

	op = backup(false)
	if op.State != pb.OperationState_OPERATION_STATE_SUCCEEDED || op.Result.UnreadableEntries != 2 || op.Result.Files != 1 {
		t.Fatalf("backup: %v %s, result %v\n%s", op.State, op.ErrorMessage, op.Result, logs.String())
	}
	if s := snapshots(); len(s) != 2 || s[0].Id != op.Result.SnapshotId || s[0].UnreadableEntries != 2 || s[1].UnreadableEntries != 0 {
		t.Fatalf("snapshots after the backup: %v", s)
	}
	restoreFirst("back2")
}

func copyExecutable(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
