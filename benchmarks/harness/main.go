// Command harness benchmarks backupd (backupctl) side by side with restic,
// kopia and `tar | zstd -1 -T0`: a first backup into a new local repository, an
// unchanged re-backup, a re-backup after 1% of the files changed, a full
// restore into an empty directory and a restore over a mostly identical
// directory, each repeated --runs times with fresh repositories and
// targets, reporting wall time, CPU time, throughput and peak RSS. It can
// generate the datasets: a realistic workspace (--gen-workspace: git
// repository, 100k-file node_modules, large binaries, random data) or a
// large-file tree (--gen-large).
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
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

type options struct {
	data        string
	genLarge    int64
	genLargeArg string
	genWS       *workspaceSpec
	runs        int
	tools       []string
	scenarios   []string
	out         string
	restic      string
	kopia       string
	backupctl   string
	tmp         string
	warmups     int
	restoreDir  string
	verifyAll   bool
	pprofDir    string   // backupd's timed runs write CPU profiles here
	readyLate   []string // restore-ready: backupctl restore --late patterns

	pruneSnapshots int     // the prune scenario: snapshots before the forget
	pruneChange    float64 // the prune scenario: percent of files rewritten between them

	ckptGrow int64 // checkpoint-stop: bytes of the session's new file, and appended to it before the stop
	loadCPU  int64 // checkpoint-load: bytes the CPU-bound workload hashes
	loadIO   int64 // checkpoint-load: bytes the I/O-bound workload writes and reads back
	netLimit int64 // --minio: bytes per second each way between the tools and MinIO (0: none)
	netShape int64 // --minio: bytes per second of loopback's kernel token bucket (0: none)

	freshMinIO bool // --minio: a fresh server for each checkpoint-stop cycle
}

func main() {
	if os.Getenv(rusageHelperEnv) != "" {
		os.Exit(rusageHelper(os.Args[1:]))
	}
	if kind := os.Getenv(workloadEnv); kind != "" {
		os.Exit(workloadMain(kind, os.Args[1:]))
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		os.Exit(1)
	}
}

func run() error {
	var o options
	var tools, scenarios, genLarge string
	flag.StringVar(&o.data, "data", "", "dataset directory (default: $(go env GOROOT)/src)")
	var genWS string
	flag.StringVar(&genWS, "gen-workspace", "", "instead of --data, generate a realistic workspace: `PRESET` default (git repo, 100k-file node_modules, binaries, random data; ~0.65 GiB), smallfiles (100k small text files in 98k directories, ~0.5 GiB), small, tiny, a scale like 0.5x, or a total size like 2GiB")
	flag.StringVar(&genLarge, "gen-large", "", "instead of --data, generate a tree with one big file of this `SIZE` (e.g. 2GiB) plus small files")
	flag.IntVar(&o.runs, "runs", 5, "runs per tool and scenario")
	flag.StringVar(&tools, "tools", "", "comma-separated tools: backupd, restic, kopia, tarzstd (default backupd,restic; with --gen-workspace backupd,restic,tarzstd)")
	flag.StringVar(&scenarios, "scenarios", "", "comma-separated scenarios: backup, rebackup, rebackup-1pct, restore, restore-over, restore-ready, checkpoint-stop, checkpoint-load (default backup,restore; with --gen-workspace all but the last three). Opt-in, backupd only: restore-ready restores with --ready-before-complete and reports the time to READY as scenario ready; checkpoint-stop times the stop backup after a checkpoint and without one, against an unchanged re-backup plus the upload of the bytes the stop stored (1% of the files changed and --checkpoint-grow bytes appended to a file between checkpoint and stop); checkpoint-load times a CPU-bound and an I/O-bound workload with and without a checkpoint running beside it")
	flag.StringVar(&o.out, "out", "", "also write the report, with a machine header, to this `FILE`")
	flag.StringVar(&o.restic, "restic", "", "restic binary (default: built by benchmarks/peers.sh)")
	flag.StringVar(&o.kopia, "kopia", "", "kopia binary (default: built by benchmarks/peers.sh kopia)")
	flag.StringVar(&o.backupctl, "backupctl", "", "backupctl binary (default: go build ./cmd/backupctl)")
	flag.StringVar(&o.tmp, "tmp", "", "directory for repositories, restore targets and generated data (default benchmarks/_work in the repository, which go tooling ignores; /tmp can be much slower at creating files than the disk workspaces live on)")
	flag.StringVar(&o.restoreDir, "restore-dir", "", "restore into fresh directories under this `DIR` (e.g. /dev/shm, to measure the tools without the disk's metadata costs) instead of the work directory")
	flag.IntVar(&o.warmups, "warmup", 1, "untimed warm-up cycles per tool before the timed runs")
	flag.BoolVar(&o.verifyAll, "verify-all", false, "verify every restore, not only the first of each tool")
	flag.Func("ready-late", "restore-ready: pass `GLOB` to backupctl restore --late (repeatable), e.g. node_modules/", func(v string) error {
		o.readyLate = append(o.readyLate, v)
		return nil
	})
	flag.StringVar(&o.pprofDir, "pprof", "", "make backupd's timed runs write CPU profiles (backupctl --cpu-profile) into `DIR`, one per scenario and run: SCENARIO-runN.prof")
	flag.IntVar(&o.pruneSnapshots, "prune-snapshots", 20, "the prune scenario: `N` snapshots, then forget all but the newest and prune")
	flag.Float64Var(&o.pruneChange, "prune-change", 10, "the prune scenario: `PERCENT` of the files rewritten with new content between snapshots")
	var ckptGrow, loadCPU, loadIO string
	flag.StringVar(&ckptGrow, "checkpoint-grow", "256MiB", "checkpoint-stop: the session creates a file of this `SIZE` of incompressible bytes, and the same is appended to it between the checkpoint and the stop")
	flag.StringVar(&loadCPU, "load-cpu", "8GiB", "checkpoint-load: the CPU-bound workload hashes this `SIZE` in all with SHA-256 on GOMAXPROCS goroutines (~3.5 s on 2 cores)")
	flag.StringVar(&loadIO, "load-io", "512MiB", "checkpoint-load: the I/O-bound workload writes and fsyncs this `SIZE` in 4 MiB files in the workspace, then reads it back after posix_fadvise DONTNEED")
	var useMinIO bool
	flag.BoolVar(&useMinIO, "minio", false, "keep the repositories in a MinIO server started on loopback (binaries from `make test-servers`) instead of local directories")
	flag.Func("warm-memory", "before each timed step, write and remove `SIZE` (like 2GiB) in --tmp's filesystem, untimed, so that the step gets memory the machine has just used: on a VM whose host takes back free pages, memory not touched lately costs several times more to write, and a step that grows the memory in use (MinIO storing in tmpfs, a restore into tmpfs) pays it (benchmarks/RESULTS.md, section 25)", func(s string) error {
		n, err := parseSize(s)
		if err != nil {
			return err
		}
		if n < 0 {
			return fmt.Errorf("negative size %q", s)
		}
		warmBytes = n
		return nil
	})
	flag.BoolVar(&o.freshMinIO, "fresh-minio", false, "with --minio: restart MinIO, empty, before each checkpoint-stop cycle (the warm-up too), so that every cycle meets the server as the first one does (one server kept for all spent about 60 % more CPU on a stop after its first cycle: benchmarks/RESULTS.md, section 24; section 25 found the cause, which --warm-memory also takes away)")
	var netLimit string
	flag.StringVar(&netLimit, "net-limit", "0", "with --minio: the tools reach MinIO through a proxy that passes at most this `SIZE` per second each way, all connections together (e.g. 125MB for a 1 Gbit/s link); 0: no limit")
	var netShape string
	flag.StringVar(&netShape, "net-shape", "0", "with --minio: shape the loopback interface to this `SIZE` per second with the kernel's token bucket (tc qdisc tbf; needs root and tc, and slows all of this machine's loopback traffic while the harness runs), a link that costs the tools no CPU, unlike --net-limit's proxy; 0: none")
	var generateOnly string
	flag.StringVar(&generateOnly, "generate-only", "", "with --gen-large or --gen-workspace: write the generated tree to `DIR` and exit (for profiling by hand)")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if o.runs < 1 {
		return fmt.Errorf("--runs must be at least 1")
	}
	for _, f := range []struct {
		dst       *int64
		name, arg string
	}{{&o.ckptGrow, "checkpoint-grow", ckptGrow}, {&o.loadCPU, "load-cpu", loadCPU}, {&o.loadIO, "load-io", loadIO},
		{&o.netLimit, "net-limit", netLimit}, {&o.netShape, "net-shape", netShape}} {
		n, err := parseSize(f.arg)
		if err != nil {
			return fmt.Errorf("--%s: %w", f.name, err)
		}
		*f.dst = n
	}
	if (o.netLimit > 0 || o.netShape > 0) && !useMinIO {
		return fmt.Errorf("--net-limit and --net-shape need --minio")
	}
	if o.netLimit > 0 && o.netShape > 0 {
		return fmt.Errorf("--net-limit and --net-shape are two ways to make a link: give one")
	}
	if o.freshMinIO && !useMinIO {
		return fmt.Errorf("--fresh-minio needs --minio")
	}
	if genWS != "" {
		spec, err := parseWorkspaceSpec(genWS)
		if err != nil {
			return err
		}
		o.genWS = &spec
	}
	onlyCheckpoints := scenarios != "" && !slices.ContainsFunc(splitList(scenarios), func(s string) bool { return !slices.Contains(checkpointScenarios, s) })
	if tools == "" {
		tools = "backupd,restic"
		if o.genWS != nil && scenarios != "prune" {
			tools += ",tarzstd"
		}
		if onlyCheckpoints {
			tools = "backupd" // they measure backupd alone
		}
	}
	if scenarios == "" {
		scenarios = "backup,restore"
		if o.genWS != nil {
			scenarios = strings.Join(slices.DeleteFunc(slices.Clone(allScenarios), func(s string) bool { return slices.Contains(optInScenarios, s) }), ",")
		}
	}
	o.tools = splitList(tools)
	o.scenarios = splitList(scenarios)
	if i := slices.Index(o.scenarios, "restore-ready"); i >= 0 && !slices.Contains(o.scenarios, "ready") {
		o.scenarios = slices.Insert(o.scenarios, i+1, "ready")
	}
	for _, t := range o.tools {
		if t != "backupd" && t != "restic" && t != "kopia" && t != "tarzstd" {
			return fmt.Errorf("unknown tool %q", t)
		}
	}
	for _, s := range o.scenarios {
		if !slices.Contains(allScenarios, s) && s != "prune" {
			return fmt.Errorf("unknown scenario %q (want %s, or prune alone)", s, strings.Join(allScenarios, ", "))
		}
	}
	if slices.Contains(o.scenarios, "prune") {
		switch {
		case len(o.scenarios) > 1:
			return fmt.Errorf("the prune scenario runs alone (--scenarios prune)")
		case genWS == "":
			return fmt.Errorf("the prune scenario rewrites files of a generated workspace: use it with --gen-workspace")
		case slices.Contains(o.tools, "tarzstd"), slices.Contains(o.tools, "kopia"):
			return fmt.Errorf("the prune scenario compares backupd and restic: --tools backupd,restic")
		case o.pruneSnapshots < 2 || o.pruneChange <= 0 || o.pruneChange > 100:
			return fmt.Errorf("--prune-snapshots must be at least 2 and --prune-change in (0, 100]")
		}
	}
	if len(o.tools) == 0 || len(o.scenarios) == 0 {
		return fmt.Errorf("no tools or no scenarios selected")
	}
	if onlyCheckpoints && !slices.Equal(o.tools, []string{"backupd"}) {
		return fmt.Errorf("checkpoint-stop and checkpoint-load measure backupd alone: --tools backupd")
	}
	if err := checkpointOptions(&o, genWS != "" || genLarge != ""); err != nil {
		return err
	}
	if useMinIO && (slices.Contains(o.tools, "tarzstd") || slices.Contains(o.tools, "kopia")) {
		return fmt.Errorf("tarzstd and kopia run on local files only; leave them out with --minio (--tools backupd,restic)")
	}
	if genLarge != "" && genWS != "" {
		return fmt.Errorf("--gen-large and --gen-workspace are exclusive")
	}
	if genWS != "" && o.data != "" {
		return fmt.Errorf("--data and --gen-workspace are exclusive")
	}
	if slices.Contains(o.scenarios, "rebackup-1pct") && genLarge == "" && genWS == "" {
		// It edits the dataset in place (and undoes the edit); never do
		// that to a directory the harness did not create.
		return fmt.Errorf("rebackup-1pct changes the dataset in place: use it with --gen-workspace or --gen-large")
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
		switch {
		case o.genWS != nil:
			return generateWorkspace(generateOnly, *o.genWS)
		case o.genLarge > 0:
			return generateLarge(generateOnly, o.genLarge)
		}
		return fmt.Errorf("--generate-only needs --gen-large or --gen-workspace")
	}
	if o.pprofDir != "" {
		if err := os.MkdirAll(o.pprofDir, 0o755); err != nil {
			return err
		}
		abs, err := filepath.Abs(o.pprofDir)
		if err != nil {
			return err
		}
		o.pprofDir = abs
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
	warmDir = work
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
		if b.hasScenario("prune") || o.netLimit > 0 {
			// The prune scenario counts both tools' requests here; with
			// --net-limit it is the link.
			if b.proxy, err = startCountingProxy(b.minio.url, o.netLimit); err != nil {
				return err
			}
			defer b.proxy.close()
		}
		if o.netShape > 0 {
			undo, err := shapeLoopback(o.netShape)
			if err != nil {
				return err
			}
			defer undo()
		}
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

// allScenarios are the scenarios in the order a cycle runs them, then the
// checkpoint scenarios, which run after all cycles (checkpoint.go).
var allScenarios = []string{"backup", "rebackup", "restore", "restore-ready", "ready", "restore-over", "rebackup-1pct", "checkpoint-stop", "checkpoint-load"}

// optInScenarios run only when asked for: restore-ready (backupd only) is
// a restore with --ready-before-complete, timed to its end, and records
// "ready" too, the time to its READY line; checkpoint-stop and
// checkpoint-load (backupd only) are issue 13's checkpoint acceptance.
var optInScenarios = []string{"restore-ready", "ready", "checkpoint-stop", "checkpoint-load"}

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
	kopia, kopiaVer       string
	backupdVer, resticVer string
	tarVer, zstdVer       string
	backupdOverwrite      bool // backupctl restore has --overwrite and --delete
	data                  string
	dataDesc              string
	src                   *treeInfo
	results               map[string][]measurement // key: scenario + "/" + tool
	resticInit            []float64                // seconds, untimed setup
	kopiaCreate           []float64                // seconds, untimed setup
	warnings              []string
	warmup                time.Duration
	recording             bool
	minio                 *minioServer       // --minio: repositories live there
	cleanup               []string           // restore targets outside the work directory
	lastWrite             time.Time          // when the harness last wrote to the dataset
	rereads               map[string][]int64 // scenario/tool: files read again by each re-backup (-1: all)
	change, overChange    *treeChange        // the rebackup-1pct and restore-over changes (the same every run)
	verified              map[string]bool    // scenario/tool verified against the source
	proxy                 *countingProxy     // --minio with the prune scenario: the tools talk to MinIO through it
	pruneRuns             map[string][]pruneRun
	stopRuns              []stopRun // checkpoint-stop
	loadRuns              []loadRun // checkpoint-load
	pattern               []byte    // checkpoint-stop: the upload baseline's bytes
	workspaceFS           string    // checkpoint-load: the filesystem the workspace is on
	datasetChecked        []string  // checkpoint scenarios after which the dataset was found as generated
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
		help, _ := exec.Command(b.backupctl, "restore", "--help").CombinedOutput()
		b.backupdOverwrite = bytes.Contains(help, []byte("--overwrite")) && bytes.Contains(help, []byte("--delete"))
		if b.hasScenario("restore-over") && !b.backupdOverwrite {
			b.warn("backupctl restore has no --overwrite/--delete yet: restore-over skipped for backupd")
		}
		if b.opts.backupctl != "" {
			// Given by --backupctl: say so, not this checkout's commit.
			b.backupdVer = "backupctl " + b.opts.backupctl + " (given by --backupctl)"
		} else {
			b.backupdVer = "backupctl built from " + root
			if out, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty").Output(); err == nil {
				b.backupdVer += " @ " + strings.TrimSpace(string(out))
			} else {
				b.backupdVer += " (no commit)"
			}
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
	if b.has("kopia") {
		if err := b.setupKopia(root); err != nil {
			return err
		}
	}
	if b.has("tarzstd") {
		for _, t := range []struct {
			ver  *string
			name string
		}{{&b.tarVer, "tar"}, {&b.zstdVer, "zstd"}} {
			out, err := exec.Command(t.name, "--version").Output()
			if err != nil {
				return fmt.Errorf("%s --version: %v (tarzstd needs tar and zstd)", t.name, err)
			}
			line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
			*t.ver = strings.Trim(line, "* ") // zstd frames its banner in stars
		}
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
	case b.opts.genWS != nil:
		spec := *b.opts.genWS
		b.data = filepath.Join(b.work, "data")
		fmt.Fprintf(os.Stderr, "harness: generating a workspace (%s, ~%s) in %s\n", spec.generatorArg, mib(spec.nominalSize()), b.data)
		start := time.Now()
		if err := generateWorkspace(b.data, spec); err != nil {
			return fmt.Errorf("generating the workspace: %v", err)
		}
		b.lastWrite = time.Now()
		fmt.Fprintf(os.Stderr, "harness: generated in %.1fs\n", time.Since(start).Seconds())
		var bins []string
		for _, n := range spec.binaries {
			bins = append(bins, mib(n))
		}
		if spec.smallFiles > 0 {
			b.dataDesc = fmt.Sprintf("generated by --gen-workspace %s: %d small text files (1-16 KiB: code, JSON, prose) in %d directories", spec.generatorArg, spec.smallFiles, spec.smallDirs)
			break
		}
		b.dataDesc = fmt.Sprintf("generated by --gen-workspace %s: a git repository (%d source files, %d commits, packed and loose objects), "+
			"node_modules with %d small files (200 B-8 KiB) and .bin symlinks, binaries of %s (partly repetitive), "+
			"%d files of random data (%s in all)",
			spec.generatorArg, spec.srcFiles, spec.commits, spec.nodeFiles, strings.Join(bins, ", "), spec.randomFiles, mib(spec.randomBytes))
	case b.opts.genLarge > 0:
		b.data = filepath.Join(b.work, "data")
		fmt.Fprintf(os.Stderr, "harness: generating %d bytes of data in %s\n", b.opts.genLarge, b.data)
		start := time.Now()
		if err := generateLarge(b.data, b.opts.genLarge); err != nil {
			return fmt.Errorf("generating data: %v", err)
		}
		fmt.Fprintf(os.Stderr, "harness: generated in %.1fs\n", time.Since(start).Seconds())
		b.lastWrite = time.Now()
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

// runAll runs the selected scenarios for every selected tool, runs
// interleaved (run 1 of every tool, then run 2, ...) so that slow drifts of
// a noisy machine hit all tools alike.
func (b *bench) runAll() error {
	b.results = map[string][]measurement{}
	b.rereads = map[string][]int64{}
	b.verified = map[string]bool{}
	if b.hasScenario("prune") {
		return b.runPrune()
	}
	// Untimed warm-up cycles: on VMs the first writes into never-touched
	// memory (page cache growth) cost far more kernel time than later ones,
	// which would penalise whichever tool runs first. With only the
	// checkpoint scenarios, backupd's alone.
	tools := b.opts.tools
	if !b.hasCycleScenarios() {
		tools = []string{"backupd"}
	}
	b.recording = false
	for i := 1; i <= b.opts.warmups; i++ {
		for _, tool := range tools {
			fmt.Fprintf(os.Stderr, "harness: warm-up cycle %d for %s (not timed)\n", i, tool)
			dir := filepath.Join(b.work, fmt.Sprintf("%s-warmup%d", tool, i))
			if err := b.cycle(tool, dir, false, true); err != nil {
				return fmt.Errorf("%s warm-up %d: %v", tool, i, err)
			}
			if err := b.removeRun(dir); err != nil {
				return err
			}
		}
	}
	b.recording = true
	for i := 1; i <= b.opts.runs && b.hasCycleScenarios(); i++ {
		for _, tool := range b.opts.tools {
			dir := filepath.Join(b.work, fmt.Sprintf("%s-run%d", tool, i))
			if err := b.cycle(tool, dir, i == 1 || b.opts.verifyAll, false); err != nil {
				return fmt.Errorf("%s run %d: %v", tool, i, err)
			}
			if err := b.removeRun(dir); err != nil {
				return err
			}
		}
	}
	return b.runCheckpoints()
}

// hasCycleScenarios says whether a scenario of the per-tool cycle is
// selected (anything but the checkpoint scenarios).
func (b *bench) hasCycleScenarios() bool {
	return slices.ContainsFunc(b.opts.scenarios, func(s string) bool { return !slices.Contains(checkpointScenarios, s) })
}

// toolRun is one tool's repository (or archive) for one cycle.
type toolRun struct {
	tool   string
	dir    string   // the run's directory
	repo   string   // local path of the repository or archive, for its size
	arg    string   // backupd: repository URL; restic: repository argument; kopia: repository path; tarzstd: archive path
	cache  string   // cache directory (backupd, restic, kopia)
	bucket string   // --minio: the run's bucket
	env    []string // extra environment
	flags  []string // kopia: its config file and log directory, on every command
}

// Seeds of the two 1% changes: the one rebackup-1pct applies to the dataset
// (and undoes) and the one restore-over applies to the copy it restores over.
const (
	changeSeed = 1
	overSeed   = 2
)

// cycle runs, for one tool in the fresh run directory dir and on one
// repository, the selected scenarios in this order:
//
//  1. backup: the first backup into an empty repository (always done; timed
//     as "backup" if selected, else untimed setup for the others);
//  2. rebackup: a second backup of the unchanged dataset;
//  3. restore: the latest snapshot into an empty directory;
//  4. restore-over: the latest snapshot over a copy of the dataset (made
//     untimed with cp -a, so unchanged files keep size and mtime) in which
//     1% of the files were changed, deleted or added;
//  5. rebackup-1pct: a backup after 1% of the dataset's files were changed
//     in place; the change is undone afterwards, so every run measures the
//     same change. It comes last so that the restores see the unchanged
//     dataset as the latest snapshot.
//
// A warm-up cycle only backs up and restores, untimed.
func (b *bench) cycle(tool, dir string, verify, warmup bool) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	r, err := b.newRun(tool, dir)
	if err != nil {
		return err
	}
	// The parent backup must start at least racySettle after the harness
	// last wrote to the dataset; see settle.
	b.settle()
	m, err := b.backupStep(r, "backup")
	if err != nil {
		return err
	}
	b.record("backup", tool, m)
	if warmup {
		if !b.hasScenario("restore") && !b.hasScenario("restore-over") {
			return nil
		}
		target, err := b.restoreTarget(dir, "restore")
		if err != nil {
			return err
		}
		_, err = b.restoreStep(r, target, false)
		return err
	}

	if b.hasScenario("rebackup") {
		m, err := b.backupStep(r, "rebackup")
		if err != nil {
			return err
		}
		b.record("rebackup", tool, m)
	}

	if b.hasScenario("restore") {
		target, err := b.restoreTarget(dir, "restore")
		if err != nil {
			return err
		}
		m, err := b.restoreStep(r, target, false)
		if err != nil {
			return err
		}
		b.record("restore", tool, m)
		if verify {
			if err := b.verify(tool, "restore", b.restoredRoot(tool, target), nil); err != nil {
				return err
			}
		}
		// Free the disk (untimed) before the next step.
		if err := removeAll(target); err != nil {
			return err
		}
	}

	if b.hasScenario("restore-ready") && tool == "backupd" {
		target, err := b.restoreTarget(dir, "restore-ready")
		if err != nil {
			return err
		}
		m, ready, err := b.readyRestoreStep(r, target)
		if err != nil {
			return err
		}
		b.record("restore-ready", tool, m)
		b.record("ready", tool, measurement{wall: ready})
		if verify {
			if err := b.verify(tool, "restore-ready", b.restoredRoot(tool, target), nil); err != nil {
				return err
			}
		}
		if err := removeAll(target); err != nil {
			return err
		}
	}

	if b.hasScenario("restore-over") && !(tool == "backupd" && !b.backupdOverwrite) {
		target, err := b.restoreTarget(dir, "restore-over")
		if err != nil {
			return err
		}
		root := b.restoredRoot(tool, target)
		if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
			return err
		}
		if out, err := exec.Command("cp", "-a", b.data, root).CombinedOutput(); err != nil {
			return fmt.Errorf("cp -a %s %s: %v\n%s", b.data, root, err, out)
		}
		ch, err := changeTree(root, b.src, 1, overSeed)
		if err != nil {
			return fmt.Errorf("changing the restore-over target: %v", err)
		}
		b.overChange = ch
		m, err := b.restoreStep(r, target, true)
		if err != nil {
			return err
		}
		b.record("restore-over", tool, m)
		if verify {
			var extra []string
			if tool == "tarzstd" {
				extra = ch.added // tar deletes nothing
			}
			if err := b.verify(tool, "restore-over", root, extra); err != nil {
				return err
			}
		}
		if err := removeAll(target); err != nil {
			return err
		}
	}

	if b.hasScenario("rebackup-1pct") {
		ch, err := changeTree(b.data, b.src, 1, changeSeed)
		if err != nil {
			return fmt.Errorf("changing 1%% of the dataset: %v", err)
		}
		b.change = ch
		m, err := b.backupStep(r, "rebackup-1pct")
		// Undo even after a failure: the dataset must stay as generated.
		if uerr := ch.undo(); uerr != nil {
			return fmt.Errorf("undoing the 1%% change of %s (regenerate it): %v", b.data, uerr)
		}
		b.lastWrite = time.Now()
		if err != nil {
			return err
		}
		b.record("rebackup-1pct", tool, m)
	}
	return nil
}

// racySettle is how long after the harness last wrote to the dataset a
// parent backup may start. backupd, like git ("racy git"), does not trust
// the stat data of a file whose ctime lies within 2 s before the start of
// the backup that recorded it (its parent), and rereads such a file in the
// next backup. A first backup started right after the dataset was generated,
// or right after the 1% change was undone, would make the following
// "unchanged" re-backup reread those files, measuring the guard instead of
// the steady state. restic has no such guard; waiting costs it nothing.
const racySettle = 2500 * time.Millisecond

// settle sleeps (untimed) until racySettle has passed since the last write
// to the dataset.
func (b *bench) settle() {
	if d := time.Until(b.lastWrite.Add(racySettle)); d > 0 {
		fmt.Fprintf(os.Stderr, "harness: waiting %.1fs so that no file's ctime lies within backupd's 2 s racy window of the parent backup\n", d.Seconds())
		time.Sleep(d)
	}
}

// storeEndpoint is the URL the tools reach MinIO at: the proxy's when there
// is one (the prune scenario's counts, --net-limit's link), else MinIO's;
// "" without --minio.
func (b *bench) storeEndpoint() string {
	switch {
	case b.proxy != nil:
		return b.proxy.url
	case b.minio != nil:
		return b.minio.url
	}
	return ""
}

// newRun prepares a fresh repository (or archive path) for tool in dir.
func (b *bench) newRun(tool, dir string) (*toolRun, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	endpoint := b.storeEndpoint()
	r := &toolRun{tool: tool, dir: dir, repo: filepath.Join(dir, "repo"), cache: filepath.Join(dir, "cache")}
	switch tool {
	case "backupd":
		r.arg = "file://" + r.repo
		if b.minio != nil {
			bucket, err := b.minio.newBucket()
			if err != nil {
				return nil, err
			}
			r.arg = fmt.Sprintf("s3://%s/backupd?region=us-east-1&endpoint=%s", bucket, endpoint)
			r.bucket = bucket
			r.repo = filepath.Join(b.minio.dataDir, bucket)
			r.env = b.minio.env()
		}
	case "restic":
		r.arg = r.repo
		r.env = []string{"RESTIC_PASSWORD=backupd-bench"}
		if b.minio != nil {
			bucket, err := b.minio.newBucket()
			if err != nil {
				return nil, err
			}
			r.arg = fmt.Sprintf("s3:%s/%s/restic", endpoint, bucket)
			r.repo = filepath.Join(b.minio.dataDir, bucket)
			r.env = append(r.env, b.minio.env()...)
		}
		// restic needs an explicit init (which derives the master key
		// with scrypt); it is setup, timed separately and not part of
		// the backup.
		m, _, err := measure(r.env, b.restic, "init", "-r", r.arg, "--cache-dir", r.cache)
		if err != nil {
			return nil, err
		}
		if b.recording {
			b.resticInit = append(b.resticInit, m.wall.Seconds())
		}
	case "kopia":
		if err := b.newKopiaRun(r); err != nil {
			return nil, err
		}
	case "tarzstd":
		r.repo = filepath.Join(dir, "ws.tar.zst")
		r.arg = r.repo
	}
	return r, nil
}

// backupStep runs one timed backup of the dataset into r for scenario
// (backup, rebackup or rebackup-1pct) and notes how many files the tool
// read again.
func (b *bench) backupStep(r *toolRun, scenario string) (measurement, error) {
	var m measurement
	var err error
	reread := int64(-1)
	unchangedData := scenario != "rebackup-1pct"
	switch r.tool {
	case "backupd":
		var out []byte
		args := append(b.profileArgs(scenario), "backup", "-r", r.arg, "--owner", "bench", "--workspace", "ws",
			"--cache-dir", r.cache, "--json", b.data)
		m, out, err = measure(r.env, b.backupctl, args...)
		if err != nil {
			return m, err
		}
		var st struct {
			Files     *int64 `json:"files"`
			Unchanged *int64 `json:"unchanged_files"`
			Bytes     *int64 `json:"bytes"`
		}
		if err := json.Unmarshal(out, &st); err != nil {
			return m, fmt.Errorf("backupctl backup: bad JSON output %q: %v", out, err)
		}
		if unchangedData && st.Files != nil && *st.Files != int64(b.src.files) {
			b.warn(fmt.Sprintf("backupctl backup reported files=%d, dataset has %d regular files", *st.Files, b.src.files))
		}
		if unchangedData && st.Bytes != nil && *st.Bytes != b.src.bytes {
			b.warn(fmt.Sprintf("backupctl backup reported bytes=%d, dataset has %d bytes", *st.Bytes, b.src.bytes))
		}
		if st.Files != nil && st.Unchanged != nil {
			reread = *st.Files - *st.Unchanged
		}
	case "restic":
		var out []byte
		m, out, err = measure(r.env, b.restic, "backup", "-r", r.arg, "--cache-dir", r.cache, "--json", b.data)
		if err != nil {
			return m, err
		}
		if st, ok := resticSummary(out); ok {
			reread = st.FilesNew + st.FilesChanged
		}
	case "kopia":
		if m, reread, err = b.kopiaBackup(r); err != nil {
			return m, err
		}
	case "tarzstd":
		// -f: a re-backup overwrites the archive, as Gitpod does.
		m, _, err = measurePipeline(nil,
			[]string{"tar", "-C", b.data, "-cf", "-", "."},
			[]string{"zstd", "-1", "-T0", "-q", "-f", "-o", r.arg, "-"})
		if err != nil {
			return m, err
		}
		reread = -1 // everything, always
	}
	if m.repoSize, err = dirSize(r.repo); err != nil {
		return m, err
	}
	if b.recording && scenario != "backup" {
		k := scenario + "/" + r.tool
		b.rereads[k] = append(b.rereads[k], reread)
	}
	return m, nil
}

type resticBackupSummary struct {
	MessageType  string `json:"message_type"`
	FilesNew     int64  `json:"files_new"`
	FilesChanged int64  `json:"files_changed"`
}

// resticSummary finds the summary line of `restic backup --json`.
func resticSummary(out []byte) (resticBackupSummary, bool) {
	for _, line := range bytes.Split(out, []byte("\n")) {
		var st resticBackupSummary
		if json.Unmarshal(line, &st) == nil && st.MessageType == "summary" {
			return st, true
		}
	}
	return resticBackupSummary{}, false
}

// restoreStep restores the latest snapshot in r into target, timed; with
// over, target already holds a mostly identical tree.
func (b *bench) restoreStep(r *toolRun, target string, over bool) (measurement, error) {
	switch r.tool {
	case "backupd":
		scenario := "restore"
		if over {
			scenario = "restore-over"
		}
		args := append(b.profileArgs(scenario), "restore", "-r", r.arg, "--owner", "bench", "--workspace", "ws", "--snapshot", "latest",
			"--cache-dir", r.cache, "--json")
		if over {
			args = append(args, "--overwrite", "--delete")
		}
		m, out, err := measure(r.env, b.backupctl, append(args, target)...)
		if err != nil {
			return m, err
		}
		if !json.Valid(bytes.TrimSpace(out)) {
			return m, fmt.Errorf("backupctl restore: bad JSON output %q", out)
		}
		return m, nil
	case "restic":
		args := []string{"restore", "-r", r.arg, "--cache-dir", r.cache, "latest", "--target", target}
		if over {
			args = append(args, "--overwrite", "if-changed", "--delete")
		}
		m, _, err := measure(r.env, b.restic, args...)
		return m, err
	case "kopia":
		return b.kopiaRestore(r, target, over)
	case "tarzstd":
		if err := os.MkdirAll(target, 0o755); err != nil {
			return measurement{}, err
		}
		m, _, err := measurePipeline(nil,
			[]string{"zstd", "-dc", "-q", r.arg},
			[]string{"tar", "-C", target, "-xpf", "-"})
		return m, err
	}
	return measurement{}, fmt.Errorf("unknown tool %q", r.tool)
}

// readyRestoreStep restores with --ready-before-complete and returns the
// measurement of the whole restore and the time to READY that backupctl
// reports (from its start).
func (b *bench) readyRestoreStep(r *toolRun, target string) (measurement, time.Duration, error) {
	args := append(b.profileArgs("restore-ready"), "restore", "-r", r.arg, "--owner", "bench", "--workspace", "ws", "--snapshot", "latest",
		"--cache-dir", r.cache, "--json", "--ready-before-complete")
	for _, g := range b.opts.readyLate {
		args = append(args, "--late", g)
	}
	args = append(args, target)
	m, out, err := measure(r.env, b.backupctl, args...)
	if err != nil {
		return m, 0, err
	}
	var res struct {
		ReadyMS *int64 `json:"ready_ms"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(out), &res); err != nil || res.ReadyMS == nil {
		return m, 0, fmt.Errorf("backupctl restore --ready-before-complete: no ready_ms in its output %q", out)
	}
	return m, time.Duration(*res.ReadyMS) * time.Millisecond, nil
}

// profileArgs are backupctl's arguments that make a timed run of scenario
// write its CPU profile into --pprof DIR (none for untimed runs, or
// without --pprof).
func (b *bench) profileArgs(scenario string) []string {
	if b.opts.pprofDir == "" || !b.recording || !b.hasScenario(scenario) {
		return nil
	}
	name := fmt.Sprintf("%s-run%d.prof", scenario, len(b.results[scenario+"/backupd"])+1)
	return []string{"--cpu-profile", filepath.Join(b.opts.pprofDir, name)}
}

// restoredRoot is where a tool's restore into target puts the dataset's
// root: restic restores the full absolute path below the target.
func (b *bench) restoredRoot(tool, target string) string {
	if tool == "restic" {
		return filepath.Join(target, b.data)
	}
	return target
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
	if !b.recording || !b.hasScenario(scenario) {
		return
	}
	k := scenario + "/" + tool
	b.results[k] = append(b.results[k], m)
	fmt.Fprintf(os.Stderr, "harness: %-7s %-13s run %d: %6.2fs  %7.1f MB/s  cpu %6.2fs (sys %5.2fs)  rss %s\n",
		tool, scenario, len(b.results[k]), m.wall.Seconds(),
		float64(b.src.bytes)/1e6/m.wall.Seconds(), m.cpu.Seconds(), m.sys.Seconds(), mib(m.maxRSS))
}

// restoreTarget returns a fresh restore target called name for a run in
// dir; with --restore-dir it lives there and is removed after the run.
func (b *bench) restoreTarget(dir, name string) (string, error) {
	if b.opts.restoreDir == "" {
		return filepath.Join(dir, name), nil
	}
	t, err := os.MkdirTemp(b.opts.restoreDir, "backupd-bench-restore-")
	if err != nil {
		return "", err
	}
	b.cleanup = append(b.cleanup, t)
	return filepath.Join(t, name), nil
}

// verify compares the restored tree with the source; paths in extra may be
// in the restored tree without being in the source (tar deletes nothing).
func (b *bench) verify(tool, scenario, restored string, extra []string) error {
	got, err := scanTree(restored)
	if err != nil {
		return fmt.Errorf("verifying %s %s: %v", tool, scenario, err)
	}
	for _, p := range extra {
		if _, ok := got.entries[p]; !ok {
			return fmt.Errorf("verifying %s %s in %s: expected leftover %s is missing", tool, scenario, restored, p)
		}
		delete(got.entries, p)
		got.files--
	}
	if err := compareTrees(b.src, got); err != nil {
		return fmt.Errorf("verifying %s %s in %s: %v", tool, scenario, restored, err)
	}
	fmt.Fprintf(os.Stderr, "harness: %s %s verified (%d files, SHA-256 of every file)\n", tool, scenario, got.files)
	b.verified[scenario+"/"+tool] = true
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
	return measurePipeline(env, append([]string{name}, args...))
}

// measurePipeline runs commands connected stdout to stdin like a shell
// pipeline, each under the rusage helper (see rusage.go), and measures them
// as one: CPU and system time summed over the commands, peak RSS the
// largest of theirs (they run at the same time, so that understates the
// pipeline's joint peak by at most the smaller one), and wall time as the
// helper measured it for a single command, or from the first start to the
// last exit for a pipeline. It returns the last command's stdout.
func measurePipeline(env []string, cmds ...[]string) (measurement, []byte, error) {
	self, err := os.Executable()
	if err != nil {
		return measurement{}, nil, err
	}
	if err := warmMemory(); err != nil {
		return measurement{}, nil, err
	}
	syscall.Sync()
	var stdout bytes.Buffer
	procs := make([]*exec.Cmd, len(cmds))
	stderrs := make([]bytes.Buffer, len(cmds))
	reports := make([]*os.File, len(cmds))
	var fds []*os.File // the harness's copies of descriptors the helpers hold
	defer func() {
		for _, f := range append(fds, reports...) {
			if f != nil {
				f.Close()
			}
		}
	}()
	for i, c := range cmds {
		procs[i] = exec.Command(self, c...)
		procs[i].Env = append(append(os.Environ(), env...), rusageHelperEnv+"=1")
		procs[i].Stderr = &stderrs[i]
		r, w, err := os.Pipe()
		if err != nil {
			return measurement{}, nil, err
		}
		reports[i] = r
		fds = append(fds, w)
		procs[i].ExtraFiles = []*os.File{w} // descriptor 3
		if i > 0 {
			r, w, err := os.Pipe()
			if err != nil {
				return measurement{}, nil, err
			}
			fds = append(fds, r, w)
			procs[i-1].Stdout = w
			procs[i].Stdin = r
		}
	}
	procs[len(procs)-1].Stdout = &stdout
	describe := func(i int) string { return filepath.Base(cmds[i][0]) + " " + strings.Join(cmds[i][1:], " ") }
	start := time.Now()
	for i, p := range procs {
		if err := p.Start(); err != nil {
			for _, q := range procs[:i] {
				q.Process.Kill()
				q.Wait()
			}
			return measurement{}, nil, fmt.Errorf("%s: %v", describe(i), err)
		}
	}
	// The helpers hold their ends; close ours so that EOF propagates.
	for _, f := range fds {
		f.Close()
	}
	fds = nil
	errs := make([]error, len(procs))
	for i, p := range procs {
		errs[i] = p.Wait()
	}
	wall := time.Since(start)
	m := measurement{wall: wall}
	for i := range procs {
		var rep helperReport
		data, rerr := io.ReadAll(reports[i])
		if rerr == nil {
			rerr = json.Unmarshal(data, &rep)
		}
		switch {
		case rerr != nil:
			return measurement{}, nil, fmt.Errorf("%s: no rusage report (%v; %v)\nstderr:\n%s", describe(i), rerr, errs[i], stderrs[i].String())
		case rep.Err != "":
			return measurement{}, nil, fmt.Errorf("%s: %s", describe(i), rep.Err)
		case errs[i] != nil:
			return measurement{}, nil, fmt.Errorf("%s: %v\nstderr:\n%s", describe(i), errs[i], stderrs[i].String())
		}
		if len(procs) == 1 {
			m.wall = time.Duration(rep.WallNS)
		}
		m.sys += time.Duration(rep.SysNS)
		m.cpu += time.Duration(rep.UserNS + rep.SysNS)
		m.maxRSS = max(m.maxRSS, rep.MaxRSS)
	}
	return m, stdout.Bytes(), nil
}

func mib(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
