package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// header describes the machine and the dataset.
func (b *bench) header() string {
	var s strings.Builder
	var peers []string
	for _, t := range b.opts.tools {
		if t != "backupd" {
			peers = append(peers, toolTitle(t))
		}
	}
	fmt.Fprintf(&s, "# %s: side-by-side benchmark\n\n", strings.Join(append([]string{"backupd"}, peers...), " vs "))
	fmt.Fprintf(&s, "- date: %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&s, "- CPU: %s; nproc: %s\n", cpuModel(), nproc())
	fmt.Fprintf(&s, "- memory: %s\n", memTotal())
	fmt.Fprintf(&s, "- kernel: %s\n", readTrim("/proc/sys/kernel/osrelease"))
	fmt.Fprintf(&s, "- load average at end: %s\n", readTrim("/proc/loadavg"))
	fmt.Fprintf(&s, "- Go: %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if b.backupdVer != "" {
		fmt.Fprintf(&s, "- backupd: %s\n", b.backupdVer)
	}
	if b.resticVer != "" {
		fmt.Fprintf(&s, "- restic: %s (defaults: compression auto, fresh --cache-dir per run)\n", b.resticVer)
	}
	if b.kopiaVer != "" {
		fmt.Fprintf(&s, "- kopia: %s (defaults: policy without compression, its own maintenance; fresh config, cache and log directories per run)\n", b.kopiaVer)
	}
	if b.tarVer != "" {
		fmt.Fprintf(&s, "- tarzstd: `tar -C DATA -cf - . | zstd -1 -T0 -q -o ARCHIVE` (level 1, all cores), restore `zstd -dc ARCHIVE | tar -C TARGET -xpf -`; %s; %s\n", b.tarVer, b.zstdVer)
	}
	if b.opts.pprofDir != "" {
		fmt.Fprintf(&s, "- profiles: backupd's timed runs wrote CPU profiles (backupctl --cpu-profile, sampling at 100 Hz) to %s\n", b.opts.pprofDir)
	}
	if warmBytes > 0 {
		fmt.Fprintf(&s, "- memory: before each timed step, %s written to a file in the work dir and removed, untimed (--warm-memory), so that the step writes into pages the machine has just used\n", mib(warmBytes))
	}
	fmt.Fprintf(&s, "- dataset: %s\n", b.dataDesc)
	fmt.Fprintf(&s, "- dataset size: %d bytes (%s) in %d files, %d dirs, %d symlinks\n",
		b.src.bytes, mib(b.src.bytes), b.src.files, b.src.dirs, b.src.links)
	if b.minio != nil {
		fresh := ""
		if b.opts.freshMinIO {
			fresh = "; restarted empty before each checkpoint-stop cycle (--fresh-minio)"
		}
		fmt.Fprintf(&s, "- repositories: a MinIO server on loopback (%s, data in the work dir%s), a fresh bucket per run; backupd via s3://, restic via s3:\n", b.minio.url, fresh)
	}
	if b.opts.restoreDir != "" {
		fmt.Fprintf(&s, "- work dir (repositories): %s\n", b.work)
		fmt.Fprintf(&s, "- restore targets: fresh directories under %s (--restore-dir)\n", b.opts.restoreDir)
	} else {
		fmt.Fprintf(&s, "- work dir (repositories, restore targets): %s\n", b.work)
	}
	fmt.Fprintf(&s, "- page cache: not dropped; one untimed warm-up read of the whole dataset (%.1fs) "+
		"so every tool starts with the dataset in cache; `sync` (untimed) before every timed command\n", b.warmup.Seconds())
	if b.opts.netShape > 0 {
		fmt.Fprintf(&s, "- link: loopback shaped to %s/s by the kernel (`%s`, --net-shape): every connection to MinIO, both ways, shares it\n", mib(b.opts.netShape), strings.Join(tbfArgs(b.opts.netShape), " "))
	}
	if b.opts.netLimit > 0 {
		fmt.Fprintf(&s, "- link: the tools reach MinIO through the harness's proxy (%s), at most %s/s each way, all connections together (--net-limit)\n", b.proxy.url, mib(b.opts.netLimit))
	}
	if b.hasScenario("prune") {
		fmt.Fprintf(&s, "- runs: %d per tool, interleaved between tools; each run on its own `cp -a` copy of the dataset, a fresh repository, %d backups with %.0f%% of the files rewritten between them, then the timed forget and prune; no warm-up cycle\n",
			b.opts.runs, b.opts.pruneSnapshots, b.opts.pruneChange)
		if b.proxy != nil {
			fmt.Fprintf(&s, "- requests: both tools reach MinIO through the harness's counting reverse proxy (%s), which forwards requests unchanged (Host header included)\n", b.proxy.url)
		}
		return s.String()
	}
	if b.hasCycleScenarios() {
		fmt.Fprintf(&s, "- runs: %d per tool and scenario, interleaved between tools, fresh repository and target each run; scenarios of a run share its repository, in the order %s\n",
			b.opts.runs, strings.Join(slices.DeleteFunc(slices.Clone(allScenarios), func(sc string) bool { return !b.hasScenario(sc) || slices.Contains(checkpointScenarios, sc) }), ", "))
	}
	if b.hasScenario("checkpoint-stop") {
		fmt.Fprintf(&s, "- checkpoint-stop: %d runs with a checkpoint and %d without, alternating which goes first, each on a fresh repository and the generated tree (changes undone after each run)\n", b.opts.runs, b.opts.runs)
	}
	if b.hasScenario("checkpoint-load") {
		fmt.Fprintf(&s, "- checkpoint-load: %d runs of each workload without and with a checkpoint (a fresh repository each), interleaved; workspace on %s\n", b.opts.runs, b.workspaceFS)
	}
	return s.String()
}

// report is the results as Markdown tables.
func (b *bench) report() string {
	var s strings.Builder
	if b.hasScenario("prune") {
		return b.pruneReport()
	}
	if b.hasCycleScenarios() {
		b.cycleReport(&s)
	}
	s.WriteString(b.checkpointReport())
	if len(b.warnings) > 0 {
		fmt.Fprintf(&s, "\n### Warnings\n\n")
	}
	for _, w := range b.warnings {
		fmt.Fprintf(&s, "- WARNING: %s\n", w)
	}
	return s.String()
}

// cycleReport writes the results of the per-tool cycles.
func (b *bench) cycleReport(s *strings.Builder) {
	fmt.Fprintf(s, "## Results\n\n")
	fmt.Fprintf(s, "Dataset: %s in %d files. Times in seconds; MB/s = dataset bytes / 10^6 / wall time; "+
		"CPU = user+sys of the child (sys = its system part); RSS = peak resident set size of the child.\n\n", mib(b.src.bytes), b.src.files)
	fmt.Fprintf(s, "| scenario | tool | runs | wall median | wall min | wall max | MB/s median | CPU median | sys median | peak RSS median | peak RSS max | repo size |\n")
	fmt.Fprintf(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, sc := range b.opts.scenarios {
		for _, tool := range b.opts.tools {
			ms := b.results[sc+"/"+tool]
			if len(ms) == 0 {
				continue
			}
			wall := stat(ms, func(m measurement) float64 { return m.wall.Seconds() })
			cpu := stat(ms, func(m measurement) float64 { return m.cpu.Seconds() })
			sys := stat(ms, func(m measurement) float64 { return m.sys.Seconds() })
			rss := stat(ms, func(m measurement) float64 { return float64(m.maxRSS) / (1 << 20) })
			repo := "-"
			if isBackup(sc) {
				r := stat(ms, func(m measurement) float64 { return float64(m.repoSize) / (1 << 20) })
				repo = fmt.Sprintf("%.1f MiB", r.median)
			}
			fmt.Fprintf(s, "| %s | %s | %d | %.2f | %.2f | %.2f | %.1f | %.2f | %.2f | %.1f MiB | %.1f MiB | %s |\n",
				sc, tool, len(ms), wall.median, wall.min, wall.max,
				float64(b.src.bytes)/1e6/wall.median, cpu.median, sys.median, rss.median, rss.max, repo)
		}
	}

	for _, peer := range b.opts.tools {
		if peer == "backupd" || !b.has("backupd") {
			continue
		}
		fmt.Fprintf(s, "\n### Ratios backupd / %s (medians; below 1 means backupd is faster or smaller)\n\n", peer)
		fmt.Fprintf(s, "| scenario | wall time | CPU time | peak RSS | repo size |\n|---|---:|---:|---:|---:|\n")
		for _, sc := range b.opts.scenarios {
			d, r := b.results[sc+"/backupd"], b.results[sc+"/"+peer]
			if len(d) == 0 || len(r) == 0 {
				continue
			}
			ratio := func(f func(measurement) float64) string {
				return fmt.Sprintf("%.2f", stat(d, f).median/stat(r, f).median)
			}
			repo := "-"
			if isBackup(sc) {
				repo = ratio(func(m measurement) float64 { return float64(m.repoSize) })
			}
			fmt.Fprintf(s, "| %s | %s | %s | %s | %s |\n", sc,
				ratio(func(m measurement) float64 { return m.wall.Seconds() }),
				ratio(func(m measurement) float64 { return m.cpu.Seconds() }),
				ratio(func(m measurement) float64 { return float64(m.maxRSS) }),
				repo)
		}
	}

	fmt.Fprintf(s, "\nNotes:\n\n")
	if len(b.resticInit) > 0 {
		r := summarize(b.resticInit)
		fmt.Fprintf(s, "- `restic init` (key derivation with scrypt) is setup, not part of the backup time: median %.2fs (min %.2f, max %.2f). "+
			"backupd creates its repository within the first backup, which is timed.\n", r.median, r.min, r.max)
	}
	if len(b.kopiaCreate) > 0 {
		r := summarize(b.kopiaCreate)
		fmt.Fprintf(s, "- `kopia repository create filesystem` (and connect) is setup, not part of the backup time: median %.2fs (min %.2f, max %.2f). "+
			"kopia runs with its default policy, which does not compress, and runs its own maintenance after a snapshot when due (part of its time).\n", r.median, r.min, r.max)
	}
	if len(b.opts.scenarios) > 1 || !b.hasScenario("backup") {
		fmt.Fprintf(s, "- Every run makes a first backup into a fresh repository (timed as `backup` when selected); the other scenarios use that repository. Repo size is the repository's (or archive's) size after the step.\n")
	}
	if b.hasScenario("rebackup") || b.hasScenario("rebackup-1pct") {
		fmt.Fprintf(s, "- Re-backups: each run's first backup started at least %.1fs after the harness last wrote to the dataset, "+
			"so no file's ctime falls in backupd's 2 s racy-git window (which would make it reread the file). backupd, restic and kopia use a per-run cache directory that the first backup filled.\n", racySettle.Seconds())
	}
	if c := b.change; c != nil {
		fmt.Fprintf(s, "- rebackup-1pct: before the timed backup, %d of %d files (%.1f%%) were changed in place: %d edited (64 bytes overwritten mid-file plus a line appended), "+
			"%d deleted, %d added, and `%s` grew by 1 MiB; edits are spread evenly over the sorted paths. "+
			"The change is the same every run and was undone (contents, modes, mtimes) after each backup.\n",
			c.total(), b.src.files, 100*float64(c.total())/float64(b.src.files), len(c.modified), len(c.deleted), len(c.added), c.grown)
	}
	if c := b.overChange; c != nil {
		fmt.Fprintf(s, "- restore-over: the target is a `cp -a` copy of the dataset (same sizes and mtimes, made untimed) with another such change "+
			"(%d files: %d edited, %d deleted, %d added, `%s` grown by 1 MiB); then the timed restore of the latest snapshot over it: "+
			"backupd `restore --overwrite --delete`, restic `restore --overwrite if-changed --delete`, kopia `snapshot restore --overwrite-files --overwrite-directories --delete-extra`, tarzstd extracts the whole archive over it.\n",
			c.total(), len(c.modified), len(c.deleted), len(c.added), c.grown)
	}
	if b.has("tarzstd") {
		fmt.Fprintf(s, "- tarzstd has no incremental mode: its re-backups write the whole archive again (as Gitpod's ws-daemon does on every stop), and it has no deduplication; "+
			"a restore over a directory overwrites every file and deletes nothing, so the files the change added stay behind (verification allows exactly those). "+
			"Its CPU time and peak RSS cover both processes (CPU summed, RSS the larger of the two).\n")
	}
	for _, sc := range []string{"rebackup", "rebackup-1pct"} {
		for _, tool := range b.opts.tools {
			rr := b.rereads[sc+"/"+tool]
			if len(rr) == 0 || tool == "tarzstd" {
				continue
			}
			var parts []string
			for _, n := range rr {
				if n < 0 {
					parts = append(parts, "?")
				} else {
					parts = append(parts, strconv.FormatInt(n, 10))
				}
			}
			fmt.Fprintf(s, "- %s %s: files read again (new or changed per the tool's own statistics) per run: %s.\n", tool, sc, strings.Join(parts, ", "))
		}
	}
	if b.hasScenario("restore-ready") && len(b.opts.readyLate) > 0 {
		fmt.Fprintf(s, "- restore-ready: `backupctl restore --ready-before-complete --late %s`.\n", strings.Join(b.opts.readyLate, " --late "))
	}
	var verified []string
	for _, sc := range []string{"restore", "restore-over", "restore-ready"} {
		for _, tool := range b.opts.tools {
			if b.verified[sc+"/"+tool] {
				verified = append(verified, tool+" "+sc)
			}
		}
	}
	if len(verified) > 0 {
		which := "first run"
		if b.opts.verifyAll {
			which = "every run"
		}
		fmt.Fprintf(s, "- Verified against the source (%s): %s. Same paths, types, sizes, permission bits, symlink targets and SHA-256 of every file (mtimes not compared).\n", which, strings.Join(verified, ", "))
	}
}

// isBackup tells the scenarios that end with a repository (or archive) to
// measure.
func isBackup(scenario string) bool {
	return scenario == "backup" || scenario == "rebackup" || scenario == "rebackup-1pct"
}

func toolTitle(tool string) string {
	if tool == "tarzstd" {
		return "tar | zstd -1 -T0"
	}
	return tool
}

type summary struct{ median, min, max float64 }

func stat(ms []measurement, f func(measurement) float64) summary {
	xs := make([]float64, len(ms))
	for i, m := range ms {
		xs[i] = f(m)
	}
	return summarize(xs)
}

func summarize(xs []float64) summary {
	xs = append([]float64(nil), xs...)
	sort.Float64s(xs)
	n := len(xs)
	med := xs[n/2]
	if n%2 == 0 {
		med = (xs[n/2-1] + xs[n/2]) / 2
	}
	return summary{median: med, min: xs[0], max: xs[n-1]}
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

func cpuModel() string {
	for _, line := range strings.Split(readTrim("/proc/cpuinfo"), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func nproc() string {
	out, err := exec.Command("nproc").Output()
	if err != nil {
		return fmt.Sprintf("%d (runtime.NumCPU)", runtime.NumCPU())
	}
	return strings.TrimSpace(string(out))
}

func memTotal() string {
	for _, line := range strings.Split(readTrim("/proc/meminfo"), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
