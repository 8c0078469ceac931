package daemon

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// pathOfLen is a path of exactly n bytes: base and then components of at
// most 200 bytes.
func pathOfLen(base string, n int) string {
	var b strings.Builder
	b.WriteString(base)
	for b.Len() < n {
		left := n - b.Len() - 1 // after the slash
		c := min(left, 200)
		if left-c == 1 { // no room for another "/x"
			c--
		}
		b.WriteString("/" + strings.Repeat("p", c))
	}
	return b.String()
}

// mappings is n valid id mappings.
func mappings(n int) []*pb.IdMapping {
	out := make([]*pb.IdMapping, n)
	for i := range out {
		out[i] = &pb.IdMapping{ContainerId: uint32(i), HostId: 100000 + uint32(i), Count: 1}
	}
	return out
}

func repeated(v string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func tagsOf(n int) map[string]string {
	m := map[string]string{}
	for i := range n {
		m["k"+strings.Repeat("x", i)] = "v"
	}
	return m
}

// TestFieldLimits sends every string field of the API (and every
// repeated one) at its limit, which is accepted, one byte (or entry) over
// it, which is INVALID_ARGUMENT naming the field, and, for strings, at
// 1 MiB, which is refused with a short message. The daemon's log never
// holds a long line.
func TestFieldLimits(t *testing.T) {
	logw := &syncBuffer{b: &bytes.Buffer{}}
	logger = func(t *testing.T) *zap.Logger {
		return zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(logw), zap.DebugLevel))
	}
	t.Cleanup(func() { logger = testLogger })
	e := newEnv(t, nil)
	ctx := context.Background()
	ws := e.workspace("ws", 50, 10)
	if err := os.MkdirAll(pathOfLen(e.root, maxPath), 0o755); err != nil {
		t.Fatal(err)
	}
	str := func(c string) func(int) string { return func(n int) string { return strings.Repeat(c, n) } }

	backup := func(mut func(*pb.BackupWorkspaceRequest, int)) func(int) (string, error) {
		return func(n int) (string, error) {
			r := &pb.BackupWorkspaceRequest{Owner: "o", Workspace: "w", Path: ws}
			mut(r, n)
			resp, err := e.client.BackupWorkspace(ctx, r)
			return resp.GetOperation().GetId(), err
		}
	}
	restore := func(mut func(*pb.RestoreWorkspaceRequest, int)) func(int) (string, error) {
		return func(n int) (string, error) {
			r := &pb.RestoreWorkspaceRequest{Owner: "r", Workspace: "w", Path: filepath.Join(e.root, "new")}
			mut(r, n)
			resp, err := e.client.RestoreWorkspace(ctx, r)
			return resp.GetOperation().GetId(), err
		}
	}
	noOp := func(call func(int) error) func(int) (string, error) {
		return func(n int) (string, error) { return "", call(n) }
	}
	token := func(n int) string { // a page token of n bytes, well-formed when n is a multiple of 4
		return base64.RawURLEncoding.EncodeToString([]byte("1/" + strings.Repeat("k", n)))[:n]
	}
	opID := func(n int) string { return "op-" + strings.Repeat("0", n-3) }
	// lifecycle sends a request that starts an operation (accepted at the
	// limit, whatever the operation then finds).
	lifecycle := func(call func(n int) (*pb.Operation, error)) func(int) (string, error) {
		return func(n int) (string, error) {
			op, err := call(n)
			return op.GetId(), err
		}
	}
	keep1 := &pb.RetentionPolicy{KeepLast: 1}

	cases := []struct {
		name, field string
		limit       int
		count       bool // a number of entries, not bytes: no 1 MiB case
		send        func(n int) (string, error)
	}{
		{"backup request_id", "request_id", maxName, false, backup(func(r *pb.BackupWorkspaceRequest, n int) { r.RequestId = str("b")(n) })},
		{"backup owner", "owner", maxName, false, backup(func(r *pb.BackupWorkspaceRequest, n int) { r.Owner = str("o")(n) })},
		{"backup workspace", "workspace", maxName, false, backup(func(r *pb.BackupWorkspaceRequest, n int) { r.Workspace = str("w")(n) })},
		{"backup path", "path", maxPath, false, backup(func(r *pb.BackupWorkspaceRequest, n int) { r.Path = pathOfLen(e.root, n) })},
		{"backup tag key", "tags", maxTagKey, false, backup(func(r *pb.BackupWorkspaceRequest, n int) { r.Tags = map[string]string{str("k")(n): "v"} })},
		{"backup tag value", "tags", maxTagValue, false, backup(func(r *pb.BackupWorkspaceRequest, n int) { r.Tags = map[string]string{"k": str("v")(n)} })},
		{"backup tag count", "tags", maxTags, true, backup(func(r *pb.BackupWorkspaceRequest, n int) { r.Tags = tagsOf(n) })},
		{"backup exclude", "excludes", maxPattern, false, backup(func(r *pb.BackupWorkspaceRequest, n int) { r.Excludes = []string{"x", str("a")(n)} })},
		{"backup exclude count", "excludes", maxPatterns, true, backup(func(r *pb.BackupWorkspaceRequest, n int) { r.Excludes = repeated("a", n) })},
		{"backup parent", "parent_snapshot_id", maxSnapshotID, false, backup(func(r *pb.BackupWorkspaceRequest, n int) { r.ParentSnapshotId = str("a")(n) })},
		{"backup uid_mappings", "uid_mappings", maxIDMappings, true, backup(func(r *pb.BackupWorkspaceRequest, n int) { r.UidMappings = mappings(n) })},
		{"backup gid_mappings", "gid_mappings", maxIDMappings, true, backup(func(r *pb.BackupWorkspaceRequest, n int) { r.GidMappings = mappings(n) })},

		{"restore request_id", "request_id", maxName, false, restore(func(r *pb.RestoreWorkspaceRequest, n int) { r.RequestId = str("r")(n) })},
		{"restore owner", "owner", maxName, false, restore(func(r *pb.RestoreWorkspaceRequest, n int) { r.Owner = str("q")(n) })},
		{"restore workspace", "workspace", maxName, false, restore(func(r *pb.RestoreWorkspaceRequest, n int) { r.Workspace = str("w")(n) })},
		{"restore snapshot_id", "snapshot_id", maxSnapshotID, false, restore(func(r *pb.RestoreWorkspaceRequest, n int) { r.SnapshotId = str("a")(n) })},
		{"restore path", "path", maxPath, false, restore(func(r *pb.RestoreWorkspaceRequest, n int) { r.Path = pathOfLen(filepath.Join(e.root, "r"), n) })},
		{"restore include", "includes", maxInclude, false, restore(func(r *pb.RestoreWorkspaceRequest, n int) { r.Includes = []string{"x", str("a")(n)} })},
		{"restore include count", "includes", maxIncludes, true, restore(func(r *pb.RestoreWorkspaceRequest, n int) { r.Includes = repeated("a", n) })},
		{"restore uid_mappings", "uid_mappings", maxIDMappings, true, restore(func(r *pb.RestoreWorkspaceRequest, n int) { r.UidMappings = mappings(n) })},
		{"restore gid_mappings", "gid_mappings", maxIDMappings, true, restore(func(r *pb.RestoreWorkspaceRequest, n int) { r.GidMappings = mappings(n) })},

		{"get operation_id", "operation_id", maxOperationID, false, noOp(func(n int) error {
			_, err := e.client.GetOperation(ctx, &pb.GetOperationRequest{OperationId: opID(n)})
			return err
		})},
		{"cancel operation_id", "operation_id", maxOperationID, false, noOp(func(n int) error {
			_, err := e.client.CancelOperation(ctx, &pb.CancelOperationRequest{OperationId: opID(n)})
			return err
		})},
		{"watch operation_id", "operation_id", maxOperationID, false, noOp(func(n int) error {
			stream, err := e.client.WatchOperation(ctx, &pb.WatchOperationRequest{OperationId: opID(n)})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		})},
		{"list owner", "owner", maxName, false, noOp(func(n int) error {
			_, err := e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: str("o")(n)})
			return err
		})},
		{"list workspace", "workspace", maxName, false, noOp(func(n int) error {
			_, err := e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "o", Workspace: str("w")(n)})
			return err
		})},
		{"list page_token", "page_token", maxPageToken, false, noOp(func(n int) error {
			_, err := e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "o", PageToken: token(n)})
			return err
		})},
		{"delete owner", "owner", maxName, false, noOp(func(n int) error {
			_, err := e.client.DeleteSnapshot(ctx, &pb.DeleteSnapshotRequest{Owner: str("o")(n), Workspace: "w", SnapshotId: str("a")(64)})
			return err
		})},
		{"delete workspace", "workspace", maxName, false, noOp(func(n int) error {
			_, err := e.client.DeleteSnapshot(ctx, &pb.DeleteSnapshotRequest{Owner: "o", Workspace: str("w")(n), SnapshotId: str("a")(64)})
			return err
		})},
		{"delete snapshot_id", "snapshot_id", maxSnapshotID, false, noOp(func(n int) error {
			_, err := e.client.DeleteSnapshot(ctx, &pb.DeleteSnapshotRequest{Owner: "o", Workspace: "w", SnapshotId: str("a")(n)})
			return err
		})},
		{"check owner", "owner", maxName, false, noOp(func(n int) error {
			_, err := e.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: str("o")(n)})
			return err
		})},
		{"check request_id", "request_id", maxName, false, noOp(func(n int) error {
			_, err := e.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: "o", RequestId: str("c")(n)})
			return err
		})},

		{"forget request_id", "request_id", maxName, false, lifecycle(func(n int) (*pb.Operation, error) {
			resp, err := e.client.ForgetSnapshots(ctx, &pb.ForgetSnapshotsRequest{Owner: "o", RequestId: str("f")(n), Retention: keep1, DryRun: true})
			return resp.GetOperation(), err
		})},
		{"forget owner", "owner", maxName, false, lifecycle(func(n int) (*pb.Operation, error) {
			resp, err := e.client.ForgetSnapshots(ctx, &pb.ForgetSnapshotsRequest{Owner: str("o")(n), Retention: keep1, DryRun: true})
			return resp.GetOperation(), err
		})},
		{"forget workspace", "workspace", maxName, false, lifecycle(func(n int) (*pb.Operation, error) {
			resp, err := e.client.ForgetSnapshots(ctx, &pb.ForgetSnapshotsRequest{Owner: "o", Workspace: str("w")(n), Retention: keep1, DryRun: true})
			return resp.GetOperation(), err
		})},
		{"forget keep_tags rule", "retention.keep_tags", maxTagKey + 1 + maxTagValue, false, lifecycle(func(n int) (*pb.Operation, error) {
			tag := str("k")(maxTagKey) + "=" + str("v")(n-maxTagKey-1)
			resp, err := e.client.ForgetSnapshots(ctx, &pb.ForgetSnapshotsRequest{Owner: "o", Retention: &pb.RetentionPolicy{KeepTags: []string{tag}}, DryRun: true})
			return resp.GetOperation(), err
		})},
		{"forget keep_tags count", "retention.keep_tags", maxKeepTags, true, lifecycle(func(n int) (*pb.Operation, error) {
			resp, err := e.client.ForgetSnapshots(ctx, &pb.ForgetSnapshotsRequest{Owner: "o", Retention: &pb.RetentionPolicy{KeepTags: repeated("t", n)}, DryRun: true})
			return resp.GetOperation(), err
		})},
		{"prune request_id", "request_id", maxName, false, lifecycle(func(n int) (*pb.Operation, error) {
			resp, err := e.client.PruneRepository(ctx, &pb.PruneRepositoryRequest{Owner: "o", RequestId: str("p")(n), DryRun: true})
			return resp.GetOperation(), err
		})},
		{"prune owner", "owner", maxName, false, lifecycle(func(n int) (*pb.Operation, error) {
			resp, err := e.client.PruneRepository(ctx, &pb.PruneRepositoryRequest{Owner: str("o")(n), DryRun: true})
			return resp.GetOperation(), err
		})},
		{"delete-workspace request_id", "request_id", maxName, false, lifecycle(func(n int) (*pb.Operation, error) {
			resp, err := e.client.DeleteWorkspace(ctx, &pb.DeleteWorkspaceRequest{Owner: "o", Workspace: "none", RequestId: str("d")(n)})
			return resp.GetOperation(), err
		})},
		{"delete-workspace owner", "owner", maxName, false, lifecycle(func(n int) (*pb.Operation, error) {
			resp, err := e.client.DeleteWorkspace(ctx, &pb.DeleteWorkspaceRequest{Owner: str("o")(n), Workspace: "none"})
			return resp.GetOperation(), err
		})},
		{"delete-workspace workspace", "workspace", maxName, false, lifecycle(func(n int) (*pb.Operation, error) {
			resp, err := e.client.DeleteWorkspace(ctx, &pb.DeleteWorkspaceRequest{Owner: "o", Workspace: str("w")(n)})
			return resp.GetOperation(), err
		})},
		// Owners of their own: these delete everything of the owner.
		{"delete-owner request_id", "request_id", maxName, false, lifecycle(func(n int) (*pb.Operation, error) {
			resp, err := e.client.DeleteOwner(ctx, &pb.DeleteOwnerRequest{Owner: "gone", RequestId: str("x")(n)})
			return resp.GetOperation(), err
		})},
		{"delete-owner owner", "owner", maxName, false, lifecycle(func(n int) (*pb.Operation, error) {
			resp, err := e.client.DeleteOwner(ctx, &pb.DeleteOwnerRequest{Owner: str("g")(n)})
			return resp.GetOperation(), err
		})},
	}
	// A short refusal naming the field.
	refused := func(name string, n int, err error, field string) {
		t.Helper()
		if got := badField(err); got != field {
			t.Errorf("%s of %d: want InvalidArgument naming %s, got %s", name, n, field, trimmed(got))
			return
		}
		st, _ := status.FromError(err)
		desc := ""
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok {
				desc = br.FieldViolations[0].Description
			}
		}
		if len(st.Message()) >= 512 || len(desc) >= 512 {
			t.Errorf("%s of %d: a %d-byte message: %s", name, n, len(st.Message()), trimmed(st.Message()))
		}
	}
	for _, c := range cases {
		id, err := c.send(c.limit)
		if status.Code(err) == codes.InvalidArgument {
			t.Errorf("%s at its limit (%d) refused: %v", c.name, c.limit, trimmed(err.Error()))
		}
		if id != "" {
			e.watch(id, nil) // one at a time: the next may ask for the same workspace
		}
		if kind, _, _ := strings.Cut(c.name, " "); slices.Contains([]string{"backup", "restore", "forget", "prune", "delete-workspace", "delete-owner"}, kind) {
			if err != nil || id == "" {
				t.Errorf("%s at its limit (%d): no operation: %v", c.name, c.limit, err)
			}
		}
		over := []int{c.limit + 1}
		if !c.count {
			over = append(over, 1<<20)
		}
		for _, n := range over {
			id, err := c.send(n)
			refused(c.name, n, err, c.field)
			if id != "" {
				e.watch(id, nil)
			}
		}
	}
	// An error from below quoting a long value of the workspace's (here: a
	// 1 MiB line of its exclude file) is cut short too.
	bad := e.workspace("bad", 51, 10)
	write(t, filepath.Join(bad, ".backupdignore"), []byte("[x"+strings.Repeat("a", 1<<20-10)+"\n"))
	resp, err := e.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: "o", Workspace: "bad", Path: bad})
	if err != nil {
		t.Fatal(err)
	}
	last := lastOf(e.watch(resp.Operation.Id, nil))
	if last.State != pb.OperationState_OPERATION_STATE_FAILED || len(last.ErrorMessage) > maxMessage+100 || !strings.Contains(last.ErrorMessage, ".backupdignore") {
		t.Errorf("a backup with a 1 MiB exclude line: %v, a %d-byte message %s", last.State, len(last.ErrorMessage), trimmed(last.ErrorMessage))
	}
	// No log line holds more than a path at its limit and a message.
	for _, l := range strings.Split(logw.String(), "\n") {
		if len(l) > maxPath+maxMessage+1024 {
			t.Errorf("a %d-byte log line: %s", len(l), trimmed(l))
		}
	}
}

func trimmed(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}

// quote keeps messages short whatever the value holds.
func TestQuote(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"abc", `"abc"`},
		{"a\x00b\n", `"a\x00b\n"`},
		{"\xff", `"\xff"`},
		{strings.Repeat("a", 100), `"` + strings.Repeat("a", 100) + `"`},
		{strings.Repeat("a", 101), `"` + strings.Repeat("a", 100) + `"… (101 bytes)`},
		{strings.Repeat("\x00", 1000), `"` + strings.Repeat(`\x00`, 25) + `"… (1000 bytes)`},
		{strings.Repeat("é", 100), `"` + strings.Repeat("é", 50) + `"… (200 bytes)`},
	} {
		if got := quote(c.in); got != c.want {
			t.Errorf("quote(%.20q) = %s, want %s", c.in, got, c.want)
		}
	}
	long := strings.Repeat("x", 20000)
	if got := truncate(long); len(got) > maxMessage+32 || !strings.HasSuffix(got, "… (20000 bytes)") {
		t.Errorf("truncate: %d bytes ending %q", len(got), got[len(got)-20:])
	}
}
