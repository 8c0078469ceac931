// Command harness benchmarks backupd (backupctl) side by side with restic:
// a first backup into a new local repository and a full restore into an
// empty directory, each repeated --runs times with fresh repositories and
// targets, reporting wall time, CPU time, throughput and peak RSS.
//
// Run it from the repository root:
//
//	go run ./benchmarks/harness --runs 5 --out benchmarks/results.md
//
// See benchmarks/README.md.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

type options struct {
	data        string
	genLarge    int64
	genLargeArg string
	runs        int
	tools       []string
	scenarios   []string
	out         string
	restic      string
	backupctl   string
	tmp         string
	warmups     int
	restoreDir  string
	verifyAll   bool
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		os.Exit(1)
	}
}

func run() error {
	var o options
	var tools, scenarios, genLarge string
	flag.StringVar(&o.data, "data", "", "dataset directory (default: $(go env GOROOT)/src)")
	flag.StringVar(&genLarge, "gen-large", "", "instead of --data, generate a tree with one big file of this `SIZE` (e.g. 2GiB) plus small files")
	flag.IntVar(&o.runs, "runs", 5, "runs per tool and scenario")
	flag.StringVar(&tools, "tools", "backupd,restic", "comma-separated tools: backupd, restic")
	flag.StringVar(&scenarios, "scenarios", "backup,restore", "comma-separated scenarios: backup, restore")
	flag.StringVar(&o.out, "out", "", "also write the report, with a machine header, to this `FILE`")
	flag.StringVar(&o.restic, "restic", "", "restic binary (default: built by benchmarks/peers.sh)")
	flag.StringVar(&o.backupctl, "backupctl", "", "backupctl binary (default: go build ./cmd/backupctl)")
	flag.StringVar(&o.tmp, "tmp", "", "directory for repositories, restore targets and generated data (default benchmarks/_work in the repository, which go tooling ignores; /tmp can be much slower at creating files than the disk workspaces live on)")
	flag.StringVar(&o.restoreDir, "restore-dir", "", "restore into fresh directories under this `DIR` (e.g. /dev/shm, to measure the tools without the disk's metadata costs) instead of the work directory")
	flag.IntVar(&o.warmups, "warmup", 1, "untimed warm-up cycles per tool before the timed runs")
	flag.BoolVar(&o.verifyAll, "verify-all", false, "verify every restore, not only the first of each tool")
	var useMinIO bool
	flag.BoolVar(&useMinIO, "minio", false, "keep the repositories in a MinIO server started on loopback (binaries from `make test-servers`) instead of local directories")
	var generateOnly string
	flag.StringVar(&generateOnly, "generate-only", "", "with --gen-large: write the generated tree to `DIR` and exit (for profiling by hand)")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if o.runs < 1 {
		return fmt.Errorf("--runs must be at least 1")
	}
	o.tools = splitList(tools)
	o.scenarios = splitList(scenarios)
	for _, t := range o.tools {
		if t != "backupd" && t != "restic" {
			return fmt.Errorf("unknown tool %q", t)
		}
	}
	for _, s := range o.scenarios {
		if s != "backup" && s != "restore" {
			return fmt.Errorf("unknown scenario %q", s)
		}
	}
	if len(o.tools) == 0 || len(o.scenarios) == 0 {
		return fmt.Errorf("no tools or no scenarios selected")
	}
	if genLarge != "" {
		if o.data != "" {
			return fmt.Errorf("--data and --gen-large are exclusive")
		}
		n, err := parseSize(genLarge)
		if err != nil {
			return err
		}
		o.genLarge, o.genLargeArg = n, genLarge
	}

	if generateOnly != "" {
		if o.genLarge == 0 {
			return fmt.Errorf("--generate-only needs --gen-large")
		}
		return generateLarge(generateOnly, o.genLarge)
	}
	if o.tmp == "" {
		root, err := moduleRoot()
		if err != nil {
			return err
		}
		o.tmp = filepath.Join(root, "benchmarks", "_work")
		if err := os.MkdirAll(o.tmp, 0o755); err != nil {
			return err
		}
	}
	work, err := os.MkdirTemp(o.tmp, "backupd-bench-")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if ok {
			removeAll(work)
		} else {
			fmt.Fprintf(os.Stderr, "harness: left work directory %s for inspection\n", work)
		}
	}()

	root, err := moduleRoot()
	if err != nil {
		return err
	}
	b := &bench{opts: o, work: work}
	if err := b.setupTools(root); err != nil {
		return err
	}
	if err := b.setupData(); err != nil {
		return err
	}
	if useMinIO {
		if b.minio, err = startMinIO(work); err != nil {
			return err
		}
		defer b.minio.stop()
	}
	if err := b.runAll(); err != nil {
		return err
	}
	report := b.report()
	fmt.Print(report)
	if o.out != "" {
		full := b.header() + "\n" + report
		if err := os.WriteFile(o.out, []byte(full), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "harness: wrote %s\n", o.out)
	}
	ok = true
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// moduleRoot is the directory holding the main module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside a Go module; run from the backupd repository")
	}
	return filepath.Dir(gomod), nil
}

// bench holds the state of one harness invocation.
type bench struct {
	opts options
	work string

	backupctl, restic     string
	backupdVer, resticVer string
	data                  string
	dataDesc              string
	src                   *treeInfo
	results               map[string][]measurement // key: scenario + "/" + tool
	resticInit            []float64                // seconds, untimed setup
	warnings              []string
	warmup                time.Duration
	recording             bool
	minio                 *minioServer // --minio: repositories live there
	cleanup               []string     // restore targets outside the work directory
}

// measurement is one timed child process.
type measurement struct {
	wall     time.Duration
	cpu      time.Duration // user + system
	sys      time.Duration // system
	maxRSS   int64         // bytes
	repoSize int64         // bytes on disk after backup (backup only)
}

func (b *bench) setupTools(root string) error {
	if b.has("backupd") {
		b.backupctl = b.opts.backupctl
		if b.backupctl == "" {
			b.backupctl = filepath.Join(b.work, "backupctl")
			fmt.Fprintln(os.Stderr, "harness: building backupctl")
			cmd := exec.Command("go", "build", "-o", b.backupctl, "./cmd/backupctl")
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("go build ./cmd/backupctl: %v\n%s", err, out)
			}
		}
		b.backupdVer = "backupctl built from " + root
		if out, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty").Output(); err == nil {
			b.backupdVer += " @ " + strings.TrimSpace(string(out))
		} else {
			b.backupdVer += " (no commit)"
		}
	}
	if b.has("restic") {
		b.restic = b.opts.restic
		if b.restic == "" {
			fmt.Fprintln(os.Stderr, "harness: getting restic via benchmarks/peers.sh")
			cmd := exec.Command("bash", filepath.Join(root, "benchmarks", "peers.sh"))
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			if err != nil {
				return fmt.Errorf("benchmarks/peers.sh: %v", err)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			b.restic = lines[len(lines)-1]
		}
		out, err := exec.Command(b.restic, "version").Output()
		if err != nil {
			return fmt.Errorf("%s version: %v", b.restic, err)
		}
		b.resticVer = strings.TrimSpace(string(out))
	}
	return nil
}

func (b *bench) has(tool string) bool {
	for _, t := range b.opts.tools {
		if t == tool {
			return true
		}
	}
	return false
}

func (b *bench) hasScenario(s string) bool {
	for _, x := range b.opts.scenarios {
		if x == s {
			return true
		}
	}
	return false
}

func (b *bench) setupData() error {
	switch {
	case b.opts.genLarge > 0:
		b.data = filepath.Join(b.work, "data")
		fmt.Fprintf(os.Stderr, "harness: generating %d bytes of data in %s\n", b.opts.genLarge, b.data)
		start := time.Now()
		if err := generateLarge(b.data, b.opts.genLarge); err != nil {
			return fmt.Errorf("generating data: %v", err)
		}
		fmt.Fprintf(os.Stderr, "harness: generated in %.1fs\n", time.Since(start).Seconds())
		b.dataDesc = fmt.Sprintf("generated by --gen-large %s: one big semi-compressible file plus 2000 small files", b.opts.genLargeArg)
	case b.opts.data != "":
		b.data = b.opts.data
		b.dataDesc = b.opts.data
	default:
		out, err := exec.Command("go", "env", "GOROOT").Output()
		if err != nil {
			return fmt.Errorf("go env GOROOT: %v", err)
		}
		b.data = filepath.Join(strings.TrimSpace(string(out)), "src")
		b.dataDesc = b.data + " (GOROOT/src, " + runtime.Version() + ")"
	}
	// Both tools record absolute paths; resolve symlinks so restic's
	// restored tree lands where we look for it.
	abs, err := filepath.Abs(b.data)
	if err != nil {
		return err
	}
	if b.data, err = filepath.EvalSymlinks(abs); err != nil {
		return err
	}
	// The untimed warm-up: read and hash every file once, so both tools
	// see a warm page cache, and keep the manifest to verify restores.
	fmt.Fprintf(os.Stderr, "harness: warm-up read of %s\n", b.data)
	start := time.Now()
	src, err := scanTree(b.data)
	if err != nil {
		return fmt.Errorf("reading dataset: %v", err)
	}
	b.warmup = time.Since(start)
	b.src = src
	fmt.Fprintf(os.Stderr, "harness: dataset %d files, %d dirs, %d symlinks, %s\n",
		src.files, src.dirs, src.links, mib(src.bytes))
	return nil
}

// runAll runs every selected scenario for every selected tool, runs
// interleaved (run 1 of every tool, then run 2, ...) so that slow drifts of
// a noisy machine hit all tools alike.
func (b *bench) runAll() error {
	b.results = map[string][]measurement{}
	// Untimed warm-up cycles: on VMs the first writes into never-touched
	// memory (page cache growth) cost far more kernel time than later ones,
	// which would penalise whichever tool runs first.
	b.recording = false
	for i := 1; i <= b.opts.warmups; i++ {
		for _, tool := range b.opts.tools {
			fmt.Fprintf(os.Stderr, "harness: warm-up cycle %d for %s (not timed)\n", i, tool)
			dir := filepath.Join(b.work, fmt.Sprintf("%s-warmup%d", tool, i))
			if err := os.Mkdir(dir, 0o755); err != nil {
				return err
			}
			var err error
			if tool == "backupd" {
				err = b.runBackupd(dir, false)
			} else {
				err = b.runRestic(dir, false)
			}
			if err != nil {
				return fmt.Errorf("%s warm-up %d: %v", tool, i, err)
			}
			if err := b.removeRun(dir); err != nil {
				return err
			}
		}
	}
	b.recording = true
	for i := 1; i <= b.opts.runs; i++ {
		for _, tool := range b.opts.tools {
			dir := filepath.Join(b.work, fmt.Sprintf("%s-run%d", tool, i))
			if err := os.Mkdir(dir, 0o755); err != nil {
				return err
			}
			verify := i == 1 || b.opts.verifyAll
			var err error
			if tool == "backupd" {
				err = b.runBackupd(dir, verify)
			} else {
				err = b.runRestic(dir, verify)
			}
			if err != nil {
				return fmt.Errorf("%s run %d: %v", tool, i, err)
			}
			if err := b.removeRun(dir); err != nil {
				return err
			}
		}
	}
	return nil
}

// removeRun deletes a run's directory and its restore targets.
func (b *bench) removeRun(dir string) error {
	for _, t := range b.cleanup {
		if err := removeAll(t); err != nil {
			return err
		}
	}
	b.cleanup = nil
	return removeAll(dir)
}

func (b *bench) record(scenario, tool string, m measurement) {
	if !b.recording {
		return
	}
	k := scenario + "/" + tool
	b.results[k] = append(b.results[k], m)
	fmt.Fprintf(os.Stderr, "harness: %-7s %-7s run %d: %6.2fs  %7.1f MB/s  cpu %6.2fs (sys %5.2fs)  rss %s\n",
		tool, scenario, len(b.results[k]), m.wall.Seconds(),
		float64(b.src.bytes)/1e6/m.wall.Seconds(), m.cpu.Seconds(), m.sys.Seconds(), mib(m.maxRSS))
}

func (b *bench) runBackupd(dir string, verify bool) error {
	repo := filepath.Join(dir, "repo")
	url := "file://" + repo
	var env []string
	if b.minio != nil {
		bucket, err := b.minio.newBucket()
		if err != nil {
			return err
		}
		url = fmt.Sprintf("s3://%s/backupd?region=us-east-1&endpoint=%s", bucket, b.minio.url)
		repo = filepath.Join(b.minio.dataDir, bucket)
		env = b.minio.env()
	}
	target, err := b.restoreTarget(dir)
	if err != nil {
		return err
	}

	m, out, err := measure(env, b.backupctl, "backup", "-r", url, "--owner", "bench", "--workspace", "ws", "--json", b.data)
	if err != nil {
		return err
	}
	var st struct {
		Files *int64 `json:"files"`
		Bytes *int64 `json:"bytes"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return fmt.Errorf("backupctl backup: bad JSON output %q: %v", out, err)
	}
	if st.Files != nil && *st.Files != int64(b.src.files) {
		b.warn(fmt.Sprintf("backupctl backup reported files=%d, dataset has %d regular files", *st.Files, b.src.files))
	}
	if st.Bytes != nil && *st.Bytes != b.src.bytes {
		b.warn(fmt.Sprintf("backupctl backup reported bytes=%d, dataset has %d bytes", *st.Bytes, b.src.bytes))
	}
	if m.repoSize, err = dirSize(repo); err != nil {
		return err
	}
	if b.hasScenario("backup") {
		b.record("backup", "backupd", m)
	}
	if !b.hasScenario("restore") {
		return nil
	}

	m, out, err = measure(env, b.backupctl, "restore", "-r", url, "--owner", "bench", "--workspace", "ws", "--snapshot", "latest", "--json", target)
	if err != nil {
		return err
	}
	if !json.Valid(bytes.TrimSpace(out)) {
		return fmt.Errorf("backupctl restore: bad JSON output %q", out)
	}
	b.record("restore", "backupd", m)
	if verify {
		return b.verify("backupd", target)
	}
	return nil
}

func (b *bench) runRestic(dir string, verify bool) error {
	repo := filepath.Join(dir, "repo")
	cache := filepath.Join(dir, "cache")
	target, err := b.restoreTarget(dir)
	if err != nil {
		return err
	}
	env := []string{"RESTIC_PASSWORD=backupd-bench"}
	repoArg := repo
	if b.minio != nil {
		bucket, err := b.minio.newBucket()
		if err != nil {
			return err
		}
		repoArg = fmt.Sprintf("s3:%s/%s/restic", b.minio.url, bucket)
		repo = filepath.Join(b.minio.dataDir, bucket)
		env = append(env, b.minio.env()...)
	}

	// restic needs an explicit init (which derives the master key with
	// scrypt); it is setup, timed separately and not part of the backup.
	m, _, err := measure(env, b.restic, "init", "-r", repoArg, "--cache-dir", cache)
	if err != nil {
		return err
	}
	b.resticInit = append(b.resticInit, m.wall.Seconds())

	m, _, err = measure(env, b.restic, "backup", "-r", repoArg, "--cache-dir", cache, b.data)
	if err != nil {
		return err
	}
	if m.repoSize, err = dirSize(repo); err != nil {
		return err
	}
	if b.hasScenario("backup") {
		b.record("backup", "restic", m)
	}
	if !b.hasScenario("restore") {
		return nil
	}

	m, _, err = measure(env, b.restic, "restore", "-r", repoArg, "--cache-dir", cache, "latest", "--target", target)
	if err != nil {
		return err
	}
	b.record("restore", "restic", m)
	if verify {
		// restic restores the full absolute path below the target.
		return b.verify("restic", filepath.Join(target, b.data))
	}
	return nil
}

// restoreTarget returns a fresh restore target for a run in dir; with
// --restore-dir it lives there and is removed after the run.
func (b *bench) restoreTarget(dir string) (string, error) {
	if b.opts.restoreDir == "" {
		return filepath.Join(dir, "restore"), nil
	}
	t, err := os.MkdirTemp(b.opts.restoreDir, "backupd-bench-restore-")
	if err != nil {
		return "", err
	}
	b.cleanup = append(b.cleanup, t)
	return filepath.Join(t, "restore"), nil
}

func (b *bench) verify(tool, restored string) error {
	got, err := scanTree(restored)
	if err != nil {
		return fmt.Errorf("verifying %s restore: %v", tool, err)
	}
	if err := compareTrees(b.src, got); err != nil {
		return fmt.Errorf("verifying %s restore in %s: %v", tool, restored, err)
	}
	fmt.Fprintf(os.Stderr, "harness: %s restore verified (%d files, %s, SHA-256 of every file)\n", tool, got.files, mib(got.bytes))
	return nil
}

func (b *bench) warn(msg string) {
	fmt.Fprintln(os.Stderr, "harness: WARNING:", msg)
	for _, w := range b.warnings {
		if w == msg {
			return
		}
	}
	b.warnings = append(b.warnings, msg)
}

// measure runs one child process and returns its wall time, CPU time and
// peak RSS, and its stdout. A failure is an error carrying the stderr.
// Dirty pages left by earlier steps are flushed first (untimed), so that
// no measurement pays for an earlier one's writeback.
func measure(env []string, name string, args ...string) (measurement, []byte, error) {
	syscall.Sync()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	if err != nil {
		return measurement{}, nil, fmt.Errorf("%s %s: %v\nstderr:\n%s", filepath.Base(name), strings.Join(args, " "), err, stderr.String())
	}
	var m measurement
	m.wall = wall
	m.sys = cmd.ProcessState.SystemTime()
	m.cpu = cmd.ProcessState.UserTime() + m.sys
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		m.maxRSS = int64(ru.Maxrss) * 1024 // KiB on Linux
		if runtime.GOOS == "darwin" {
			m.maxRSS = int64(ru.Maxrss) // bytes on macOS
		}
	}
	return m, stdout.Bytes(), nil
}

func mib(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
