package deploy

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"

	"github.com/backupd/backupd/deploy/internal/image"
	"github.com/backupd/backupd/internal/testservers"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// The daemon as the chart runs it: the binary from the image `make image`
// built, started with the DaemonSet container's command, arguments and
// environment and the ConfigMap's config file, on a node played by a
// temporary directory (each volume mounted at its path below it, host
// paths remapped there, ports moved to free ones on loopback), storage in
// the test MinIO as the restricted user of the minimal policy. It serves,
// its probes answer, and a workspace backs up and restores through its
// socket.
func TestRenderedDaemonBacksUpAndRestores(t *testing.T) {
	srv, bucket := minioBucket(t)
	d := runRendered(t, valueCase{files: []string{filepath.Join(chartDir, "values-minio.yaml")}, overrides: minioOverrides(srv, bucket)},
		map[string]map[string]string{"backupd-storage": {"accesskey": srv.UserAccessKey, "secretkey": srv.UserSecretKey}})
	sock, ok := strings.CutPrefix(d.cfg["listen"].(string), "unix://")
	if !ok {
		t.Fatalf("listen %v: the default values serve a unix socket", d.cfg["listen"])
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d.waitServing(ctx, conn)
	d.probe()
	root := d.cfg["workspace_roots"].([]any)[0].(string)
	pod := d.o.daemonSet.Spec.Template.Spec
	cmd, exited, logs := d.cmd, d.exited, d.logs

	// A workspace backs up and restores.
	ws := filepath.Join(root, "ws1")
	files := map[string]string{"README.md": "hello\n", "src/main.go": "package main\n", "node_modules/x/index.js": strings.Repeat("x", 300000)}
	for p, data := range files {
		os.MkdirAll(filepath.Join(ws, filepath.Dir(p)), 0o755)
		if err := os.WriteFile(filepath.Join(ws, p), []byte(data), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	os.Chown(filepath.Join(ws, "README.md"), 33333, 33333)
	client := pb.NewBackupServiceClient(conn)
	bk, err := client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{RequestId: "stop-ws1-1", Owner: "alice", Workspace: "ws1", Path: ws})
	if err != nil {
		t.Fatal(err)
	}
	done := follow(t, ctx, client, bk.Operation.Id)
	if done.State != pb.OperationState_OPERATION_STATE_SUCCEEDED || done.Result.Files != 3 {
		t.Fatalf("backup: %v", done)
	}
	snapshot := done.Result.SnapshotId
	dst := filepath.Join(root, "ws1-restored")
	rs, err := client.RestoreWorkspace(ctx, &pb.RestoreWorkspaceRequest{RequestId: "start-ws1-1", Owner: "alice", Workspace: "ws1", Path: dst})
	if err != nil {
		t.Fatal(err)
	}
	if done := follow(t, ctx, client, rs.Operation.Id); done.State != pb.OperationState_OPERATION_STATE_SUCCEEDED || done.Result.SnapshotId != snapshot {
		t.Fatalf("restore: %v", done)
	}
	for p, data := range files {
		got, err := os.ReadFile(filepath.Join(dst, p))
		if err != nil || !bytes.Equal(got, []byte(data)) {
			t.Errorf("restored %s: %v", p, err)
		}
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dst, "README.md"), &st); err != nil || st.Uid != 33333 || st.Mode&0o777 != 0o640 {
		t.Errorf("restored README.md: uid %d mode %o (%v)", st.Uid, st.Mode&0o777, err)
	}
	list, err := client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "alice"})
	if err != nil || len(list.Snapshots) != 1 {
		t.Fatalf("ListSnapshots: %v %v", list, err)
	}
	// The repository is in MinIO, under the URL's prefix, the owner's own.
	mc, err := minio.New(srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(srv.RootUser, srv.RootPassword, ""), Region: srv.Region})
	if err != nil {
		t.Fatal(err)
	}
	var objects int
	for obj := range mc.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		if !strings.HasPrefix(obj.Key, "backups/alice/") {
			t.Errorf("object %s outside the owner's prefix", obj.Key)
		}
		objects++
	}
	if objects < 3 {
		t.Errorf("%d objects in the bucket", objects)
	}

	// SIGTERM, as the kubelet sends it: a clean exit well within the
	// pod's grace period.
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second):
		t.Fatal("still running after terminationGracePeriodSeconds")
	}
	if !strings.Contains(logs.String(), `"msg":"shut down"`) {
		t.Error("no shut down in the log")
	}
}

// follow watches an operation to its end.
func follow(t *testing.T, ctx context.Context, c pb.BackupServiceClient, id string) *pb.Operation {
	t.Helper()
	stream, err := c.WatchOperation(ctx, &pb.WatchOperationRequest{OperationId: id})
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
			t.Fatalf("watch %s: %v", id, err)
		}
		last = m.Operation
	}
}

// syncBuffer is a bytes.Buffer that the process's output goroutines and
// the test share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// minioBucket starts (or shares) the test MinIO and makes a bucket the
// restricted user may use; a missing server is a failure, never a skip.
func minioBucket(t *testing.T) (*testservers.MinIOServer, string) {
	t.Helper()
	builtImage(t)
	for _, b := range []string{"minio", "mc"} {
		if _, err := os.Stat(filepath.Join(testservers.Dir(), "bin", b)); err != nil {
			t.Fatalf("%s is not installed (run `make test-servers`): %v", b, err)
		}
	}
	srv := testservers.MinIO(t)
	return srv, srv.NewBucket(t)
}

// minioOverrides point the chart's storage at bucket of srv.
func minioOverrides(srv *testservers.MinIOServer, bucket string) map[string]any {
	return map[string]any{"config": map[string]any{"storage": map[string]any{
		"url":   "minio://" + srv.Endpoint + "/" + bucket + "/backups?secure=false",
		"minio": map[string]any{"createbucket": false, "region": srv.Region},
	}, "shutdown_grace": "20s"}}
}

// renderedDaemon is the daemon of the rendered DaemonSet, running on the
// node a temporary directory plays.
type renderedDaemon struct {
	t      *testing.T
	o      *objects
	c      *corev1.Container
	cfg    map[string]any   // the config file as remapped
	ports  map[int32]string // container port: address on loopback
	byName map[string]int32 // container port by name
	cmd    *exec.Cmd
	exited chan error
	logs   *syncBuffer
}

// runRendered renders the chart with vc and starts its daemon; secrets
// are the Secrets the pod refers to, by name and key.
func runRendered(t *testing.T, vc valueCase, secrets map[string]map[string]string) *renderedDaemon {
	t.Helper()
	o := decode(t, render(t, vc))
	daemonConfig(t, o) // as rendered, before any remapping
	pod := o.daemonSet.Spec.Template.Spec
	c := container(t, o)
	d := &renderedDaemon{t: t, o: o, c: c, ports: map[int32]string{}, byName: map[string]int32{}, logs: &syncBuffer{}, exited: make(chan error, 1)}

	// The node: one directory per volume mount, at its mount path.
	node, err := os.MkdirTemp("", "bd-node-") // short: a socket path has 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(node) })
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	var mounts []string
	for _, m := range c.VolumeMounts {
		dir := filepath.Join(node, m.MountPath)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		mounts = append(mounts, m.MountPath)
		v := vols[m.Name]
		var files map[string]string
		switch {
		case v.ConfigMap != nil:
			files = o.configMaps[v.ConfigMap.Name].Data
		case v.Secret != nil:
			if files = secrets[v.Secret.SecretName]; files == nil {
				t.Fatalf("volume %s: no Secret %s", m.Name, v.Secret.SecretName)
			}
		case v.HostPath != nil, v.EmptyDir != nil:
		default:
			t.Fatalf("volume %s: a kind this node does not play", m.Name)
		}
		for k, data := range files {
			os.WriteFile(filepath.Join(dir, k), []byte(data), 0o600)
		}
	}
	remap := func(s string) string {
		for _, m := range mounts {
			if s == m || strings.HasPrefix(s, m+"/") {
				return filepath.Join(node, s)
			}
		}
		return s
	}

	// The ports: each container port to a free one on loopback.
	for _, p := range c.Ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		d.ports[p.ContainerPort] = l.Addr().String()
		d.byName[p.Name] = p.ContainerPort
		l.Close()
	}

	// The config file, remapped in place.
	if len(c.Args) != 2 || c.Args[0] != "--config" {
		t.Fatalf("args %q", c.Args)
	}
	cfgPath := remap(c.Args[1])
	if cfgPath == c.Args[1] {
		t.Fatalf("config %s is in no volume", c.Args[1])
	}
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &d.cfg); err != nil {
		t.Fatal(err)
	}
	var walk func(v any) any
	walk = func(v any) any {
		switch v := v.(type) {
		case map[string]any:
			for k, vv := range v {
				v[k] = walk(vv)
			}
		case []any:
			for i, vv := range v {
				v[i] = walk(vv)
			}
		case string:
			if p, ok := strings.CutPrefix(v, "unix://"); ok {
				return "unix://" + remap(p)
			}
			if strings.HasPrefix(v, ":") {
				n, _ := strconv.Atoi(v[1:])
				if a, ok := d.ports[int32(n)]; ok {
					return a
				}
				t.Fatalf("listen %s on no container port", v)
			}
			return remap(v)
		}
		return v
	}
	walk(d.cfg)
	if b, err = yaml.Marshal(d.cfg); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(cfgPath, b, 0o644)

	// The command: the image's entrypoint, run from the image's layer.
	if len(c.Command) != 1 || c.Command[0] != image.Entrypoint {
		t.Fatalf("command %q, image entrypoint %s", c.Command, image.Entrypoint)
	}
	d.cmd = exec.Command(filepath.Join(built.rootfs, c.Command[0]), c.Args[0], cfgPath)
	// The container's environment, and nothing of the test's.
	d.cmd.Env = []string{"PATH=" + image.BinDir}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			v, ok := secrets[e.ValueFrom.SecretKeyRef.Name][e.ValueFrom.SecretKeyRef.Key]
			if !ok {
				t.Fatalf("env %s: no key %s in the Secret %s", e.Name, e.ValueFrom.SecretKeyRef.Key, e.ValueFrom.SecretKeyRef.Name)
			}
			d.cmd.Env = append(d.cmd.Env, e.Name+"="+v)
		case e.ValueFrom == nil:
			d.cmd.Env = append(d.cmd.Env, e.Name+"="+remap(e.Value))
		default:
			t.Fatalf("env %s: a source this node does not play", e.Name)
		}
	}
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("backupd's log:\n%s", d.logs.String())
		}
	})
	return d
}

// waitServing waits until the health service says SERVING over conn.
func (d *renderedDaemon) waitServing(ctx context.Context, conn *grpc.ClientConn) {
	d.t.Helper()
	for {
		h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "backupd.v1.BackupService"})
		if err == nil && h.Status == healthpb.HealthCheckResponse_SERVING {
			return
		}
		select {
		case err := <-d.exited:
			d.t.Fatalf("backupd exited: %v", err)
		case <-ctx.Done():
			d.t.Fatalf("health: %v %v", h, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// probe does what the kubelet's liveness and readiness probes do.
func (d *renderedDaemon) probe() {
	d.t.Helper()
	for name, p := range map[string]*corev1.Probe{"liveness": d.c.LivenessProbe, "readiness": d.c.ReadinessProbe} {
		port := int32(p.HTTPGet.Port.IntValue())
		if port == 0 {
			port = d.byName[p.HTTPGet.Port.String()]
		}
		resp, err := http.Get("http://" + d.ports[port] + p.HTTPGet.Path)
		if err != nil {
			d.t.Fatalf("%s probe: %v", name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			d.t.Errorf("%s probe: %s", name, resp.Status)
		}
	}
}
