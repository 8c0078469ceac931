package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The prune scenario (issue 10): space given back after a forget.
//
// For each tool and run, on a copy of the generated workspace: a first
// backup, then --prune-snapshots - 1 more, each after rewriting
// --prune-change percent of the files with new content; then the timed
// forget of all but the newest snapshot and the prune (backupd: `backupctl
// forget --keep-last 1`, then `backupctl prune --json`; restic: `restic
// forget --keep-last 1 --prune`). It records the stored bytes before and
// after, the storage requests of the forget and prune (through the counting
// proxy with --minio, and as backupctl's prune reports them), restores the
// newest snapshot and compares it with the copy, and backs the copy up into
// a fresh repository, whose stored bytes are what a perfect prune leaves.

// pruneRun is one tool's figures of one prune run.
type pruneRun struct {
	m                     measurement // forget + prune: wall and CPU summed, RSS the larger
	forget, prune         measurement // backupd: the two commands apart
	before, after, fresh  int64       // stored bytes
	objBefore, objAfter   int64       // stored objects
	objFresh              int64
	proxy                 map[requestKind]int64 // requests through the proxy (--minio)
	proxyForget           int64                 // backupd: of which the forget's
	selfRequests          int64                 // backupctl prune's own count (-1: none)
	selfByKind            map[string]int64
	backups               time.Duration // the untimed series of backups, summed
	restoreOK             bool
	rewritten, rewrittenB int64 // files and bytes rewritten per step (the last step's)
}

// rewriteFiles gives pct percent of the planned files (by count) that exist
// in the tree at root new content of the same kind and size, chosen by
// step: the same files and contents for every tool and run. It returns how
// many files and bytes it rewrote.
func rewriteFiles(root string, plan []genFile, pct float64, step int) (int64, int64, error) {
	n := int(float64(len(plan))*pct/100 + 0.5)
	rng := rand.New(rand.NewPCG(genSeed^0x7072756e65, uint64(step))) // "prune"
	perm := rng.Perm(len(plan))
	picked := make([]genFile, 0, n)
	var bytes int64
	for _, i := range perm[:n] {
		f := plan[i]
		f.seed += uint64(step) << 20 // plan seeds are small; large files shift the seed by 32
		picked = append(picked, f)
		bytes += f.size
	}
	if err := writeFiles(root, picked); err != nil {
		return 0, 0, err
	}
	return int64(n), bytes, nil
}

// pruneCandidates are the planned files the rewrite may pick: those the
// generated dataset holds as regular files, with content of their own.
func (b *bench) pruneCandidates() []genFile {
	p := planWorkspace(*b.opts.genWS)
	var out []genFile
	for _, f := range append(p.src, p.other...) {
		if e, ok := b.src.entries[f.path]; ok && e.kind == 'f' && f.kind != 'g' && f.size > 0 {
			out = append(out, f)
		}
	}
	return out
}

// pruneCycle runs the prune scenario for one tool in the fresh run
// directory dir.
func (b *bench) pruneCycle(tool, dir string, plan []genFile) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	ws := filepath.Join(dir, "ws")
	if out, err := exec.Command("cp", "-a", b.data, ws).CombinedOutput(); err != nil {
		return fmt.Errorf("cp -a %s %s: %v\n%s", b.data, ws, err, out)
	}
	r, err := b.newRun(tool, filepath.Join(dir, "main"))
	if err != nil {
		return err
	}
	pr := pruneRun{selfRequests: -1}
	for i := 0; i < b.opts.pruneSnapshots; i++ {
		if i > 0 {
			if pr.rewritten, pr.rewrittenB, err = rewriteFiles(ws, plan, b.opts.pruneChange, i); err != nil {
				return fmt.Errorf("rewriting files: %v", err)
			}
		}
		m, err := b.backupPath(r, ws)
		if err != nil {
			return fmt.Errorf("backup %d: %v", i+1, err)
		}
		pr.backups += m.wall
	}
	fmt.Fprintf(os.Stderr, "harness: %s: %d snapshots in %.1fs (untimed setup)\n", tool, b.opts.pruneSnapshots, pr.backups.Seconds())
	if pr.before, pr.objBefore, err = b.storedBytes(r); err != nil {
		return err
	}

	if b.proxy != nil {
		b.proxy.reset()
	}
	switch tool {
	case "backupd":
		common := []string{"-r", r.arg, "--owner", "bench", "--cache-dir", r.cache, "--json"}
		var out []byte
		if pr.forget, out, err = measure(r.env, b.backupctl, append([]string{"forget", "--keep-last", "1"}, common...)...); err != nil {
			return err
		}
		if !json.Valid(bytes.TrimSpace(out)) {
			return fmt.Errorf("backupctl forget: bad JSON output %q", out)
		}
		if b.proxy != nil {
			pr.proxyForget = requestTotal(b.proxy.counts(), "")
		}
		if pr.prune, out, err = measure(r.env, b.backupctl, append([]string{"prune"}, common...)...); err != nil {
			return err
		}
		var res struct {
			Requests *int64           `json:"requests"`
			ByKind   map[string]int64 `json:"requests_by_kind"`
			Before   int64            `json:"bytes_before"`
			After    int64            `json:"bytes_after"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			return fmt.Errorf("backupctl prune: bad JSON output %q: %v", out, err)
		}
		if res.Requests != nil {
			pr.selfRequests, pr.selfByKind = *res.Requests, res.ByKind
		}
		pr.m = measurement{wall: pr.forget.wall + pr.prune.wall, cpu: pr.forget.cpu + pr.prune.cpu,
			sys: pr.forget.sys + pr.prune.sys, maxRSS: max(pr.forget.maxRSS, pr.prune.maxRSS)}
	case "restic":
		if pr.m, _, err = measure(r.env, b.restic, "forget", "-r", r.arg, "--cache-dir", r.cache, "--keep-last", "1", "--prune"); err != nil {
			return err
		}
	default:
		return fmt.Errorf("the prune scenario has no %s", tool)
	}
	if b.proxy != nil {
		pr.proxy = b.proxy.counts()
	}
	if pr.after, pr.objAfter, err = b.storedBytes(r); err != nil {
		return err
	}

	// The newest snapshot must restore identical to the copy.
	want, err := scanTree(ws)
	if err != nil {
		return err
	}
	target, err := b.restoreTarget(dir, "restore")
	if err != nil {
		return err
	}
	if _, err := b.restoreStep(r, target, false); err != nil {
		return fmt.Errorf("restore after prune: %v", err)
	}
	root := target
	if tool == "restic" {
		root = filepath.Join(target, ws)
	}
	got, err := scanTree(root)
	if err != nil {
		return fmt.Errorf("verifying %s restore after prune: %v", tool, err)
	}
	if err := compareTrees(want, got); err != nil {
		return fmt.Errorf("verifying %s restore after prune in %s: %v", tool, root, err)
	}
	pr.restoreOK = true
	fmt.Fprintf(os.Stderr, "harness: %s restore after prune verified (%d files, SHA-256 of every file)\n", tool, got.files)
	if err := removeAll(target); err != nil {
		return err
	}

	// What a perfect prune would leave: a fresh repository of the newest
	// state alone (its restic init is not a measurement).
	rec := b.recording
	b.recording = false
	fr, err := b.newRun(tool, filepath.Join(dir, "fresh"))
	b.recording = rec
	if err != nil {
		return err
	}
	if _, err := b.backupPath(fr, ws); err != nil {
		return fmt.Errorf("fresh backup: %v", err)
	}
	if pr.fresh, pr.objFresh, err = b.storedBytes(fr); err != nil {
		return err
	}

	b.pruneRuns[tool] = append(b.pruneRuns[tool], pr)
	reqs := "-"
	if pr.proxy != nil {
		reqs = fmt.Sprint(requestTotal(pr.proxy, ""))
	}
	fmt.Fprintf(os.Stderr, "harness: %-7s forget+prune run %d: %6.2fs  cpu %6.2fs  rss %s  requests %s (self %d)  bytes %s -> %s (fresh %s)\n",
		tool, len(b.pruneRuns[tool]), pr.m.wall.Seconds(), pr.m.cpu.Seconds(), mib(pr.m.maxRSS), reqs, pr.selfRequests,
		mib(pr.before), mib(pr.after), mib(pr.fresh))
	return nil
}

// backupPath backs path up into r (untimed setup for the prune scenario,
// measured all the same).
func (b *bench) backupPath(r *toolRun, path string) (measurement, error) {
	switch r.tool {
	case "backupd":
		m, _, err := measure(r.env, b.backupctl, "backup", "-r", r.arg, "--owner", "bench", "--workspace", "ws",
			"--cache-dir", r.cache, "--json", path)
		return m, err
	case "restic":
		m, _, err := measure(r.env, b.restic, "backup", "-r", r.arg, "--cache-dir", r.cache, "--json", path)
		return m, err
	}
	return measurement{}, fmt.Errorf("the prune scenario has no %s", r.tool)
}

// storedBytes is the size and number of the objects a repository holds:
// in MinIO as the bucket listing says (object sizes, not MinIO's files),
// else the files of its directory.
func (b *bench) storedBytes(r *toolRun) (int64, int64, error) {
	if b.minio == nil {
		n, err := dirSize(r.repo)
		if err != nil {
			return 0, 0, err
		}
		objects, err := fileCount(r.repo)
		return n, objects, err
	}
	out, err := b.minio.mcRun("ls", "--recursive", "--json", "bench/"+filepath.Base(r.repo))
	if err != nil {
		return 0, 0, fmt.Errorf("mc ls: %v: %s", err, out)
	}
	var size, objects int64
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e struct {
			Status string `json:"status"`
			Type   string `json:"type"`
			Size   int64  `json:"size"`
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return 0, 0, fmt.Errorf("mc ls: %q: %v", sc.Bytes(), err)
		}
		if e.Status != "success" {
			return 0, 0, fmt.Errorf("mc ls: %s", sc.Bytes())
		}
		if e.Type == "file" {
			size += e.Size
			objects++
		}
	}
	return size, objects, sc.Err()
}

// fileCount is the number of regular files under root.
func fileCount(root string) (int64, error) {
	var n int64
	err := filepath.WalkDir(root, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return err
	})
	return n, err
}

// runPrune runs the prune scenario, runs interleaved between tools. It has
// no warm-up cycle: each run's 20 backups warm the machine up before the
// timed step.
func (b *bench) runPrune() error {
	b.pruneRuns = map[string][]pruneRun{}
	plan := b.pruneCandidates()
	if len(plan) == 0 {
		return fmt.Errorf("the prune scenario found no planned files in the dataset")
	}
	b.recording = true
	for i := 1; i <= b.opts.runs; i++ {
		for _, tool := range b.opts.tools {
			dir := filepath.Join(b.work, fmt.Sprintf("%s-prune%d", tool, i))
			if err := b.pruneCycle(tool, dir, plan); err != nil {
				return fmt.Errorf("%s prune run %d: %v", tool, i, err)
			}
			if err := b.removeRun(dir); err != nil {
				return err
			}
		}
	}
	return nil
}

// pruneReport is the prune scenario's results as Markdown tables.
func (b *bench) pruneReport() string {
	var s strings.Builder
	fmt.Fprintf(&s, "## Results: forget all but the newest of %d snapshots, then prune\n\n", b.opts.pruneSnapshots)
	fmt.Fprintf(&s, "Dataset: %s in %d files; between snapshots %.0f%% of the files (by count) were rewritten with new content. "+
		"Times in seconds (backupd: `forget` plus `prune`, two processes; restic: `forget --prune`, one); "+
		"CPU = user+sys; RSS = peak resident set size (backupd: the larger of its two processes).\n\n",
		mib(b.src.bytes), b.src.files, b.opts.pruneChange)
	fmt.Fprintf(&s, "| tool | runs | wall median | wall min | wall max | CPU median | sys median | peak RSS median | peak RSS max | requests median |\n")
	fmt.Fprintf(&s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, tool := range b.opts.tools {
		prs := b.pruneRuns[tool]
		if len(prs) == 0 {
			continue
		}
		ms := pruneMeasurements(prs, func(p pruneRun) measurement { return p.m })
		wall := stat(ms, func(m measurement) float64 { return m.wall.Seconds() })
		cpu := stat(ms, func(m measurement) float64 { return m.cpu.Seconds() })
		sys := stat(ms, func(m measurement) float64 { return m.sys.Seconds() })
		rss := stat(ms, func(m measurement) float64 { return float64(m.maxRSS) / (1 << 20) })
		reqs := "-"
		if prs[0].proxy != nil {
			reqs = fmt.Sprintf("%.0f", pruneStat(prs, func(p pruneRun) float64 { return float64(requestTotal(p.proxy, "")) }).median)
		}
		fmt.Fprintf(&s, "| %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f MiB | %.1f MiB | %s |\n",
			tool, len(prs), wall.median, wall.min, wall.max, cpu.median, sys.median, rss.median, rss.max, reqs)
	}

	where := "object sizes in the bucket listing"
	if b.minio == nil {
		where = "file sizes of the repository directory"
	}
	fmt.Fprintf(&s, "\nStored bytes (%s; medians): before the forget, after the prune, and of a fresh repository holding only a backup of the newest state.\n\n", where)
	fmt.Fprintf(&s, "| tool | before | after prune | fresh repository | after / fresh | objects before | objects after | objects fresh |\n")
	fmt.Fprintf(&s, "|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, tool := range b.opts.tools {
		prs := b.pruneRuns[tool]
		if len(prs) == 0 {
			continue
		}
		med := func(f func(p pruneRun) int64) float64 {
			return pruneStat(prs, func(p pruneRun) float64 { return float64(f(p)) }).median
		}
		ratio := pruneStat(prs, func(p pruneRun) float64 { return float64(p.after) / float64(p.fresh) })
		fmt.Fprintf(&s, "| %s | %.1f MiB | %.1f MiB | %.1f MiB | %.3f (%.3f-%.3f) | %.0f | %.0f | %.0f |\n", tool,
			med(func(p pruneRun) int64 { return p.before })/(1<<20), med(func(p pruneRun) int64 { return p.after })/(1<<20),
			med(func(p pruneRun) int64 { return p.fresh })/(1<<20), ratio.median, ratio.min, ratio.max,
			med(func(p pruneRun) int64 { return p.objBefore }), med(func(p pruneRun) int64 { return p.objAfter }),
			med(func(p pruneRun) int64 { return p.objFresh }))
	}

	if b.proxy != nil {
		fmt.Fprintf(&s, "\nStorage requests of the forget and prune, counted by the harness's proxy in front of MinIO (median per run; LIST = a GET listing the bucket):\n\n")
		fmt.Fprintf(&s, "| tool | all | data | index | snapshots | other | by method and kind (run 1) |\n|---|---:|---:|---:|---:|---:|---|\n")
		for _, tool := range b.opts.tools {
			prs := b.pruneRuns[tool]
			if len(prs) == 0 {
				continue
			}
			kind := func(k string) float64 {
				return pruneStat(prs, func(p pruneRun) float64 { return float64(requestTotal(p.proxy, k)) }).median
			}
			fmt.Fprintf(&s, "| %s | %.0f | %.0f | %.0f | %.0f | %.0f | %s |\n", tool, kind(""), kind("data"), kind("index"),
				kind("snapshots"), kind("other"), formatRequests(prs[0].proxy))
		}
	}

	fmt.Fprintf(&s, "\nNotes:\n\n")
	if prs := b.pruneRuns["backupd"]; len(prs) > 0 {
		f := pruneMeasurements(prs, func(p pruneRun) measurement { return p.forget })
		pm := pruneMeasurements(prs, func(p pruneRun) measurement { return p.prune })
		fmt.Fprintf(&s, "- backupd's two steps apart (medians): `forget --keep-last 1` %.2fs, %.1f MiB; `prune` %.2fs, %.1f MiB.\n",
			stat(f, func(m measurement) float64 { return m.wall.Seconds() }).median, stat(f, func(m measurement) float64 { return float64(m.maxRSS) / (1 << 20) }).median,
			stat(pm, func(m measurement) float64 { return m.wall.Seconds() }).median, stat(pm, func(m measurement) float64 { return float64(m.maxRSS) / (1 << 20) }).median)
		var self []string
		for _, p := range prs {
			if p.selfRequests >= 0 {
				self = append(self, fmt.Sprintf("%d (%s)", p.selfRequests, formatSelf(p.selfByKind)))
			}
		}
		if len(self) > 0 {
			fmt.Fprintf(&s, "- `backupctl prune --json` counts its own storage calls (the prune alone, not the forget; one call may be several HTTP requests or none): %s.\n", strings.Join(self, "; "))
		}
		if b.proxy != nil {
			var px []string
			for _, p := range prs {
				px = append(px, fmt.Sprintf("%d (forget %d, prune %d)", requestTotal(p.proxy, ""), p.proxyForget, requestTotal(p.proxy, "")-p.proxyForget))
			}
			fmt.Fprintf(&s, "- backupd requests through the proxy per run: %s.\n", strings.Join(px, ", "))
		}
	}
	if prs := b.pruneRuns["restic"]; len(prs) > 0 && b.proxy != nil {
		var px []string
		for _, p := range prs {
			px = append(px, fmt.Sprint(requestTotal(p.proxy, "")))
		}
		fmt.Fprintf(&s, "- restic requests through the proxy per run: %s.\n", strings.Join(px, ", "))
	}
	for _, tool := range b.opts.tools {
		if prs := b.pruneRuns[tool]; len(prs) > 0 {
			d := pruneStat(prs, func(p pruneRun) float64 { return p.backups.Seconds() })
			fmt.Fprintf(&s, "- %s: the %d backups before the forget took %.1fs in all (median; untimed setup); each step rewrote %d files (%s).\n",
				tool, b.opts.pruneSnapshots, d.median, prs[0].rewritten, mib(prs[0].rewrittenB))
		}
	}
	fmt.Fprintf(&s, "- Defaults: backupd repacks a pack above 10%% unused bytes (`--max-unused 10`), restic above 5%% (`--max-unused 5%%`); neither is changed here. "+
		"restic's figures include its key derivation (scrypt) and its lock handling; its cache directory is the one its backups filled, as is backupd's.\n")
	var ok []string
	for _, tool := range b.opts.tools {
		if prs := b.pruneRuns[tool]; len(prs) > 0 && prs[len(prs)-1].restoreOK {
			ok = append(ok, fmt.Sprintf("%s (%d runs)", tool, len(prs)))
		}
	}
	fmt.Fprintf(&s, "- After every prune the newest snapshot was restored and compared with the workspace it was taken of (paths, types, sizes, permission bits, symlink targets, SHA-256 of every file): %s.\n", strings.Join(ok, ", "))
	for _, w := range b.warnings {
		fmt.Fprintf(&s, "- WARNING: %s\n", w)
	}
	return s.String()
}

func pruneMeasurements(prs []pruneRun, f func(pruneRun) measurement) []measurement {
	ms := make([]measurement, len(prs))
	for i, p := range prs {
		ms[i] = f(p)
	}
	return ms
}

func pruneStat(prs []pruneRun, f func(pruneRun) float64) summary {
	xs := make([]float64, len(prs))
	for i, p := range prs {
		xs[i] = f(p)
	}
	return summarize(xs)
}

func formatSelf(c map[string]int64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(c)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, c[k]))
	}
	return strings.Join(parts, ", ")
}
