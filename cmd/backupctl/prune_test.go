package main

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// storedFiles maps each file under dir (relative name) to its size.
func storedFiles(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	m := map[string]int64{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		m[rel] = fi.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// packBytes sums the sizes of the packs (data/) in a listing.
func packBytes(files map[string]int64) (n int64, packs int) {
	for k, v := range files {
		if strings.HasPrefix(k, "data/") {
			n += v
			packs++
		}
	}
	return n, packs
}

func sameFiles(t *testing.T, what string, a, b map[string]int64) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%s: %d objects before, %d after", what, len(a), len(b))
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			t.Fatalf("%s: %s was %d bytes, now %d (present: %v)", what, k, v, w, ok)
		}
	}
}

type pruneJSON struct {
	DryRun         bool             `json:"dry_run"`
	Generation     uint64           `json:"generation"`
	Snapshots      int              `json:"snapshots"`
	Reachable      int              `json:"reachable_blobs"`
	Condemned      int              `json:"condemned_blobs"`
	PacksBefore    int              `json:"packs_before"`
	PacksDeleted   int              `json:"packs_deleted"`
	PacksRepacked  int              `json:"packs_repacked"`
	BytesBefore    int64            `json:"bytes_before"`
	BytesFreed     int64            `json:"bytes_freed"`
	BytesAfter     int64            `json:"bytes_after"`
	ObjectsDeleted int              `json:"objects_deleted"`
	Warnings       []string         `json:"warnings"`
	DurationMS     *int64           `json:"duration_ms"`
	Requests       int64            `json:"requests"`
	ByKind         map[string]int64 `json:"requests_by_kind"`
}

func runPruneJSON(t *testing.T, args ...string) pruneJSON {
	t.Helper()
	r := ok(t, run(t, nil, append([]string{"prune", "--json"}, args...)...))
	var res pruneJSON
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("prune --json: %q: %v", r.stdout, err)
	}
	if res.DurationMS == nil || res.Warnings == nil || res.Requests == 0 || len(res.ByKind) == 0 {
		t.Fatalf("prune --json lacks fields: %s", r.stdout)
	}
	if r.stderr != "" {
		t.Fatalf("prune --json wrote to stderr: %q", r.stderr)
	}
	return res
}

// TestPrune: backups, a forget, then prune gives the space of the
// forgotten snapshot back; the kept snapshot restores byte for byte; a
// second prune frees nothing; a dry run changes nothing.
func TestPrune(t *testing.T) {
	store := t.TempDir()
	repoURL := "file://" + store
	owner := filepath.Join(store, "o1")
	args := []string{"-r", repoURL, "--owner", "o1"}
	src := t.TempDir()
	genTree(t, src, 6<<20, 11)
	ok(t, run(t, nil, append(append([]string{"backup"}, args...), "--workspace", "w1", src)...))
	// The second snapshot shares the small files, not the big one.
	genTree(t, src, 5<<20, 12)
	ok(t, run(t, nil, append(append([]string{"backup"}, args...), "--workspace", "w1", src)...))
	ok(t, run(t, nil, append(append([]string{"forget"}, args...), "--keep-last", "1")...))

	before := storedFiles(t, owner)
	packBefore, packsBefore := packBytes(before)

	// A dry run says what it would free and changes nothing.
	r := ok(t, run(t, nil, append([]string{"prune", "--dry-run"}, args...)...))
	if !strings.Contains(r.stdout, "would free") || strings.Contains(r.stdout, "freed") {
		t.Fatalf("prune --dry-run: %q", r.stdout)
	}
	dry := runPruneJSON(t, append([]string{"--dry-run"}, args...)...)
	if !dry.DryRun || dry.BytesFreed < 2<<20 || dry.Condemned == 0 || dry.PacksBefore != packsBefore || dry.BytesBefore != packBefore {
		t.Fatalf("prune --dry-run --json: %+v; %d packs of %d bytes stored", dry, packsBefore, packBefore)
	}
	sameFiles(t, "after dry runs", before, storedFiles(t, owner))

	res := runPruneJSON(t, args...)
	after := storedFiles(t, owner)
	packAfter, _ := packBytes(after)
	if res.DryRun || res.Generation != 1 || res.Snapshots != 1 || res.Condemned == 0 || res.PacksDeleted+res.PacksRepacked == 0 ||
		res.BytesBefore != packBefore || res.ObjectsDeleted == 0 || res.ByKind["delete"] == 0 || res.ByKind["list"] == 0 {
		t.Fatalf("prune --json: %+v", res)
	}
	if packAfter >= packBefore-2<<20 || res.BytesFreed < 2<<20 {
		t.Fatalf("prune freed %d bytes by its count; packs went from %d to %d bytes", res.BytesFreed, packBefore, packAfter)
	}
	if res.BytesAfter != packAfter {
		t.Fatalf("prune says %d bytes are left, %d are stored", res.BytesAfter, packAfter)
	}
	if _, ok := after["prune/state"]; !ok {
		t.Fatal("no prune/state after a prune")
	}

	// What is kept restores and checks.
	dst := filepath.Join(t.TempDir(), "r")
	ok(t, run(t, nil, append(append([]string{"restore"}, args...), "--workspace", "w1", "--no-cache", dst)...))
	sameTree(t, src, dst)
	ok(t, run(t, nil, append([]string{"check", "--read-data"}, args...)...))

	// Nothing more to free.
	r = ok(t, run(t, nil, append([]string{"prune"}, args...)...))
	if !strings.Contains(r.stdout, "generation 2") || !strings.Contains(r.stdout, "freed 0 B") || !strings.Contains(r.stdout, "storage requests (") {
		t.Fatalf("second prune: %q", r.stdout)
	}
	if !strings.Contains(r.stderr, "prune: marked:") || !strings.Contains(r.stderr, "generation 2 done") {
		t.Fatalf("second prune's progress on stderr: %q", r.stderr)
	}
	again := storedFiles(t, owner)
	for k, v := range again {
		if strings.HasPrefix(k, "data/") && after[k] != v {
			t.Fatalf("second prune changed pack %s", k)
		}
	}
	if p, _ := packBytes(again); p != packAfter {
		t.Fatalf("second prune: packs hold %d bytes, %d before", p, packAfter)
	}
	third := runPruneJSON(t, args...)
	if third.BytesFreed != 0 || third.Condemned != 0 || third.PacksDeleted != 0 || third.PacksRepacked != 0 {
		t.Fatalf("prune with nothing to free: %+v", third)
	}
}

// TestPruneRunning: a prune that finds another one holding the
// repository stops with exit 1 and one line naming it; once that one's
// lease has lapsed, the next prune takes over.
func TestPruneRunning(t *testing.T) {
	store := t.TempDir()
	repoURL := "file://" + store
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), []byte("data"), 0o644)
	ok(t, run(t, nil, "backup", "-r", repoURL, "--owner", "o1", "--workspace", "w1", src))
	state := filepath.Join(store, "o1", "prune", "state")
	os.MkdirAll(filepath.Dir(state), 0o755)
	if err := os.WriteFile(state, []byte(`{"generation":7,"phase":"marking","prune":"node-x pid 42 beef","lease_ms":3600000}`), 0o600); err != nil {
		t.Fatal(err)
	}
	r := run(t, nil, "prune", "-r", repoURL, "--owner", "o1")
	if r.code != 1 || !strings.Contains(r.stderr, "another prune is running") || !strings.Contains(r.stderr, "node-x pid 42 beef") ||
		!strings.Contains(r.stderr, "generation 7") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Fatalf("prune while another holds the state: exit %d, %q", r.code, r.stderr)
	}
	// The dry run takes no state, so it runs all the same.
	ok(t, run(t, nil, "prune", "-r", repoURL, "--owner", "o1", "--dry-run"))

	// A lease of a millisecond, renewed an hour ago: lapsed.
	os.WriteFile(state, []byte(`{"generation":7,"phase":"marking","prune":"node-x pid 42 beef","lease_ms":1}`), 0o600)
	old := time.Now().Add(-time.Hour)
	os.Chtimes(state, old, old)
	r = ok(t, run(t, nil, "prune", "-r", repoURL, "--owner", "o1"))
	if !strings.Contains(r.stdout, "generation 8") || !strings.Contains(r.stderr, "taking over") {
		t.Fatalf("prune after a lapsed lease: %q %q", r.stdout, r.stderr)
	}
}

func TestPruneUsageErrors(t *testing.T) {
	repoURL := "file://" + t.TempDir()
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), []byte("data"), 0o644)
	ok(t, run(t, nil, "backup", "-r", repoURL, "--owner", "o1", "--workspace", "w1", src))
	for _, bad := range []string{"abc", "101", "-5", "10%%", "", "1e1", "0x10", "NaN", "Inf", "%", "10 %", "100.5"} {
		r := run(t, nil, "prune", "-r", repoURL, "--owner", "o1", "--max-unused", bad)
		if r.code != 2 || !strings.Contains(r.stderr, "--max-unused") {
			t.Errorf("--max-unused %q: exit %d, %q", bad, r.code, r.stderr)
		}
	}
	for _, good := range []string{"0", "10", "10%", "100", "2.5%", "100%"} {
		ok(t, run(t, nil, "prune", "-r", repoURL, "--owner", "o1", "--max-unused", good, "--dry-run"))
	}
	if r := run(t, nil, "prune", "-r", repoURL); r.code != 2 {
		t.Errorf("prune without --owner: exit %d, %q", r.code, r.stderr)
	}
	if r := run(t, nil, "prune", "-r", repoURL, "--owner", "o1", "extra"); r.code != 2 {
		t.Errorf("prune with an argument: exit %d, %q", r.code, r.stderr)
	}
	r := ok(t, run(t, nil, "prune", "--help"))
	for _, want := range []string{"Backups keep running", "--max-unused", "percent", "--dry-run"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("prune --help lacks %q:\n%s", want, r.stdout)
		}
	}
}
