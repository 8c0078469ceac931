package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sumPrefix is the SHA-256 of the first n bytes of the file at path.
func sumPrefix(t *testing.T, path string, n int64) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, n); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// TestCheckpointStopChangesAndUndo: the session's and the stop's changes
// (two 1% changes, a new file and an append to it) are deterministic, the
// append keeps the file's first bytes, and undoing both leaves the tree as
// generated, mtimes included.
func TestCheckpointStopChangesAndUndo(t *testing.T) {
	dir, _ := tinyWorkspace(t)
	src, err := scanTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	before := mtimes(t, dir)
	copyDir := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("cp", "-a", dir, copyDir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	const grow = 5<<20 + 7 // two blocks, the last one short
	var ch, ch2 stopChanges
	for _, c := range []struct {
		root string
		ch   *stopChanges
	}{{dir, &ch}, {copyDir, &ch2}} {
		if err := sessionChange(c.root, src, grow, c.ch); err != nil {
			t.Fatal(err)
		}
	}
	big := filepath.Join(dir, sessionFile)
	if info, err := os.Stat(big); err != nil || info.Size() != grow || !ch.growths[0].created {
		t.Fatalf("session file: %v, %v", info, err)
	}
	head := sumPrefix(t, big, grow)
	for _, c := range []struct {
		root string
		ch   *stopChanges
	}{{dir, &ch}, {copyDir, &ch2}} {
		if err := stopChange(c.root, src, grow, c.ch); err != nil {
			t.Fatal(err)
		}
	}
	if info, err := os.Stat(big); err != nil || info.Size() != 2*grow || ch.growths[1].created {
		t.Fatalf("after the append: %v, %v", info, err)
	}
	if sumPrefix(t, big, grow) != head {
		t.Error("the append changed the file's first bytes")
	}
	a, b := ch.trees[0], ch.trees[1]
	for _, p := range b.modified {
		if slices.Contains(a.deleted, p) {
			t.Errorf("the stop's change edited %s, which the session deleted", p)
		}
	}
	for _, p := range b.added {
		if slices.Contains(a.added, p) {
			t.Errorf("both changes added %s", p)
		}
	}
	// The same changes on an identical copy make an identical tree.
	ta, err := scanTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := scanTree(copyDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := compareTrees(ta, tb); err != nil {
		t.Fatalf("the changes differ between two copies: %v", err)
	}
	if err := compareTrees(src, ta); err == nil {
		t.Fatal("the changes changed nothing")
	}

	if err := ch.undo(); err != nil {
		t.Fatal(err)
	}
	restored, err := scanTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := compareTrees(src, restored); err != nil {
		t.Fatalf("after undo: %v", err)
	}
	after := mtimes(t, dir)
	for p, mt := range before {
		if !after[p].Equal(mt) {
			t.Errorf("mtime of %s: %v, was %v", p, after[p], mt)
		}
	}
}

func TestCheckpointOptions(t *testing.T) {
	good := options{tools: []string{"backupd"}, scenarios: []string{"checkpoint-stop", "checkpoint-load"}, ckptGrow: 256 << 20, loadCPU: 8 << 30, loadIO: 512 << 20}
	if err := checkpointOptions(&good, true); err != nil {
		t.Fatal(err)
	}
	other := options{tools: []string{"restic"}, scenarios: []string{"backup"}}
	if err := checkpointOptions(&other, false); err != nil {
		t.Errorf("without checkpoint scenarios: %v", err)
	}
	stopOnly := options{tools: []string{"backupd", "restic"}, scenarios: []string{"backup", "checkpoint-stop"}, ckptGrow: 1}
	if err := checkpointOptions(&stopOnly, true); err != nil {
		t.Errorf("checkpoint-stop without the load's sizes: %v", err)
	}
	loadOnly := options{tools: []string{"backupd"}, scenarios: []string{"checkpoint-load"}, loadCPU: 8 << 30, loadIO: 512 << 20}
	if err := checkpointOptions(&loadOnly, false); err != nil {
		t.Errorf("checkpoint-load on a --data tree: %v", err)
	}
	for name, tc := range map[string]struct {
		change    func(o *options)
		generated bool
	}{
		"not generated": {func(o *options) {}, false},
		"no backupd":    {func(o *options) { o.tools = []string{"restic"} }, true},
		"no growth":     {func(o *options) { o.ckptGrow = 0 }, true},
		"tiny cpu":      {func(o *options) { o.loadCPU = 1000 }, true},
		"tiny io":       {func(o *options) { o.loadIO = 1 << 20 }, true},
	} {
		o := good
		tc.change(&o)
		if err := checkpointOptions(&o, tc.generated); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseProc(t *testing.T) {
	// A command name with spaces and parentheses; utime 250, stime 30.
	stat := "4242 (back up) (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 30 0 0 30 10 9 0 100 1000000 500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
	cpu, err := parseProcStatCPU(stat)
	if err != nil || cpu != 2800*time.Millisecond {
		t.Errorf("parseProcStatCPU = %v, %v; want 2.8s", cpu, err)
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 (x) S 1 1 1 1 1 1 1 1 1 1 u s"} {
		if _, err := parseProcStatCPU(bad); err == nil {
			t.Errorf("parseProcStatCPU(%q) succeeded", bad)
		}
	}
	io := "rchar: 123456\nwchar: 99\nsyscr: 5\nread_bytes: 4096\n"
	if n, err := parseProcIO(io, "rchar"); err != nil || n != 123456 {
		t.Errorf("rchar = %d, %v", n, err)
	}
	if _, err := parseProcIO(io, "cancelled_write_bytes"); err == nil {
		t.Error("a missing key was found")
	}
	// This process, for real.
	s, err := sampleProc(os.Getpid())
	if err != nil || s.rchar <= 0 {
		t.Errorf("sampleProc(self) = %+v, %v", s, err)
	}
}

func TestMountOf(t *testing.T) {
	info := `22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:21 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw
26 22 0:22 / /work/my\040disk rw,relatime - xfs /dev/vdb rw
27 22 0:23 / /work/my rw,relatime - btrfs /dev/vdc rw
`
	for path, want := range map[string]string{
		"/":                   "ext4 /dev/vda /",
		"/work/x":             "ext4 /dev/vda /",
		"/dev/shm/a/b":        "tmpfs tmpfs /dev/shm",
		"/dev/shmx":           "ext4 /dev/vda /",
		"/work/my disk/ws":    "xfs /dev/vdb /work/my disk",
		"/work/my/ws":         "btrfs /dev/vdc /work/my",
		"/work/my disk/../my": "xfs /dev/vdb /work/my disk", // not cleaned: the caller's path is absolute and clean
	} {
		fstype, source, point, ok := mountOf(info, path)
		if got := fstype + " " + source + " " + point; !ok || got != want {
			t.Errorf("mountOf(%q) = %q, %v; want %q", path, got, ok, want)
		}
	}
	if _, _, _, ok := mountOf("garbage\n", "/"); ok {
		t.Error("a mount found in garbage")
	}
	if d := describeFS(t.TempDir()); d == "unknown filesystem" {
		t.Errorf("describeFS(TempDir) = %q", d)
	}
}

func TestRepeatReaderAndWriteFsync(t *testing.T) {
	pattern := []byte("0123456789")
	got, err := io.ReadAll(io.NewSectionReader(repeatReader{pattern}, 7, 25))
	if err != nil || string(got) != "7890123456789012345678901" {
		t.Fatalf("section: %q, %v", got, err)
	}
	path := filepath.Join(t.TempDir(), "upload")
	const n = 25<<20 + 3 // wraps around the 16 MiB pattern
	big := uploadPattern()
	d, err := writeFsync(path, n, big)
	if err != nil || d <= 0 {
		t.Fatalf("writeFsync: %v, %v", d, err)
	}
	data, err := os.ReadFile(path)
	if err != nil || len(data) != n || !bytes.Equal(data[:len(big)], big) || !bytes.Equal(data[len(big):], big[:n-len(big)]) {
		t.Fatalf("written: %d bytes, %v", len(data), err)
	}
	if _, err := writeFsync(path, 1, big); err == nil {
		t.Error("writeFsync overwrote an existing file")
	}
}

func TestS3UploadBaseline(t *testing.T) {
	m, err := startMinIO(t.TempDir())
	if err != nil {
		t.Fatal(err) // `make test-servers` installs it, as for the storage tests
	}
	defer m.stop()
	bucket, err := m.newBucket()
	if err != nil {
		t.Fatal(err)
	}
	const n = 40<<20 + 5 // three parts
	serverBefore, err := m.cpu()
	if err != nil {
		t.Fatal(err)
	}
	clientBefore := selfCPU()
	d, err := s3Upload(context.Background(), m.url, m.user, m.password, bucket, "upload-baseline", n, uploadPattern())
	if err != nil || d <= 0 {
		t.Fatalf("s3Upload: %v, %v", d, err)
	}
	// The server's CPU and the client's, as checkpoint-stop reports them:
	// receiving and storing 40 MiB takes both some.
	serverAfter, err := m.cpu()
	if err != nil || serverAfter <= serverBefore {
		t.Errorf("MinIO's CPU time: %v before the upload, %v after (%v)", serverBefore, serverAfter, err)
	}
	if clientAfter := selfCPU(); clientAfter <= clientBefore {
		t.Errorf("the client's CPU time: %v before the upload, %v after", clientBefore, clientAfter)
	}
	out, err := m.mcRun("ls", "--recursive", "--incomplete", "bench/"+bucket)
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("left behind in the bucket: %q, %v", out, err)
	}
	out, err = m.mcRun("ls", "--recursive", "bench/"+bucket)
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("left behind in the bucket: %q, %v", out, err)
	}
}

// TestWorkloads runs both workloads as processes, as the harness does.
func TestWorkloads(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var digests []string
	for range 2 {
		m, out, err := measure([]string{workloadEnv + "=cpu"}, self, strconv.Itoa(8<<20))
		var res workloadResult
		if err == nil {
			err = json.Unmarshal(out, &res)
		}
		if err != nil || m.cpu <= 0 || res.Workers < 1 || len(res.Digest) != 64 {
			t.Fatalf("cpu workload: %+v, %+v, %v", m, res, err)
		}
		want, err := cpuWorkload(8<<20, res.Workers)
		if err != nil || want.Digest != res.Digest {
			t.Fatalf("in-process digest %s, %v; the process's %s", want.Digest, err, res.Digest)
		}
		digests = append(digests, res.Digest)
	}
	if digests[0] != digests[1] {
		t.Errorf("two cpu workloads: %v", digests)
	}

	dir := t.TempDir()
	_, out, err := measure([]string{workloadEnv + "=io"}, self, dir, strconv.Itoa(10<<20+3), strconv.Itoa(4<<20))
	var res workloadResult
	if err == nil {
		err = json.Unmarshal(out, &res)
	}
	if err != nil || res.WriteNS <= 0 || res.ReadNS <= 0 {
		t.Fatalf("io workload: %+v, %v", res, err)
	}
	var sizes []int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		info, _ := e.Info()
		sizes = append(sizes, info.Size())
	}
	if !slices.Equal(sizes, []int64{4 << 20, 4 << 20, 2<<20 + 3}) {
		t.Errorf("io workload wrote %v", sizes)
	}
	if _, _, err := measure([]string{workloadEnv + "=io"}, self, dir, "1", "1"); err == nil {
		t.Error("io workload overwrote its earlier files")
	}
	if _, _, err := measure([]string{workloadEnv + "=gpu"}, self); err == nil {
		t.Error("unknown workload ran")
	}
}

func TestWaitWorking(t *testing.T) {
	start := func(name string, args ...string) (*exec.Cmd, chan struct{}) {
		t.Helper()
		cmd := exec.Command(name, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-exited })
		return cmd, exited
	}
	// A reader that would run for minutes: working once it used CPU and
	// read 64 MiB.
	cmd, exited := start("dd", "if=/dev/zero", "of=/dev/null", "bs=1M", "count=1000000")
	w := working{cpu: 20 * time.Millisecond, rchar: 64 << 20}
	s, err := waitWorking(cmd.Process.Pid, w, exited, time.Minute)
	if err != nil || !w.reached(s) {
		t.Fatalf("waitWorking(dd) = %+v, %v", s, err)
	}
	// A process that ends before it does that much.
	cmd, exited = start("true")
	if _, err := waitWorking(cmd.Process.Pid, working{cpu: time.Hour}, exited, time.Minute); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("waitWorking(true) = %v", err)
	}
}

// TestMinIORestart: --fresh-minio's restart gives an empty server, a new
// process, at the same address, ready for the next cycle's bucket.
func TestMinIORestart(t *testing.T) {
	m, err := startMinIO(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { m.stop() }()
	old, err := m.newBucket()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s3Upload(context.Background(), m.url, m.user, m.password, old, "x", 1<<20, uploadPattern()); err != nil {
		t.Fatal(err)
	}
	url, pid := m.url, m.cmd.Process.Pid
	if err := m.restart(); err != nil {
		t.Fatal(err)
	}
	if m.url != url || m.cmd.Process.Pid == pid {
		t.Fatalf("after the restart: %s pid %d, want %s and a new process (was %d)", m.url, m.cmd.Process.Pid, url, pid)
	}
	if out, err := m.mcRun("ls", "bench/"+old); err == nil {
		t.Fatalf("bucket %s survived the restart: %s", old, out)
	}
	fresh, err := m.newBucket()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s3Upload(context.Background(), m.url, m.user, m.password, fresh, "x", 1<<20, uploadPattern()); err != nil {
		t.Fatalf("upload after the restart: %v", err)
	}
	// The same listing of a bucket that exists works: the one above
	// failed for the bucket, not for mc.
	if out, err := m.mcRun("ls", "bench/"+fresh); err != nil {
		t.Fatalf("mc ls of the new bucket: %v: %s", err, out)
	}
}
