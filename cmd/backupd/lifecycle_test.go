package main

import (
	"context"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// storeBytes is what the local store holds under dir.
func storeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// metric reads one series of the daemon's metrics endpoint.
func (d *proc) metric(series string) float64 {
	d.t.Helper()
	resp, err := http.Get(d.metrics)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				d.t.Fatal(err)
			}
			return f
		}
	}
	d.t.Fatalf("no series %s", series)
	return 0
}

// TestMaintenanceFromConfigFile: the built daemon, configured by a file
// with a retention policy and periodic maintenance, prunes the owner whose
// snapshot the retention forgot (it says so in its log), the kept
// snapshot restores, and DeleteOwner over the unix socket leaves nothing
// of the owner in the store.
func TestMaintenanceFromConfigFile(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "backupd.yaml")
	os.WriteFile(cfg, []byte("retention:\n  keep_last: 1\nmaintenance:\n  interval: 200ms\n  jitter: 0s\n"), 0o644)
	d := startWith(t, "", "--config", cfg)
	src := filepath.Join(d.root, "ws")
	writeRandom(t, filepath.Join(src, "big"), 2<<20, 1)
	if op := d.backup(src, nil); op.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		t.Fatalf("first backup: %v", op)
	}
	// The pass that prunes o is the first to log: passes with nothing
	// pending are silent.
	pruned := d.waiter("maintenance pass done")
	writeRandom(t, filepath.Join(src, "big"), 2<<20, 2)
	op := d.backup(src, nil)
	if op.State != pb.OperationState_OPERATION_STATE_SUCCEEDED || op.Result.ForgottenSnapshots != 1 {
		t.Fatalf("second backup: %v", op)
	}
	d.wait(pruned, "maintenance pass done")
	if !strings.Contains(d.log(), `"pruned":["o"]`) {
		t.Fatalf("the pass did not prune o:\n%s", d.log())
	}
	if freed := d.metric("backupd_prune_freed_bytes_total"); freed < 2<<20 {
		t.Fatalf("the maintenance freed %v bytes, want the forgotten 2 MiB", freed)
	}
	if n := storeBytes(t, filepath.Join(d.store, "o")); n > 3<<20 {
		t.Fatalf("the store holds %d bytes for one snapshot of 2 MiB", n)
	}
	ctx := context.Background()
	dst := filepath.Join(d.root, "back")
	r, err := d.client.RestoreWorkspace(ctx, &pb.RestoreWorkspaceRequest{Owner: "o", Workspace: "w", Path: dst})
	if err != nil {
		t.Fatal(err)
	}
	if last := follow(t, d, r.Operation.Id); last.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		t.Fatalf("restore after the maintenance: %v", last)
	}
	want, _ := os.ReadFile(filepath.Join(src, "big"))
	if got, _ := os.ReadFile(filepath.Join(dst, "big")); string(got) != string(want) {
		t.Fatal("the restored file differs")
	}
	del, err := d.client.DeleteOwner(ctx, &pb.DeleteOwnerRequest{Owner: "o"})
	if err != nil {
		t.Fatal(err)
	}
	if last := follow(t, d, del.Operation.Id); last.State != pb.OperationState_OPERATION_STATE_SUCCEEDED || last.Result.GetReceipt().GetObjects() == 0 {
		t.Fatalf("delete owner: %v", last)
	}
	if n := storeBytes(t, filepath.Join(d.store, "o")); n != 0 {
		t.Fatalf("%d bytes of the deleted owner left", n)
	}
}

// follow watches an operation to its end.
func follow(t *testing.T, d *proc, id string) *pb.Operation {
	t.Helper()
	stream, err := d.client.WatchOperation(context.Background(), &pb.WatchOperationRequest{OperationId: id})
	if err != nil {
		t.Fatal(err)
	}
	var last *pb.Operation
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return last
		}
		if err != nil {
			t.Fatal(err)
		}
		last = m.Operation
	}
}
