package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"time"
)

// header describes the machine and the dataset.
func (b *bench) header() string {
	var s strings.Builder
	fmt.Fprintf(&s, "# backupd vs restic: side-by-side benchmark\n\n")
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
	fmt.Fprintf(&s, "- dataset: %s\n", b.dataDesc)
	fmt.Fprintf(&s, "- dataset size: %d bytes (%s) in %d files, %d dirs, %d symlinks\n",
		b.src.bytes, mib(b.src.bytes), b.src.files, b.src.dirs, b.src.links)
	if b.minio != nil {
		fmt.Fprintf(&s, "- repositories: a MinIO server on loopback (%s, data in the work dir), a fresh bucket per run; backupd via s3://, restic via s3:\n", b.minio.url)
	}
	if b.opts.restoreDir != "" {
		fmt.Fprintf(&s, "- work dir (repositories): %s\n", b.work)
		fmt.Fprintf(&s, "- restore targets: fresh directories under %s (--restore-dir)\n", b.opts.restoreDir)
	} else {
		fmt.Fprintf(&s, "- work dir (repositories, restore targets): %s\n", b.work)
	}
	fmt.Fprintf(&s, "- page cache: not dropped; one untimed warm-up read of the whole dataset (%.1fs) "+
		"so every tool starts with the dataset in cache; `sync` (untimed) before every timed command\n", b.warmup.Seconds())
	fmt.Fprintf(&s, "- runs: %d per tool and scenario, interleaved between tools, fresh repository and target each run\n", b.opts.runs)
	return s.String()
}

// report is the results as Markdown tables.
func (b *bench) report() string {
	var s strings.Builder
	fmt.Fprintf(&s, "## Results\n\n")
	fmt.Fprintf(&s, "Dataset: %s in %d files. Times in seconds; MB/s = dataset bytes / 10^6 / wall time; "+
		"CPU = user+sys of the child (sys = its system part); RSS = peak resident set size of the child.\n\n", mib(b.src.bytes), b.src.files)
	fmt.Fprintf(&s, "| scenario | tool | runs | wall median | wall min | wall max | MB/s median | CPU median | sys median | peak RSS median | peak RSS max | repo size |\n")
	fmt.Fprintf(&s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
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
			if sc == "backup" {
				r := stat(ms, func(m measurement) float64 { return float64(m.repoSize) / (1 << 20) })
				repo = fmt.Sprintf("%.1f MiB", r.median)
			}
			fmt.Fprintf(&s, "| %s | %s | %d | %.2f | %.2f | %.2f | %.1f | %.2f | %.2f | %.1f MiB | %.1f MiB | %s |\n",
				sc, tool, len(ms), wall.median, wall.min, wall.max,
				float64(b.src.bytes)/1e6/wall.median, cpu.median, sys.median, rss.median, rss.max, repo)
		}
	}

	if b.has("backupd") && b.has("restic") {
		fmt.Fprintf(&s, "\n### Ratios backupd / restic (medians; below 1 means backupd is faster or smaller)\n\n")
		fmt.Fprintf(&s, "| scenario | wall time | CPU time | peak RSS | repo size |\n|---|---:|---:|---:|---:|\n")
		for _, sc := range b.opts.scenarios {
			d, r := b.results[sc+"/backupd"], b.results[sc+"/restic"]
			if len(d) == 0 || len(r) == 0 {
				continue
			}
			ratio := func(f func(measurement) float64) string {
				return fmt.Sprintf("%.2f", stat(d, f).median/stat(r, f).median)
			}
			repo := "-"
			if sc == "backup" {
				repo = ratio(func(m measurement) float64 { return float64(m.repoSize) })
			}
			fmt.Fprintf(&s, "| %s | %s | %s | %s | %s |\n", sc,
				ratio(func(m measurement) float64 { return m.wall.Seconds() }),
				ratio(func(m measurement) float64 { return m.cpu.Seconds() }),
				ratio(func(m measurement) float64 { return float64(m.maxRSS) }),
				repo)
		}
	}

	fmt.Fprintf(&s, "\nNotes:\n\n")
	if len(b.resticInit) > 0 {
		r := summarize(b.resticInit)
		fmt.Fprintf(&s, "- `restic init` (key derivation with scrypt) is setup, not part of the backup time: median %.2fs (min %.2f, max %.2f). "+
			"backupd creates its repository within the first backup, which is timed.\n", r.median, r.min, r.max)
	}
	verified := "the first restore of each tool"
	if b.opts.verifyAll {
		verified = "every restore"
	}
	if b.hasScenario("restore") {
		fmt.Fprintf(&s, "- Verified %s against the source: same paths, types, sizes, permission bits, symlink targets and SHA-256 of every file (mtimes not compared).\n", verified)
	}
	for _, w := range b.warnings {
		fmt.Fprintf(&s, "- WARNING: %s\n", w)
	}
	return s.String()
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
