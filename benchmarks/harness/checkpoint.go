package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Issue 13's checkpoint acceptance, as two opt-in scenarios of backupd
// alone (see benchmarks/README.md):
//
//   - checkpoint-stop: the stop backup after a checkpoint, and without one,
//     against an unchanged re-backup plus the upload of the bytes the stop
//     stored;
//   - checkpoint-load: a CPU-bound and an I/O-bound workload's own time with
//     and without a checkpoint running beside it.

// checkpointScenarios are the scenarios this file runs, after the cycles.
var checkpointScenarios = []string{"checkpoint-stop", "checkpoint-load"}

// Seeds of checkpoint-stop's changes: the 1% change the session makes
// before the checkpoint, and the one made between the checkpoint and the
// stop; and of the bytes of the big file the session creates and the stop
// appends to.
const (
	sessionSeed = 3
	stopSeed    = 4
)

// sessionFile is the file checkpoint-stop's session creates and its stop
// change appends to, relative to the workspace root.
const sessionFile = "data/session-grown.dat"

// ioLoadDir is the directory in the workspace the I/O workload writes its
// files into (removed after each run).
const ioLoadDir = ".bench-io-load"

// ckptWorking is when checkpoint-load starts the workload: the checkpoint
// has spent this much CPU and read this much of a workspace of size bytes
// (32 MiB, or a quarter of a smaller one). backupctl's start on a fresh
// repository reads next to nothing and takes a few tens of milliseconds.
func ckptWorking(size int64) working {
	return working{cpu: 100 * time.Millisecond, rchar: min(32<<20, size/4)}
}

// backupStats are the fields of `backupctl backup --json` these scenarios
// use.
type backupStats struct {
	SnapshotID     string `json:"snapshot_id"`
	Files          int64  `json:"files"`
	UnchangedFiles int64  `json:"unchanged_files"`
	Bytes          int64  `json:"bytes"`
	NewBytes       int64  `json:"new_bytes"`
	StoredBytes    int64  `json:"stored_bytes"`
	ResumedBytes   int64  `json:"resumed_bytes"`
	ObjectsWritten int64  `json:"objects_written"`
	Reread         int64  `json:"reread"`
	Changing       int64  `json:"changing"`
}

// read is the number of files the backup read (not unchanged since its
// parent).
func (s backupStats) read() int64 { return s.Files - s.UnchangedFiles }

// stopRun is one run of checkpoint-stop, with or without the checkpoint.
type stopRun struct {
	withCkpt          bool
	ckpt, stop, rebkp measurement
	ckptSt, stopSt    backupStats
	rebkpSt           backupStats
	upload            time.Duration // (b): stopSt.StoredBytes written to the store
	stopGrowth        int64         // what the stop added to the store (bytes of all its objects)
	ckptGrowth        int64         // what the checkpoint added
	// With --minio, CPU spent beside backupctl's: the server's during the
	// stop and during (b), and (b)'s own client (the harness) during it.
	stopServerCPU, uploadServerCPU, uploadClientCPU time.Duration
}

// baseline is (a) + (b): the unchanged re-backup plus the upload.
func (r stopRun) baseline() time.Duration { return r.rebkp.wall + r.upload }

// loadRun is one workload run of checkpoint-load.
type loadRun struct {
	workload string // "cpu" or "io"
	withCkpt bool
	m        measurement
	res      workloadResult
	// With the checkpoint: whether it was working before the workload
	// started and still running when it ended, and what it did meanwhile.
	overlap    bool
	ckptEnded  time.Duration // !overlap: how long after the workload's start the checkpoint ended
	ckptCPU    time.Duration
	ckptRead   int64
	ckptLeadIn time.Duration // from its start until it counted as working
}

// ckptBackup runs one backupctl backup of the dataset into r, timed, with
// extra arguments (--checkpoint), and returns its statistics. With
// --pprof, a recorded step named by profile writes its CPU profile as
// checkpoint-stop-PROFILE-runN.prof.
func (b *bench) ckptBackup(r *toolRun, profile string, extra ...string) (measurement, backupStats, error) {
	var args []string
	if b.opts.pprofDir != "" && b.recording && profile != "" {
		name := fmt.Sprintf("checkpoint-stop-%s-run%d.prof", profile, len(b.stopRuns)/2+1)
		args = []string{"--cpu-profile", filepath.Join(b.opts.pprofDir, name)}
	}
	args = append(args, "backup", "-r", r.arg, "--owner", "bench", "--workspace", "ws", "--cache-dir", r.cache, "--json")
	args = append(args, extra...)
	m, out, err := measure(r.env, b.backupctl, append(args, b.data)...)
	if err != nil {
		return m, backupStats{}, err
	}
	var st backupStats
	if err := json.Unmarshal(out, &st); err != nil || st.SnapshotID == "" {
		return m, st, fmt.Errorf("backupctl backup: bad JSON output %q: %v", out, err)
	}
	return m, st, nil
}

// serverCPU is the MinIO server's CPU time so far (0 without --minio, or
// when /proc cannot tell: the report then says nothing of it).
func (b *bench) serverCPU() time.Duration {
	if b.minio == nil {
		return 0
	}
	d, err := b.minio.cpu()
	if err != nil {
		b.warn(err.Error())
		return 0
	}
	return d
}

// storeSize is what the run's store holds, in bytes.
func (b *bench) storeSize(r *toolRun) (int64, error) {
	n, _, err := b.storedBytes(r)
	return n, err
}

// uploadBaseline times writing n bytes to r's store the cheapest way: with
// MinIO a parallel multipart PUT into the run's bucket, locally a write and
// fsync of one file next to the repository. With --net-limit the PUT goes
// through the same limited link as the tools.
func (b *bench) uploadBaseline(r *toolRun, n int64) (time.Duration, error) {
	if b.pattern == nil {
		b.pattern = uploadPattern()
	}
	if n <= 0 {
		return 0, nil
	}
	if b.minio != nil {
		return s3Upload(context.Background(), b.storeEndpoint(), b.minio.user, b.minio.password, r.bucket, "upload-baseline", n, b.pattern)
	}
	path := filepath.Join(r.dir, "upload-baseline")
	d, err := writeFsync(path, n, b.pattern)
	if rerr := os.Remove(path); err == nil {
		err = rerr
	}
	return d, err
}

// stopChanges are the changes checkpoint-stop makes to the dataset in one
// run; undo takes them back in the reverse order of their making (each
// restores directory mtimes as it found them).
type stopChanges struct {
	trees   []*treeChange
	growths []*fileGrowth
	undos   []func() error // in the order made
}

func (c *stopChanges) addTree(t *treeChange) {
	c.trees = append(c.trees, t)
	c.undos = append(c.undos, t.undo)
}

func (c *stopChanges) addGrowth(g *fileGrowth) {
	c.growths = append(c.growths, g)
	c.undos = append(c.undos, g.undo)
}

// undo undoes every change, the last made first, and stops at the first
// error (what follows would find the tree in a state it does not expect).
func (c *stopChanges) undo() error {
	for len(c.undos) > 0 {
		u := c.undos[len(c.undos)-1]
		c.undos = c.undos[:len(c.undos)-1]
		if err := u(); err != nil {
			return err
		}
	}
	return nil
}

// sessionChange is what the session does before the checkpoint: the 1%
// change with sessionSeed and a new file of grow bytes (incompressible).
func sessionChange(root string, src *treeInfo, grow int64, c *stopChanges) error {
	ch, err := changeTree(root, src, 1, sessionSeed)
	if err != nil {
		return fmt.Errorf("the session's 1%% change: %v", err)
	}
	c.addTree(ch)
	g, err := growFile(filepath.Join(root, sessionFile), grow, sessionSeed)
	if err != nil {
		return fmt.Errorf("the session's new file: %v", err)
	}
	c.addGrowth(g)
	return nil
}

// stopChange is what happens between the checkpoint and the stop: another
// 1% change (stopSeed) and grow bytes appended to the session's file.
func stopChange(root string, src *treeInfo, grow int64, c *stopChanges) error {
	ch, err := changeTree(root, afterChange(src, c.trees[0]), 1, stopSeed)
	if err != nil {
		return fmt.Errorf("the stop's 1%% change: %v", err)
	}
	c.addTree(ch)
	g, err := growFile(filepath.Join(root, sessionFile), grow, stopSeed)
	if err != nil {
		return fmt.Errorf("appending to the session's file: %v", err)
	}
	c.addGrowth(g)
	return nil
}

// stopCycle runs checkpoint-stop once, with or without the checkpoint, in
// the fresh run directory dir:
//
//  1. the first backup (untimed): the last stop;
//  2. the session's change: 1% of the files (changeTree, sessionSeed) and a
//     new file of --checkpoint-grow bytes;
//  3. with withCkpt, the checkpoint (timed);
//  4. the stop's change: another 1% (stopSeed) and --checkpoint-grow bytes
//     appended to the session's file;
//  5. the stop backup (timed);
//  6. an unchanged re-backup (timed): (a);
//  7. the upload of the bytes the stop stored (timed): (b).
//
// Before 1, 3 and 5 it waits until racySettle has passed since the last
// write (untimed), so that no file's ctime lies in the 2 s window before
// the parent backup: 3 reads only what the session changed, and 6 reads
// nothing. The changes are undone at the end, even after a failure.
func (b *bench) stopCycle(dir string, withCkpt bool) (err error) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	if b.opts.freshMinIO && b.minio != nil {
		if err := b.minio.restart(); err != nil {
			return fmt.Errorf("restarting minio (--fresh-minio): %v", err)
		}
	}
	r, err := b.newRun("backupd", dir)
	if err != nil {
		return err
	}
	var run stopRun
	run.withCkpt = withCkpt
	var ch stopChanges
	defer func() {
		if uerr := ch.undo(); uerr != nil && err == nil {
			err = fmt.Errorf("undoing checkpoint-stop's changes of %s (regenerate it): %v", b.data, uerr)
		}
		b.lastWrite = time.Now()
	}()
	label := "without checkpoint"
	if withCkpt {
		label = "with checkpoint"
	}

	b.settle()
	if _, _, err := b.ckptBackup(r, ""); err != nil {
		return fmt.Errorf("first backup: %v", err)
	}
	if err := sessionChange(b.data, b.src, b.opts.ckptGrow, &ch); err != nil {
		return err
	}
	b.lastWrite = time.Now()

	b.settle()
	before, err := b.storeSize(r)
	if err != nil {
		return err
	}
	if withCkpt {
		if run.ckpt, run.ckptSt, err = b.ckptBackup(r, "checkpoint", "--checkpoint"); err != nil {
			return fmt.Errorf("checkpoint: %v", err)
		}
		after, err := b.storeSize(r)
		if err != nil {
			return err
		}
		run.ckptGrowth, before = after-before, after
	}

	if err := stopChange(b.data, b.src, b.opts.ckptGrow, &ch); err != nil {
		return err
	}
	b.lastWrite = time.Now()
	b.settle()
	stopName := "stop-without"
	if withCkpt {
		stopName = "stop-with"
	}
	serverCPU := b.serverCPU()
	if run.stop, run.stopSt, err = b.ckptBackup(r, stopName); err != nil {
		return fmt.Errorf("stop backup: %v", err)
	}
	run.stopServerCPU = b.serverCPU() - serverCPU
	after, err := b.storeSize(r)
	if err != nil {
		return err
	}
	run.stopGrowth = after - before

	if run.rebkp, run.rebkpSt, err = b.ckptBackup(r, "rebackup-"+stopName[len("stop-"):]); err != nil {
		return fmt.Errorf("unchanged re-backup: %v", err)
	}
	if n := run.rebkpSt.read(); n != 0 {
		b.warn(fmt.Sprintf("checkpoint-stop: the unchanged re-backup after the stop (%s) read %d files again", label, n))
	}
	if err := warmMemory(); err != nil { // as measure does before a timed command
		return err
	}
	serverCPU, clientCPU := b.serverCPU(), selfCPU()
	if run.upload, err = b.uploadBaseline(r, run.stopSt.StoredBytes); err != nil {
		return fmt.Errorf("upload baseline: %v", err)
	}
	run.uploadServerCPU, run.uploadClientCPU = b.serverCPU()-serverCPU, selfCPU()-clientCPU
	if b.recording {
		b.stopRuns = append(b.stopRuns, run)
	}
	ckptNote := ""
	if withCkpt {
		ckptNote = fmt.Sprintf("; checkpoint %.2fs (read %d files, stored %s)", run.ckpt.wall.Seconds(), run.ckptSt.read(), mib(run.ckptSt.StoredBytes))
	}
	fmt.Fprintf(os.Stderr, "harness: checkpoint-stop %s: stop %.2fs (read %d files, stored %s), (a) unchanged re-backup %.2fs, (b) upload %.2fs, stop/(a+b) %.2f%s\n",
		label, run.stop.wall.Seconds(), run.stopSt.read(), mib(run.stopSt.StoredBytes), run.rebkp.wall.Seconds(), run.upload.Seconds(),
		run.stop.wall.Seconds()/run.baseline().Seconds(), ckptNote)
	return nil
}

// runCheckpointStop runs checkpoint-stop --runs times, with and without
// the checkpoint alternating which goes first.
func (b *bench) runCheckpointStop() error {
	for i := 1; i <= b.opts.runs; i++ {
		order := []bool{true, false}
		if i%2 == 0 {
			order = []bool{false, true}
		}
		for _, with := range order {
			dir := filepath.Join(b.work, fmt.Sprintf("ckpt-stop%d-%v", i, with))
			if err := b.stopCycle(dir, with); err != nil {
				return fmt.Errorf("checkpoint-stop run %d (checkpoint %v): %v", i, with, err)
			}
			if err := b.removeRun(dir); err != nil {
				return err
			}
		}
	}
	return nil
}

// workloadArgs is the command line of one workload process.
func (b *bench) workloadArgs(kind string) (env, args []string, err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	env = []string{workloadEnv + "=" + kind}
	switch kind {
	case "cpu":
		return env, []string{self, strconv.FormatInt(b.opts.loadCPU, 10)}, nil
	case "io":
		return env, []string{self, filepath.Join(b.data, ioLoadDir), strconv.FormatInt(b.opts.loadIO, 10), strconv.FormatInt(4<<20, 10)}, nil
	}
	return nil, nil, fmt.Errorf("unknown workload %q", kind)
}

// loadStep runs the workload kind once, timed, with a checkpoint beside it
// when withCkpt, in the run directory dir (the checkpoint's repository).
func (b *bench) loadStep(kind, dir string, withCkpt bool) (loadRun, error) {
	run := loadRun{workload: kind, withCkpt: withCkpt}
	env, args, err := b.workloadArgs(kind)
	if err != nil {
		return run, err
	}
	if kind == "io" {
		info, err := os.Stat(b.data)
		if err != nil {
			return run, err
		}
		mt := info.ModTime()
		if err := os.Mkdir(args[1], 0o755); err != nil {
			return run, err
		}
		defer func() {
			removeAll(args[1])
			os.Chtimes(b.data, mt, mt)
			b.lastWrite = time.Now()
		}()
	}

	// The previous step's writeback (its repository and workload files
	// removed, the checkpoint's packs) would land in this one's timing:
	// each I/O-bound run without a checkpoint comes right after a step
	// with one (see runCheckpointLoad's order), and was the slower for it.
	syscall.Sync()

	var ckpt *exec.Cmd
	var exited chan struct{}
	var ckptEnd time.Time
	var ckptErr error
	var ckptStderr bytes.Buffer
	if withCkpt {
		if err := os.Mkdir(dir, 0o755); err != nil {
			return run, err
		}
		r, err := b.newRun("backupd", dir)
		if err != nil {
			return run, err
		}
		// Started directly (not under the rusage helper): its PID is
		// backupctl's, for /proc.
		ckpt = exec.Command(b.backupctl, "backup", "--checkpoint", "-r", r.arg, "--owner", "bench", "--workspace", "ws",
			"--cache-dir", r.cache, "--json", b.data)
		ckpt.Env = append(os.Environ(), r.env...)
		ckpt.Stderr = &ckptStderr
		start := time.Now()
		if err := ckpt.Start(); err != nil {
			return run, err
		}
		exited = make(chan struct{})
		go func() {
			ckptErr = ckpt.Wait()
			ckptEnd = time.Now()
			close(exited)
		}()
		defer func() {
			select {
			case <-exited:
			default:
				ckpt.Process.Kill() // its repository is thrown away
				<-exited
			}
		}()
		if _, err := waitWorking(ckpt.Process.Pid, ckptWorking(b.src.bytes), exited, 2*time.Minute); err != nil {
			return run, fmt.Errorf("checkpoint: %v\n%s", err, ckptStderr.String())
		}
		run.ckptLeadIn = time.Since(start)
	}

	var s0 procSample
	if withCkpt {
		if s0, err = sampleProc(ckpt.Process.Pid); err != nil {
			return run, fmt.Errorf("checkpoint ended before the workload started: %v\n%s", err, ckptStderr.String())
		}
	}
	m, out, err := measure(env, args[0], args[1:]...)
	end := time.Now()
	if err != nil {
		return run, fmt.Errorf("%s workload: %v", kind, err)
	}
	run.m = m
	if err := json.Unmarshal(out, &run.res); err != nil {
		return run, fmt.Errorf("%s workload: bad output %q: %v", kind, out, err)
	}
	if withCkpt {
		s1, serr := sampleProc(ckpt.Process.Pid)
		select {
		case <-exited:
			// It ended during the workload (or its sample came too late).
			run.ckptEnded = ckptEnd.Sub(end.Add(-m.wall))
			if ckptErr != nil {
				return run, fmt.Errorf("checkpoint failed during the workload: %v\n%s", ckptErr, ckptStderr.String())
			}
		default:
			if serr != nil {
				return run, serr
			}
			run.overlap = true
			run.ckptCPU, run.ckptRead = s1.cpu-s0.cpu, s1.rchar-s0.rchar
		}
	}
	return run, nil
}

// runCheckpointLoad runs each workload --runs times without and with a
// checkpoint, interleaved: the order of the pair alternates between runs.
func (b *bench) runCheckpointLoad() error {
	for i := 1; i <= b.opts.runs; i++ {
		for _, kind := range []string{"cpu", "io"} {
			order := []bool{false, true}
			if i%2 == 0 {
				order = []bool{true, false}
			}
			for _, with := range order {
				dir := filepath.Join(b.work, fmt.Sprintf("ckpt-load%d-%s", i, kind))
				run, err := b.loadStep(kind, dir, with)
				if rerr := b.removeRun(dir); err == nil {
					err = rerr
				}
				if err != nil {
					return fmt.Errorf("checkpoint-load run %d (%s workload, checkpoint %v): %v", i, kind, with, err)
				}
				b.loadRuns = append(b.loadRuns, run)
				note := ""
				switch {
				case with && run.overlap:
					note = fmt.Sprintf(", checkpoint running throughout (%.2fs CPU, %s read meanwhile)", run.ckptCPU.Seconds(), mib(run.ckptRead))
				case with:
					note = fmt.Sprintf(", checkpoint ENDED %.2fs into the workload", run.ckptEnded.Seconds())
				}
				fmt.Fprintf(os.Stderr, "harness: checkpoint-load %s workload run %d, checkpoint %v: %.2fs (cpu %.2fs)%s\n",
					kind, i, with, run.m.wall.Seconds(), run.m.cpu.Seconds(), note)
			}
		}
	}
	return nil
}

// runCheckpoints runs the selected checkpoint scenarios, and after each
// checks (untimed) that the dataset is as generated again.
func (b *bench) runCheckpoints() error {
	b.recording = true
	if b.hasScenario("checkpoint-stop") {
		if err := b.runCheckpointStop(); err != nil {
			return err
		}
		if err := b.checkDataset("checkpoint-stop"); err != nil {
			return err
		}
	}
	if b.hasScenario("checkpoint-load") {
		b.workspaceFS = describeFS(b.data)
		if err := b.runCheckpointLoad(); err != nil {
			return err
		}
		if err := b.checkDataset("checkpoint-load"); err != nil {
			return err
		}
	}
	return nil
}

// checkDataset compares the dataset with its manifest from before the
// runs (contents, modes, sizes, symlinks): scenario must have undone all
// its changes.
func (b *bench) checkDataset(scenario string) error {
	got, err := scanTree(b.data)
	if err != nil {
		return err
	}
	if err := compareTrees(b.src, got); err != nil {
		return fmt.Errorf("after %s the dataset %s is not as generated: %v", scenario, b.data, err)
	}
	fmt.Fprintf(os.Stderr, "harness: after %s the dataset is as generated (%d files, SHA-256 of every file)\n", scenario, got.files)
	b.datasetChecked = append(b.datasetChecked, scenario)
	return nil
}

// checkpointOptions checks the options of the checkpoint scenarios.
func checkpointOptions(o *options, generated bool) error {
	if !slices.ContainsFunc(o.scenarios, func(s string) bool { return slices.Contains(checkpointScenarios, s) }) {
		return nil
	}
	switch {
	case !generated && slices.Contains(o.scenarios, "checkpoint-stop"):
		// checkpoint-load only adds a directory of its own (and takes it
		// away): it may run on a --data tree, on a disk of its own.
		return fmt.Errorf("checkpoint-stop changes the dataset in place (and undoes it): use it with --gen-workspace or --gen-large")
	case !slices.Contains(o.tools, "backupd"):
		return fmt.Errorf("checkpoint-stop and checkpoint-load measure backupd alone: --tools backupd")
	case slices.Contains(o.scenarios, "checkpoint-stop") && o.ckptGrow <= 0:
		return fmt.Errorf("--checkpoint-grow must be positive")
	case slices.Contains(o.scenarios, "checkpoint-load") && (o.loadCPU < 1<<20 || o.loadIO < 4<<20):
		return fmt.Errorf("--load-cpu must be at least 1MiB and --load-io at least 4MiB")
	}
	return nil
}

// durations summarizes durations in seconds.
func durations(n int, f func(i int) time.Duration) summary {
	xs := make([]float64, n)
	for i := range xs {
		xs[i] = f(i).Seconds()
	}
	return summarize(xs)
}

// fmtSpread is "median (min-max)".
func fmtSpread(s summary, format string) string {
	return fmt.Sprintf(format+" ("+format+"-"+format+")", s.median, s.min, s.max)
}

// checkpointReport is the checkpoint scenarios' results as Markdown.
func (b *bench) checkpointReport() string {
	var s bytes.Buffer
	if b.hasScenario("checkpoint-stop") && len(b.stopRuns) > 0 {
		b.stopReport(&s)
	}
	if b.hasScenario("checkpoint-load") && len(b.loadRuns) > 0 {
		b.loadReport(&s)
	}
	return s.String()
}

func (b *bench) stopReport(s *bytes.Buffer) {
	var with, without []stopRun
	for _, r := range b.stopRuns {
		if r.withCkpt {
			with = append(with, r)
		} else {
			without = append(without, r)
		}
	}
	store := "a local directory (`file://`)"
	how := "(b) = a write and `fsync` of that many incompressible bytes into one new file next to the repository, on the same filesystem"
	if b.minio != nil {
		store = "MinIO on loopback (`s3://`)"
		how = "(b) = one multipart PUT of that many incompressible bytes into the run's bucket, parts of 16 MiB, 4 at a time (backupd's s3 defaults), with aws-sdk-go-v2's upload manager"
		if b.opts.netShape > 0 {
			store = fmt.Sprintf("MinIO on loopback (`s3://`), loopback shaped to %s/s by the kernel (--net-shape), which (b) goes through too", mib(b.opts.netShape))
		}
		if b.opts.netLimit > 0 {
			store = fmt.Sprintf("MinIO on loopback (`s3://`) through a link of %s/s each way (--net-limit), which (b) goes through too", mib(b.opts.netLimit))
		}
	}
	fmt.Fprintf(s, "\n## checkpoint-stop: the stop backup after a checkpoint, and without one\n\n")
	fmt.Fprintf(s, "Dataset: %s in %d files; store: %s. Each run, on a fresh repository: a first backup (the last stop, untimed); the session's change "+
		"(1%% of the files by `changeTree`, seed %d, and a new file `%s` of %s of incompressible bytes); the checkpoint (`backupctl backup --checkpoint`, "+
		"only in the run with it); the stop's change (1%% of the files again, seed %d, and %s appended to `%s`); the stop backup; "+
		"an unchanged re-backup, (a); and the upload of the bytes the stop stored (its `stored_bytes`), %s. "+
		"Times in seconds: median (min-max) over the runs; ratios per run.\n\n",
		mib(b.src.bytes), b.src.files, store, sessionSeed, sessionFile, mib(b.opts.ckptGrow), stopSeed, mib(b.opts.ckptGrow), sessionFile, how)
	fmt.Fprintf(s, "| | with checkpoint | without checkpoint |\n|---|---:|---:|\n")
	cols := [][]stopRun{with, without}
	row := func(name string, f func(rs []stopRun) string) {
		fmt.Fprintf(s, "| %s | %s | %s |\n", name, f(cols[0]), f(cols[1]))
	}
	secs := func(g func(r stopRun) time.Duration) func([]stopRun) string {
		return func(rs []stopRun) string {
			if len(rs) == 0 {
				return "-"
			}
			return fmtSpread(durations(len(rs), func(i int) time.Duration { return g(rs[i]) }), "%.2f")
		}
	}
	sizes := func(g func(r stopRun) int64) func([]stopRun) string {
		return func(rs []stopRun) string {
			if len(rs) == 0 {
				return "-"
			}
			xs := make([]float64, len(rs))
			for i, r := range rs {
				xs[i] = float64(g(r)) / (1 << 20)
			}
			return fmtSpread(summarize(xs), "%.1f") + " MiB"
		}
	}
	row("runs", func(rs []stopRun) string { return strconv.Itoa(len(rs)) })
	row("**stop backup**, wall", secs(func(r stopRun) time.Duration { return r.stop.wall }))
	row("stop backup, CPU", secs(func(r stopRun) time.Duration { return r.stop.cpu }))
	row("(a) unchanged re-backup after the stop, wall", secs(func(r stopRun) time.Duration { return r.rebkp.wall }))
	row("(b) upload of the bytes the stop stored, wall", secs(func(r stopRun) time.Duration { return r.upload }))
	row("(a) + (b)", secs(stopRun.baseline))
	if b.minio != nil {
		row("MinIO server CPU during the stop", secs(func(r stopRun) time.Duration { return r.stopServerCPU }))
		row("MinIO server CPU during (b)", secs(func(r stopRun) time.Duration { return r.uploadServerCPU }))
		row("(b)'s client CPU (the harness's, during it)", secs(func(r stopRun) time.Duration { return r.uploadClientCPU }))
		row(fmt.Sprintf("stop: (backupctl + server CPU) / %d cores, the least wall time they allow", runtime.NumCPU()), secs(func(r stopRun) time.Duration {
			return (r.stop.cpu + r.stopServerCPU) / time.Duration(runtime.NumCPU())
		}))
	}
	row("**stop / ((a) + (b))**", func(rs []stopRun) string {
		if len(rs) == 0 {
			return "-"
		}
		xs := make([]float64, len(rs))
		for i, r := range rs {
			xs[i] = r.stop.wall.Seconds() / r.baseline().Seconds()
		}
		return fmtSpread(summarize(xs), "%.2f")
	})
	row("stop at most (a) + (b)", func(rs []stopRun) string {
		n := 0
		for _, r := range rs {
			if r.stop.wall <= r.baseline() {
				n++
			}
		}
		return fmt.Sprintf("%d of %d runs", n, len(rs))
	})
	row("checkpoint, wall", func(rs []stopRun) string {
		if len(rs) == 0 || !rs[0].withCkpt {
			return "-"
		}
		return secs(func(r stopRun) time.Duration { return r.ckpt.wall })(rs)
	})
	row("checkpoint, CPU", func(rs []stopRun) string {
		if len(rs) == 0 || !rs[0].withCkpt {
			return "-"
		}
		return secs(func(r stopRun) time.Duration { return r.ckpt.cpu })(rs)
	})
	row("bytes stored by the checkpoint (`stored_bytes`)", func(rs []stopRun) string {
		if len(rs) == 0 || !rs[0].withCkpt {
			return "-"
		}
		return sizes(func(r stopRun) int64 { return r.ckptSt.StoredBytes })(rs)
	})
	row("store growth by the checkpoint (all its objects)", func(rs []stopRun) string {
		if len(rs) == 0 || !rs[0].withCkpt {
			return "-"
		}
		return sizes(func(r stopRun) int64 { return r.ckptGrowth })(rs)
	})
	row("bytes stored by the stop (`stored_bytes`: what (b) uploads)", sizes(func(r stopRun) int64 { return r.stopSt.StoredBytes }))
	row("store growth by the stop (all its objects)", sizes(func(r stopRun) int64 { return r.stopGrowth }))
	row("bytes of changed files the stop resumed (`resumed_bytes`: hashed through, not cut again)", sizes(func(r stopRun) int64 { return r.stopSt.ResumedBytes }))
	row("files the stop read (`files - unchanged_files`)", func(rs []stopRun) string {
		if len(rs) == 0 {
			return "-"
		}
		xs := make([]float64, len(rs))
		for i, r := range rs {
			xs[i] = float64(r.stopSt.read())
		}
		return fmtSpread(summarize(xs), "%.0f")
	})
	row("files the re-backup read", func(rs []stopRun) string {
		var parts []string
		for _, r := range rs {
			parts = append(parts, strconv.FormatInt(r.rebkpSt.read(), 10))
		}
		return fmt.Sprint(parts)
	})

	fmt.Fprintf(s, "\nNotes:\n\n")
	fmt.Fprintf(s, "- Runs alternate which variant goes first (run 1: with the checkpoint first). Before the first backup, the checkpoint and the stop the harness waits (untimed) until %.1fs have passed since it last wrote to the workspace, "+
		"so that no file's ctime lies in backupd's 2 s racy window of the parent backup: the checkpoint reads only what the session changed, and the re-backup after the stop reads nothing.\n", racySettle.Seconds())
	fmt.Fprintf(s, "- (a) is measured in the same run, on the tree as the stop left it; (b) has no walk, no chunking and no compression: it is the transfer alone. "+
		"The target is the issue's: the stop backup takes at most (a) + (b).\n")
	fmt.Fprintf(s, "- Store growth is the store's size after the step minus before (%s); it includes trees, index and snapshot objects, which `stored_bytes` does not.\n",
		map[bool]string{true: "object sizes in the bucket listing", false: "file sizes of the repository directory"}[b.minio != nil])
	fmt.Fprintf(s, "- All changes were undone after each run (contents, modes, mtimes; the session's file removed), so every run starts from the generated tree%s.\n",
		map[bool]string{true: "; after the last run the dataset was compared with its manifest (SHA-256 of every file): as generated", false: ""}[slices.Contains(b.datasetChecked, "checkpoint-stop")])
	fmt.Fprintf(s, "- Stored bytes differ between runs by a few MiB on the same data: every fresh repository draws its own chunker polynomial, so chunk boundaries, and the chunks around each edit and the append that a stop stores again, differ.\n")
	if len(with) > 0 {
		fmt.Fprintf(s, "- Per run, with the checkpoint: ")
		for i, r := range with {
			if i > 0 {
				fmt.Fprintf(s, "; ")
			}
			fmt.Fprintf(s, "stop %.2fs, (a) %.2fs, (b) %.2fs, checkpoint %.2fs, stop stored %s", r.stop.wall.Seconds(), r.rebkp.wall.Seconds(), r.upload.Seconds(), r.ckpt.wall.Seconds(), mib(r.stopSt.StoredBytes))
		}
		fmt.Fprintf(s, ".\n")
	}
	if len(without) > 0 {
		fmt.Fprintf(s, "- Per run, without: ")
		for i, r := range without {
			if i > 0 {
				fmt.Fprintf(s, "; ")
			}
			fmt.Fprintf(s, "stop %.2fs, (a) %.2fs, (b) %.2fs, stop stored %s", r.stop.wall.Seconds(), r.rebkp.wall.Seconds(), r.upload.Seconds(), mib(r.stopSt.StoredBytes))
		}
		fmt.Fprintf(s, ".\n")
	}
}

func (b *bench) loadReport(s *bytes.Buffer) {
	fmt.Fprintf(s, "\n## checkpoint-load: a workload's own time with and without a checkpoint beside it\n\n")
	fmt.Fprintf(s, "Workspace: %s in %d files, on %s. The checkpoint is `backupctl backup --checkpoint` into a fresh repository (%s), so it is a first backup with the whole workspace to read; "+
		"the workload starts once the checkpoint has used %v of CPU and read %s (polled in /proc/PID/stat and /proc/PID/io), and the checkpoint is killed when the workload ends. "+
		"Workload times are the workload process's wall time, in seconds: median (min-max); slowdown = with / without - 1, of the medians.\n\n",
		mib(b.src.bytes), b.src.files, b.workspaceFS, map[bool]string{true: "in MinIO on loopback", false: "a local directory in the work dir"}[b.minio != nil],
		ckptWorking(b.src.bytes).cpu, mib(ckptWorking(b.src.bytes).rchar))
	fmt.Fprintf(s, "| workload | runs | without checkpoint | with checkpoint | **slowdown** | at most 10 %% | CPU without | CPU with | overlap complete | checkpoint CPU during the workload | checkpoint read during the workload |\n")
	fmt.Fprintf(s, "|---|---:|---:|---:|---:|---|---:|---:|---|---:|---:|\n")
	for _, kind := range []string{"cpu", "io"} {
		var alone, with []loadRun
		for _, r := range b.loadRuns {
			switch {
			case r.workload != kind:
			case r.withCkpt:
				with = append(with, r)
			default:
				alone = append(alone, r)
			}
		}
		if len(alone) == 0 || len(with) == 0 {
			continue
		}
		wall := func(rs []loadRun) summary {
			return durations(len(rs), func(i int) time.Duration { return rs[i].m.wall })
		}
		cpu := func(rs []loadRun) summary {
			return durations(len(rs), func(i int) time.Duration { return rs[i].m.cpu })
		}
		wa, ww := wall(alone), wall(with)
		slow := (ww.median/wa.median - 1) * 100
		met := "met"
		if slow > 10 {
			met = "**not met**"
		}
		overlap := 0
		var ccpu, cread []float64
		for _, r := range with {
			if r.overlap {
				overlap++
				ccpu = append(ccpu, r.ckptCPU.Seconds())
				cread = append(cread, float64(r.ckptRead)/(1<<20))
			}
		}
		cc, cr := "-", "-"
		if len(ccpu) > 0 {
			cc = fmtSpread(summarize(ccpu), "%.2f") + " s"
			cr = fmtSpread(summarize(cread), "%.0f") + " MiB"
		}
		name := map[string]string{"cpu": "CPU-bound", "io": "I/O-bound"}[kind]
		fmt.Fprintf(s, "| %s | %d | %s | %s | %+.1f %% | %s | %.2f | %.2f | %d of %d runs | %s | %s |\n", name, len(alone),
			fmtSpread(wa, "%.2f"), fmtSpread(ww, "%.2f"), slow, met, cpu(alone).median, cpu(with).median, overlap, len(with), cc, cr)
	}

	fmt.Fprintf(s, "\nNotes:\n\n")
	fmt.Fprintf(s, "- CPU-bound: the harness binary re-executed as a workload process (under the rusage helper, as every timed command): GOMAXPROCS (%d) goroutines hash %s in all with SHA-256, each over its own 1 MiB buffer, every digest fed into the next pass.\n",
		runtimeProcs(), mib(b.opts.loadCPU))
	fmt.Fprintf(s, "- I/O-bound: the same kind of process writes %s in 4 MiB files of incompressible bytes into `%s/` in the workspace, `fsync`ing each, then drops their pages (`posix_fadvise(DONTNEED)`) and reads them back; the harness removes them afterwards and gives the workspace root its mtime back. ",
		mib(b.opts.loadIO), ioLoadDir)
	var wr, rd []float64
	cached := false
	for _, r := range b.loadRuns {
		if r.workload == "io" {
			wr = append(wr, float64(r.res.WriteNS)/1e9)
			rd = append(rd, float64(r.res.ReadNS)/1e9)
			cached = cached || r.res.Cached
		}
	}
	if len(wr) > 0 {
		fmt.Fprintf(s, "Its phases over all its runs: write+fsync %s s, read %s s (medians, min-max).", fmtSpread(summarize(wr), "%.2f"), fmtSpread(summarize(rd), "%.2f"))
	}
	if cached {
		fmt.Fprintf(s, " The workspace is on tmpfs: there is no device, `fsync` and DONTNEED do nothing, and the I/O workload measures memory copies and file creation, not a disk.")
	}
	var withRuns []loadRun
	for _, r := range b.loadRuns {
		if r.withCkpt {
			withRuns = append(withRuns, r)
		}
	}
	if slices.Contains(b.datasetChecked, "checkpoint-load") {
		fmt.Fprintf(s, " After the last run the dataset was compared with its manifest (SHA-256 of every file): as generated.")
	}
	fmt.Fprintf(s, "\n- Runs alternate which goes first: without then with the checkpoint in odd runs, the reverse in even ones; CPU and I/O workloads alternate within a run. Before each, `sync` (untimed), so that no earlier step's writeback lands in it.\n")
	fmt.Fprintf(s, "- The checkpoint's readers, compressors and walkers run under the SCHED_IDLE policy (nice 10 where that is refused) and at idle I/O priority (internal/lowprio; the idle class counts only under the bfq I/O scheduler); the rest of the process (uploads, the Go runtime's GC workers) does not. "+
		"Lead-in until it counted as working: %s s (median, min-max). Its CPU and bytes read during the workload are the differences of /proc samples taken just before and after the workload process.\n",
		fmtSpread(durations(len(withRuns), func(i int) time.Duration { return withRuns[i].ckptLeadIn }), "%.2f"))
	var ended []string
	for _, r := range b.loadRuns {
		if r.withCkpt && !r.overlap {
			ended = append(ended, fmt.Sprintf("%s workload: the checkpoint ended %.2fs into its %.2fs", r.workload, r.ckptEnded.Seconds(), r.m.wall.Seconds()))
		}
	}
	if len(ended) > 0 {
		fmt.Fprintf(s, "- **Overlap incomplete** in %d runs (their figures are in the table all the same): %s.\n", len(ended), strings.Join(ended, "; "))
	}
	if b.minio != nil {
		fmt.Fprintf(s, "- MinIO runs on this machine at normal priority: its work for the checkpoint's uploads competes with the workload unlowered (a real object store would be elsewhere).\n")
	}
}
