package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/backupd/backupd/internal/crafted"
	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/local"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// maxRSS is the bound on the daemon's peak resident set (KiB).
const maxRSS = 256 << 10

// outcome is what one evil call must do.
type outcome struct {
	kind string     // "clean", "warned", "failed", "unlisted", "problem", "missing"
	code codes.Code // of a failed operation or call
}

var (
	clean    = outcome{kind: "clean"}    // succeeds, no warning
	warned   = outcome{kind: "warned"}   // succeeds; the daemon logs a warning naming the object
	unlisted = outcome{kind: "unlisted"} // ListSnapshots lists the snapshot as unreadable, naming it
	problem  = outcome{kind: "problem"}  // CheckRepository: ok false, a problem naming the object
	notRun   = outcome{kind: "-"}        // not made: the index is loaded as by the restore, at seconds each
	dataLoss = outcome{"failed", codes.DataLoss}
	refused  = outcome{"failed", codes.FailedPrecondition} // beyond the limits of a restore
)

func (o outcome) String() string {
	if o.kind == "failed" {
		return o.code.String()
	}
	return o.kind
}

// daemonCalls are made, in this order, for every attack: the backup last,
// since it may mend what it finds (an index object it writes again).
var daemonCalls = []string{"restore", "list", "check", "backup"}

// daemonOutcomes says, per attack, what each of daemonCalls must do: as
// backupctl's (craftedOutcomes there), through the API.
var daemonOutcomes = map[string][4]outcome{
	//                     restore   list      check    backup
	"index-bomb":         {warned, clean, problem, warned},
	"index-bombs-4":      {warned, clean, notRun, notRun},
	"index-count":        {warned, clean, problem, warned},
	"index-at-limits":    {clean, clean, notRun, notRun},
	"index-rawlen-4GiB":  {warned, clean, problem, warned},
	"index-truncated":    {clean, clean, problem, clean}, // read intact by the open repository before (see TestDamagedIndexObjectAgainstDaemon)
	"pack-trailer-4GiB":  {warned, clean, problem, warned},
	"pack-truncated":     {dataLoss, clean, problem, clean},
	"treepack-truncated": {dataLoss, clean, problem, warned},
	"snapshot-truncated": {dataLoss, unlisted, problem, warned},
	"expansion-bomb":     {refused, clean, problem, clean},
	"depth-bomb":         {refused, clean, problem, clean},
	"tree-nodes":         {dataLoss, clean, problem, warned},
	"tree-count":         {dataLoss, clean, problem, warned},
	"blob-1000x":         {dataLoss, clean, problem, clean},
	"file-size":          {dataLoss, clean, problem, clean},
	"snapshot-100MB":     {dataLoss, unlisted, problem, warned},
	"snapshot-1e6-tags":  {dataLoss, unlisted, problem, warned},
	"snapshot-65-tags":   {dataLoss, unlisted, problem, warned},
	"config-10MB":        {dataLoss, dataLoss, dataLoss, dataLoss},
}

// writeWorkspace fills dir with a small workspace: files, a subdirectory
// and 2 MiB of random data.
func writeWorkspace(t *testing.T, dir string) {
	t.Helper()
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "a.txt"), []byte("alpha\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "sub", "b.txt"), []byte("beta\n"), 0o644)
	writeRandom(t, filepath.Join(dir, "data.bin"), 2<<20, 7)
}

// ownerStorage opens one owner's storage in the daemon's store.
func (d *proc) ownerStorage(owner string) storage.Storage {
	d.t.Helper()
	root, err := local.New(d.store)
	if err != nil {
		d.t.Fatal(err)
	}
	st, err := placement.NewPrefixPerOwner(root).Owner(context.Background(), owner, false)
	if err != nil {
		d.t.Fatal(err)
	}
	return st
}

// opTimeout bounds one operation of these tests: a hang fails, it does
// not stall the test.
const opTimeout = 2 * time.Minute

// follow watches an operation to its end, and returns once the daemon's
// log of it is all read (proc.loggedEnd).
func (d *proc) follow(op *pb.Operation) (*pb.Operation, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	stream, err := d.client.WatchOperation(ctx, &pb.WatchOperationRequest{OperationId: op.Id})
	if err != nil {
		return nil, err
	}
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return op, d.loggedEnd(op.Id)
		}
		if err != nil {
			return nil, err
		}
		op = m.Operation
	}
}

// backupOf runs a backup of path for owner's workspace w to its end.
func (d *proc) backupOf(owner, path string) (*pb.Operation, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	resp, err := d.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: owner, Workspace: "w", Path: path})
	if err != nil {
		return nil, err
	}
	return d.follow(resp.Operation)
}

// restoreOf runs a restore of owner's workspace w (latest, or snapshot)
// into path to its end.
func (d *proc) restoreOf(owner, snapshot, path string) (*pb.Operation, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	resp, err := d.client.RestoreWorkspace(ctx, &pb.RestoreWorkspaceRequest{Owner: owner, Workspace: "w", SnapshotId: snapshot, Path: path})
	if err != nil {
		return nil, err
	}
	return d.follow(resp.Operation)
}

func succeeded(op *pb.Operation, err error) error {
	switch {
	case err != nil:
		return err
	case op.State != pb.OperationState_OPERATION_STATE_SUCCEEDED:
		return fmt.Errorf("%v %v: %s: %s", op.Kind, op.State, codes.Code(op.ErrorCode), op.ErrorMessage)
	}
	return nil
}

// peakRSS returns the daemon's peak resident set (VmHWM, KiB) since it
// started or since the last reset, and with reset starts a new peak from
// its current resident set (where the kernel allows: /proc/PID/clear_refs).
func (d *proc) peakRSS(reset bool) int64 {
	kb := d.procStatus("VmHWM")
	if reset {
		os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", d.cmd.Process.Pid), []byte("5"), 0) // not allowed everywhere: then peaks add up
	}
	return kb
}

// procStatus returns a field of the daemon's /proc/PID/status, in KiB.
func (d *proc) procStatus(field string) int64 {
	d.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		d.t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				d.t.Fatal(err)
			}
			return kb
		}
	}
	d.t.Fatalf("no %s in /proc/%d/status", field, d.cmd.Process.Pid)
	return 0
}

// rss returns the daemon's resident set (VmRSS, KiB).
func (d *proc) rss() int64 { return d.procStatus("VmRSS") }

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// logSince returns the daemon's log lines from offset on.
func (d *proc) logSince(offset int) string { return d.log()[offset:] }

// goodLoop is owner "good" backing up and restoring in a loop, every
// restore checked, until the first failure or stop.
type goodLoop struct {
	stop, done chan struct{}
	stopOnce   sync.Once
	changed    chan struct{} // a cycle succeeded (buffered: never blocks the loop)

	mu     sync.Mutex
	last   time.Time // when the newest successful cycle began
	cycles int
	err    error // the first failure; the loop ends there
}

// goodOwner starts owner "good"'s loop.
func (d *proc) goodOwner() *goodLoop {
	g := &goodLoop{stop: make(chan struct{}), done: make(chan struct{}), changed: make(chan struct{}, 1)}
	src := filepath.Join(d.root, "good-src")
	writeWorkspace(d.t, src)
	go func() {
		defer close(g.done)
		for n := 0; ; n++ {
			select {
			case <-g.stop:
				return
			default:
			}
			start := time.Now()
			err := d.goodCycle(src, n)
			g.mu.Lock()
			if err != nil {
				g.err = err
			} else {
				g.last, g.cycles = start, g.cycles+1
			}
			g.mu.Unlock()
			if err != nil {
				return
			}
			select {
			case g.changed <- struct{}{}:
			default:
			}
		}
	}()
	return g
}

// goodCycle backs up the good owner's workspace with a new file content
// and restores that snapshot, checking the file.
func (d *proc) goodCycle(src string, n int) error {
	content := fmt.Sprintf("cycle %d\n", n)
	os.WriteFile(filepath.Join(src, "sub", "cycle.txt"), []byte(content), 0o644)
	op, err := d.backupOf("good", src)
	if err := succeeded(op, err); err != nil {
		return fmt.Errorf("good owner's backup %d: %w", n, err)
	}
	dst := filepath.Join(d.root, fmt.Sprintf("good-dst-%d", n))
	defer os.RemoveAll(dst)
	if err := succeeded(d.restoreOf("good", op.Result.SnapshotId, dst)); err != nil {
		return fmt.Errorf("good owner's restore %d: %w", n, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "sub", "cycle.txt")); string(b) != content {
		return fmt.Errorf("good owner's restore %d: cycle.txt = %q, want %q", n, b, content)
	}
	return nil
}

// succeededAfter waits until a cycle that began after t has succeeded, and
// fails with the loop's failure if it fails first.
func (g *goodLoop) succeededAfter(t time.Time) error {
	for {
		g.mu.Lock()
		last, err := g.last, g.err
		g.mu.Unlock()
		switch {
		case err != nil:
			return err
		case last.After(t):
			return nil
		}
		select {
		case <-g.changed:
		case <-g.done:
			g.mu.Lock()
			err := g.err
			g.mu.Unlock()
			if err == nil {
				err = errors.New("the good owner's loop stopped")
			}
			return err
		}
	}
}

// end stops the loop and returns how many cycles succeeded and its failure.
func (g *goodLoop) end() (int, error) {
	g.stopOnce.Do(func() { close(g.stop) })
	<-g.done
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.cycles, g.err
}

// TestCraftedObjectsAgainstDaemon plants every crafted object in a
// repository of its own evil owner, made by a backup through the daemon,
// and runs a restore, a backup, a listing and a check of that owner
// through the API, while owner "good" backs up and restores in a loop:
// every evil call fails with a clear error naming the object (or works
// around it, with a warning naming it in the log), every good cycle
// succeeds, one after each attack at least, the daemon's peak RSS stays
// under 256 MiB, and the daemon still serves at the end.
func TestCraftedObjectsAgainstDaemon(t *testing.T) {
	d := startWith(t, "", "--shutdown-grace", "30s")
	if len(daemonOutcomes) != len(crafted.Attacks) {
		t.Fatalf("%d outcomes for %d attacks", len(daemonOutcomes), len(crafted.Attacks))
	}
	evilSrc := filepath.Join(d.root, "evil-src")
	writeWorkspace(t, evilSrc)
	objects := map[string]crafted.Object{}
	for _, a := range crafted.Attacks {
		owner := "evil-" + a.Name
		if err := succeeded(d.backupOf(owner, evilSrc)); err != nil {
			t.Fatalf("backup of %s: %v", owner, err)
		}
		obj, err := a.Plant(context.Background(), d.ownerStorage(owner), owner, "w")
		if err != nil {
			t.Fatal(err)
		}
		objects[a.Name] = obj
	}

	good := d.goodOwner()
	defer good.end()
	if err := good.succeededAfter(time.Time{}); err != nil {
		t.Fatal(err)
	}
	peak := d.peakRSS(true)
	// The costly attacks last: the runtime keeps what a peak took for a
	// while, which would blur the others' peaks.
	attacks := slices.Clone(crafted.Attacks)
	slices.SortStableFunc(attacks, func(a, b crafted.Attack) int { return cmpBool(a.Costly, b.Costly) })
	for _, a := range attacks {
		want, ok := daemonOutcomes[a.Name]
		if !ok {
			t.Fatalf("no outcomes for attack %s", a.Name)
		}
		owner, obj := "evil-"+a.Name, objects[a.Name]
		start, from := time.Now(), d.rss()
		for i, call := range daemonCalls {
			if want[i] == notRun {
				continue
			}
			line, wrong := d.evilCall(call, owner, obj, want[i])
			t.Logf("%-18s %-7s %-19v %s", a.Name, call, want[i], line)
			if wrong != "" {
				t.Errorf("%s: %s: %s (want %v; object %v)", a.Name, call, wrong, want[i], obj)
			}
		}
		end := time.Now()
		// The good owner's cycles, running all along, succeed, and one
		// begun after the attack too.
		if err := good.succeededAfter(end); err != nil {
			t.Fatalf("after %s: %v", a.Name, err)
		}
		rss := d.peakRSS(true)
		peak = max(peak, rss)
		t.Logf("%-18s daemon peak RSS %d MiB (from %d MiB) over the attack (%.1fs) and a good cycle", a.Name, rss>>10, from>>10, end.Sub(start).Seconds())
		if rss >= maxRSS {
			t.Errorf("%s: daemon peak RSS %d MiB, over 256 MiB", a.Name, rss>>10)
		}
	}
	cycles, err := good.end()
	if err != nil {
		t.Fatal(err)
	}
	if d.cmd.ProcessState != nil {
		t.Fatalf("backupd exited: %v", d.cmd.ProcessState)
	}
	h, err := healthpb.NewHealthClient(d.conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: "backupd.v1.BackupService"})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health at the end: %v %v", h, err)
	}
	t.Logf("daemon peak RSS over the whole run: %d MiB; the good owner's %d backup and restore cycles all succeeded", peak>>10, cycles)
}

// evilCall makes one call for an evil owner and judges it: the line that
// shows the outcome, and what is wrong ("" if nothing).
func (d *proc) evilCall(call, owner string, obj crafted.Object, want outcome) (line, wrong string) {
	logStart := len(d.log())
	warning := func() string {
		for _, l := range strings.Split(d.logSince(logStart), "\n") {
			if strings.Contains(l, `"level":"warn"`) && obj.NamedIn(l) {
				return l
			}
		}
		return ""
	}
	var op *pb.Operation
	var err error
	switch call {
	case "restore":
		op, err = d.restoreOf(owner, "", filepath.Join(d.root, owner+"-dst"))
	case "backup":
		op, err = d.backupOf(owner, filepath.Join(d.root, "evil-src"))
	case "list":
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		resp, err := d.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: owner, Workspace: "w"})
		switch {
		case want.kind == "failed":
			return judgeRPC(err, obj, want)
		case err != nil:
			return "", fmt.Sprintf("ListSnapshots: %v", err)
		}
		var bad []string
		for _, u := range resp.UnreadableSnapshots {
			bad = append(bad, u.Id+": "+u.Error)
		}
		line = fmt.Sprintf("%d snapshots, %d unreadable %s", len(resp.Snapshots), len(bad), strings.Join(bad, "; "))
		if want.kind == "unlisted" {
			if len(bad) != 1 || !obj.NamedIn(bad[0]) {
				return line, "the snapshot is not listed as unreadable, named"
			}
		} else if len(bad) != 0 || len(resp.Snapshots) == 0 {
			return line, "unreadable snapshots, or none listed"
		}
		return line, ""
	case "check":
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		resp, err := d.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: owner, ReadData: true})
		if err == nil {
			// The check logs what its load of the index finds: those
			// lines are not the next call's.
			if err := d.loggedEnd(resp.Operation.GetId()); err != nil {
				return "", err.Error()
			}
		}
		switch {
		case want.kind == "failed":
			return judgeRPC(err, obj, want)
		case err != nil:
			return "", fmt.Sprintf("CheckRepository: %v", err)
		case resp.Ok || len(resp.Problems) == 0:
			return "ok", "check found no problem"
		}
		line = resp.Problems[0]
		for _, p := range resp.Problems {
			if obj.NamedIn(p) {
				if want.kind == "missing" {
					return p, "a problem names the index object"
				}
				return p, ""
			}
			if want.kind == "missing" && !strings.Contains(p, "missing from storage") && p != "more not shown" {
				return p, "a problem other than a missing pack"
			}
		}
		if want.kind == "missing" {
			return line, ""
		}
		return line, "no problem names the object"
	}
	if err != nil {
		return "", fmt.Sprintf("%s: %v", call, err)
	}
	switch want.kind {
	case "failed":
		line = fmt.Sprintf("%v: %s", codes.Code(op.ErrorCode), op.ErrorMessage)
		if op.State != pb.OperationState_OPERATION_STATE_FAILED || codes.Code(op.ErrorCode) != want.code || !obj.NamedIn(op.ErrorMessage) {
			return line, fmt.Sprintf("ended %v, want FAILED with %v and a message naming the object", op.State, want.code)
		}
	case "warned", "clean":
		line = fmt.Sprintf("%v", op.State)
		if op.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
			return fmt.Sprintf("%v %v: %s", op.State, codes.Code(op.ErrorCode), op.ErrorMessage), "did not succeed"
		}
		switch w := warning(); {
		case want.kind == "warned" && w == "":
			return line, "no warning naming the object in the log"
		case want.kind == "clean" && w != "":
			return line, "a warning naming the object in the log: " + w
		case w != "":
			line += ", log: " + w
		}
	}
	return line, ""
}

// judgeRPC judges a call that must fail with want.code, naming the object.
func judgeRPC(err error, obj crafted.Object, want outcome) (line, wrong string) {
	st, _ := status.FromError(err)
	line = fmt.Sprintf("%v: %s", st.Code(), st.Message())
	if err == nil || st.Code() != want.code || !obj.NamedIn(st.Message()) {
		return line, fmt.Sprintf("want %v naming the object", want.code)
	}
	return line, ""
}

// TestDamagedIndexObjectAgainstDaemon is the acceptance of a damaged index
// object through the daemon: backups and restores of the owner still work,
// each with a warning in the log naming the object (unless the daemon read
// it intact before: see below); CheckRepository
// reports it (ok false); after `backupctl repair index` beside the running
// daemon, the check is clean and the warnings stop.
func TestDamagedIndexObjectAgainstDaemon(t *testing.T) {
	d := startWith(t, "", "--shutdown-grace", "30s")
	for _, name := range []string{"index-truncated", "index-bomb"} {
		t.Run(name, func(t *testing.T) {
			var attack crafted.Attack
			for _, a := range crafted.Attacks {
				if a.Name == name {
					attack = a
				}
			}
			owner := "o-" + name
			src := filepath.Join(d.root, owner+"-src")
			writeWorkspace(t, src)
			first, err := d.backupOf(owner, src)
			if err := succeeded(first, err); err != nil {
				t.Fatal(err)
			}
			obj, err := attack.Plant(context.Background(), d.ownerStorage(owner), owner, "w")
			if err != nil {
				t.Fatal(err)
			}
			warned := func(what string, logStart int) {
				t.Helper()
				for _, l := range strings.Split(d.logSince(logStart), "\n") {
					if strings.Contains(l, `"level":"warn"`) && obj.NamedIn(l) {
						t.Logf("%s: %s", what, l)
						return
					}
				}
				t.Fatalf("%s: no warning naming %v in the log", what, obj)
			}
			os.WriteFile(filepath.Join(src, "sub", "new.txt"), []byte("after the damage\n"), 0o644)
			logStart := len(d.log())
			second, err := d.backupOf(owner, src)
			if err := succeeded(second, err); err != nil {
				t.Fatal(err)
			}
			// The daemon keeps the owner's repository open: an index object
			// it read intact before it was damaged in place (the backup's
			// own, truncated) it does not read again, and it has all its
			// entries; CheckRepository, which loads the index from storage,
			// reports it. A damaged object it has not read is named at every
			// operation, as long as it is there.
			readBefore := name == "index-truncated"
			if !readBefore {
				warned("backup", logStart)
			}
			for i, op := range []*pb.Operation{first, second} {
				dst := filepath.Join(d.root, fmt.Sprintf("%s-dst-%d", owner, i))
				logStart := len(d.log())
				if err := succeeded(d.restoreOf(owner, op.Result.SnapshotId, dst)); err != nil {
					t.Fatal(err)
				}
				if !readBefore {
					warned("restore", logStart)
				}
				for _, p := range []string{"a.txt", "sub/b.txt", "data.bin"} {
					a, _ := os.ReadFile(filepath.Join(src, p))
					b, err := os.ReadFile(filepath.Join(dst, p))
					if err != nil || !bytes.Equal(a, b) {
						t.Fatalf("restore %d: %s differs: %v", i, p, err)
					}
				}
			}
			check := func() *pb.CheckRepositoryResponse {
				t.Helper()
				ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
				defer cancel()
				resp, err := d.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: owner, ReadData: true})
				if err != nil {
					t.Fatal(err)
				}
				if err := d.loggedEnd(resp.Operation.GetId()); err != nil {
					t.Fatal(err)
				}
				return resp
			}
			if resp := check(); resp.Ok || len(resp.Problems) != 1 || !obj.NamedIn(resp.Problems[0]) {
				t.Fatalf("check with a damaged index object: ok %v, problems %q", resp.Ok, resp.Problems)
			} else {
				t.Logf("check: %s", resp.Problems[0])
			}
			out, err := exec.Command(backupctl, "repair", "index", "-r", "file://"+d.store, "--owner", owner, "--no-cache").CombinedOutput()
			if err != nil {
				t.Fatalf("backupctl repair index: %v\n%s", err, out)
			}
			t.Logf("backupctl repair index: %s", strings.TrimSpace(string(out)))
			if resp := check(); !resp.Ok || len(resp.Problems) != 0 || len(resp.Warnings) != 0 || resp.Snapshots != 2 {
				t.Fatalf("check after repair: %+v", resp)
			}
			logStart = len(d.log())
			if err := succeeded(d.restoreOf(owner, "", filepath.Join(d.root, owner+"-dst-after"))); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(d.logSince(logStart), `"level":"warn"`) {
				t.Fatalf("restore after repair warns:\n%s", d.logSince(logStart))
			}
		})
	}
}
