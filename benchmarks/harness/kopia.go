package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// kopia runs with its defaults (policy: no compression, its own
// maintenance schedule) on a local filesystem repository. Each run gets
// its own config file, cache and log directories under the run's
// directory, so no run benefits from an earlier one; the password comes
// from the environment.

// kopiaPassword is the benchmark repositories' password (not a secret).
const kopiaPassword = "backupd-bench"

// setupKopia finds the kopia binary (--kopia, else benchmarks/peers.sh
// kopia builds it) and its version.
func (b *bench) setupKopia(root string) error {
	b.kopia = b.opts.kopia
	if b.kopia == "" {
		fmt.Fprintln(os.Stderr, "harness: getting kopia via benchmarks/peers.sh kopia")
		cmd := exec.Command("bash", filepath.Join(root, "benchmarks", "peers.sh"), "kopia")
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("benchmarks/peers.sh kopia: %v", err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		b.kopia = lines[len(lines)-1]
	}
	out, err := exec.Command(b.kopia, "--version").Output()
	if err != nil {
		return fmt.Errorf("%s --version: %v", b.kopia, err)
	}
	b.kopiaVer = strings.TrimSpace(string(out))
	return nil
}

// newKopiaRun fills in r for kopia and creates its repository (untimed
// setup, as restic's init).
func (b *bench) newKopiaRun(r *toolRun) error {
	r.arg = r.repo
	r.env = []string{"KOPIA_PASSWORD=" + kopiaPassword, "KOPIA_CHECK_FOR_UPDATES=false"}
	r.flags = []string{"--config-file=" + filepath.Join(r.dir, "kopia.config"), "--log-dir=" + filepath.Join(r.dir, "kopia-logs")}
	args := append([]string{"repository", "create", "filesystem", "--path", r.repo, "--cache-directory=" + r.cache}, r.flags...)
	m, _, err := measure(r.env, b.kopia, args...)
	if err != nil {
		return err
	}
	if b.recording {
		b.kopiaCreate = append(b.kopiaCreate, m.wall.Seconds())
	}
	return nil
}

// kopiaBackup is one timed `kopia snapshot create` of the dataset; reread
// is the number of files kopia read again (its nonCachedFiles), -1 if
// unknown.
func (b *bench) kopiaBackup(r *toolRun) (m measurement, reread int64, err error) {
	args := append([]string{"snapshot", "create", b.data, "--no-progress"}, r.flags...)
	if m, _, err = measure(r.env, b.kopia, args...); err != nil {
		return m, -1, err
	}
	snaps, err := b.kopiaSnapshots(r)
	if err != nil || len(snaps) == 0 {
		return m, -1, err
	}
	return m, snaps[len(snaps)-1].Stats.NonCachedFiles, nil
}

// kopiaRestore restores the latest snapshot into target, timed; with over,
// over the tree there (overwriting files, deleting what the snapshot does
// not have).
func (b *bench) kopiaRestore(r *toolRun, target string, over bool) (measurement, error) {
	snaps, err := b.kopiaSnapshots(r)
	if err != nil {
		return measurement{}, err
	}
	if len(snaps) == 0 {
		return measurement{}, fmt.Errorf("kopia snapshot list: no snapshot of %s", b.data)
	}
	args := append([]string{"snapshot", "restore", snaps[len(snaps)-1].ID, target, "--no-progress"}, r.flags...)
	if over {
		args = append(args, "--overwrite-files", "--overwrite-directories", "--delete-extra")
	}
	m, _, err := measure(r.env, b.kopia, args...)
	return m, err
}

// kopiaSnapshot is what the harness reads of `kopia snapshot list --json`.
type kopiaSnapshot struct {
	ID        string `json:"id"`
	StartTime string `json:"startTime"`
	Stats     struct {
		FileCount      int64 `json:"fileCount"`
		CachedFiles    int64 `json:"cachedFiles"`
		NonCachedFiles int64 `json:"nonCachedFiles"`
	} `json:"stats"`
}

// kopiaSnapshots lists the dataset's snapshots in r (untimed), oldest
// first.
func (b *bench) kopiaSnapshots(r *toolRun) ([]kopiaSnapshot, error) {
	args := append([]string{"snapshot", "list", "--json", b.data}, r.flags...)
	cmd := exec.Command(b.kopia, args...)
	cmd.Env = append(os.Environ(), r.env...)
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return nil, fmt.Errorf("kopia snapshot list: %v\n%s", err, ee.Stderr)
		}
		return nil, fmt.Errorf("kopia snapshot list: %v", err)
	}
	return parseKopiaSnapshots(out)
}

// parseKopiaSnapshots parses `kopia snapshot list --json`, sorted by start
// time.
func parseKopiaSnapshots(out []byte) ([]kopiaSnapshot, error) {
	var snaps []kopiaSnapshot
	if err := json.Unmarshal(out, &snaps); err != nil {
		return nil, fmt.Errorf("kopia snapshot list: bad JSON output: %v", err)
	}
	for _, s := range snaps {
		if _, err := time.Parse(time.RFC3339Nano, s.StartTime); err != nil || s.ID == "" {
			return nil, fmt.Errorf("kopia snapshot list: snapshot %q with start time %q", s.ID, s.StartTime)
		}
	}
	slices.SortStableFunc(snaps, func(a, b kopiaSnapshot) int {
		ta, _ := time.Parse(time.RFC3339Nano, a.StartTime)
		tb, _ := time.Parse(time.RFC3339Nano, b.StartTime)
		return ta.Compare(tb)
	})
	return snaps, nil
}
