package sync

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/internal/testservers"
	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/retention"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/faults"
	"github.com/backupd/backupd/pkg/storage/retry"
	"github.com/backupd/backupd/pkg/storage/s3"
)

// The soak test: several processes (this test binary run again in a
// helper mode) back up, forget and prune one owner's repository on MinIO
// at once, through ~5% injected transient faults; then every remaining
// snapshot must restore to exactly what its loop backed up, check must be
// clean and a final prune must leave no pack that no snapshot reaches.

var soakFor = flag.Duration("soak", 0, "run TestSoak's loops this long (default: a short run that fits in make test)")

// soakEnv, when set in the environment, makes the test binary a soak
// helper (see TestMain): its value is the helper's soakConfig as JSON.
const soakEnv = "BACKUPD_SOAK_HELPER"

type soakConfig struct {
	Role      string // backup, forget or prune
	Name      string // of the loop, for logs
	Workspace string // backup: the workspace
	Dir       string // backup: its source directory
	Out       string // backup: where it records what it backed up
	Seed      uint64
	Deadline  time.Time
	Wait      bool // prune: WaitRunning
	FaultRate float64

	URL, Region, Bucket, AccessKey, SecretKey string
}

// soakRecord is one line of a backup loop's record: before each backup,
// the hash of the tree it backs up (Pending); after it succeeded, the
// snapshot's id with the same hash.
type soakRecord struct {
	Hash     string `json:"hash"`
	Snapshot string `json:"snapshot,omitempty"`
}

// soakSummary is what a helper prints last on stdout.
type soakSummary struct {
	Name     string         `json:"name"`
	OK       int            `json:"ok"`
	Freed    int            `json:"freed,omitempty"` // prune: packs deleted or repacked
	Expected map[string]int `json:"expected,omitempty"`
	Other    []string       `json:"other,omitempty"` // errors none of the expected kinds
	Injected int64          `json:"injected"`
}

func TestSoak(t *testing.T) {
	d := 12 * time.Second
	if *soakFor > 0 {
		d = *soakFor
	}
	srv := testservers.MinIO(t)
	bucket := srv.NewBucket(t)
	base := soakConfig{URL: srv.URL, Region: srv.Region, Bucket: bucket, AccessKey: srv.UserAccessKey, SecretKey: srv.UserSecretKey,
		Deadline: time.Now().Add(d), FaultRate: 0.05}
	dir := t.TempDir()
	var cfgs []soakConfig
	for i, ws := range []string{"ws1", "ws1", "ws2", "ws3"} {
		c := base
		c.Role, c.Name, c.Workspace, c.Seed = "backup", fmt.Sprintf("backup%d-%s", i, ws), ws, uint64(i+1)
		c.Dir, c.Out = filepath.Join(dir, c.Name), filepath.Join(dir, c.Name+".jsonl")
		cfgs = append(cfgs, c)
	}
	forget := base
	forget.Role, forget.Name, forget.Seed = "forget", "forget", 10
	prune1, prune2 := base, base
	prune1.Role, prune1.Name, prune1.Seed = "prune", "prune-nowait", 11
	prune2.Role, prune2.Name, prune2.Seed, prune2.Wait = "prune", "prune-wait", 12, true
	cfgs = append(cfgs, forget, prune1, prune2)

	type proc struct {
		cfg    soakConfig
		cmd    *exec.Cmd
		stdout bytes.Buffer
		stderr bytes.Buffer
	}
	start := func(c soakConfig) *proc {
		b, err := json.Marshal(c)
		must(t, err)
		p := &proc{cfg: c, cmd: exec.Command(os.Args[0], "-test.run=^$")}
		p.cmd.Env = append(os.Environ(), soakEnv+"="+string(b))
		p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
		must(t, p.cmd.Start())
		return p
	}
	var procs []*proc
	for _, c := range cfgs {
		procs = append(procs, start(c))
	}
	// Crashes: every second or so a backup or prune process is killed
	// (SIGKILL, mid-way through whatever it does) and started again.
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 5))
	kills := 0
	for time.Until(base.Deadline) > 3*time.Second {
		<-time.After(time.Duration(700+rng.IntN(800)) * time.Millisecond) // when to crash one: fault injection, not synchronisation
		i := rng.IntN(len(procs))
		if procs[i].cfg.Role == "forget" {
			continue
		}
		p := procs[i]
		must(t, p.cmd.Process.Kill())
		_ = p.cmd.Wait()
		c := p.cfg
		c.Seed += 100
		procs[i] = start(c)
		kills++
	}
	t.Logf("%d helper processes killed and started again", kills)
	sums := map[string]soakSummary{}
	var injected int64
	for _, p := range procs {
		err := p.cmd.Wait()
		var s soakSummary
		lines := strings.Split(strings.TrimSpace(p.stdout.String()), "\n")
		if jerr := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil || jerr != nil {
			t.Fatalf("helper %s: %v %v\nstdout: %s\nstderr: %s", p.cfg.Name, err, jerr, p.stdout.String(), p.stderr.String())
		}
		t.Logf("%s: %d done, expected failures %v, %d faults injected", s.Name, s.OK, s.Expected, s.Injected)
		for _, o := range s.Other {
			t.Errorf("%s: unexpected error: %s", s.Name, o)
		}
		sums[s.Name] = s
		injected += s.Injected
	}
	freed := 0
	for _, c := range cfgs {
		s := sums[c.Name]
		if c.Role == "backup" && s.OK == 0 {
			t.Errorf("%s committed no backup", c.Name)
		}
		freed += s.Freed
	}
	if sums["prune-nowait"].OK+sums["prune-wait"].OK == 0 || freed == 0 {
		t.Errorf("no prune freed anything: %+v %+v", sums["prune-nowait"], sums["prune-wait"])
	}
	if injected == 0 {
		t.Errorf("no fault injected")
	}

	// What each loop backed up: by snapshot, and every hash it meant to.
	bySnap := map[string]string{}
	pending := map[string]map[string]bool{} // source dir -> hashes
	for _, c := range cfgs {
		if c.Role != "backup" {
			continue
		}
		pending[c.Dir] = map[string]bool{}
		f, err := os.Open(c.Out)
		must(t, err)
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var rec soakRecord
			must(t, json.Unmarshal(sc.Bytes(), &rec))
			pending[c.Dir][rec.Hash] = true
			if rec.Snapshot != "" {
				bySnap[rec.Snapshot] = rec.Hash
			}
		}
		f.Close()
	}

	root, err := s3.New(context.Background(), s3.Config{Bucket: bucket, Region: srv.Region, RegionEndpoint: srv.URL,
		AccessKey: srv.UserAccessKey, SecretKey: srv.UserSecretKey})
	must(t, err)
	ctx := context.Background()
	res, err := openRepo(t, root).Prune(ctx, repo.PruneOptions{WaitRunning: true, Poll: 50 * time.Millisecond})
	must(t, err)
	t.Logf("final prune: %+v", *res)
	r := openRepo(t, root)
	refs, err := r.ListSnapshots(ctx, "")
	must(t, err)
	if len(refs) == 0 {
		t.Fatal("no snapshot left")
	}
	for _, ref := range refs {
		snap, err := r.LoadSnapshot(ctx, ref)
		must(t, err)
		dst := filepath.Join(t.TempDir(), "r")
		if _, err := Restore(ctx, r, snap, dst, RestoreOptions{}); err != nil {
			t.Errorf("restore %s: %v", ref.Key, err)
			continue
		}
		got, err := manifestHash(dst)
		must(t, err)
		want, ok := bySnap[ref.ID.String()]
		switch {
		case ok && got != want:
			t.Errorf("snapshot %s restores to %s, its loop backed up %s", ref.Key, got, want)
		case !ok && !pending[snap.Path][got]:
			// A backup that failed after its commit (a prune wrote its
			// committed session out): it must still be one of its loop's.
			t.Errorf("snapshot %s (of %s) is nothing its loop backed up", ref.Key, snap.Path)
		}
	}
	t.Logf("%d snapshots restored", len(refs))
	checkClean(t, root)
	if un := unreferencedPacks(t, root); len(un) > 0 {
		t.Errorf("after the final prune, %d packs hold nothing a snapshot reaches: %v", len(un), un)
	}
	if _, n := storedBytes(t, root, "owner1/sessions/"); n != 0 {
		t.Errorf("%d session objects left", n)
	}
}

// soakHelper runs one helper loop; it returns the process's exit code.
func soakHelper(raw string) int {
	var c soakConfig
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx := context.Background()
	st, err := s3.New(ctx, s3.Config{Bucket: c.Bucket, Region: c.Region, RegionEndpoint: c.URL, AccessKey: c.AccessKey, SecretKey: c.SecretKey})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	f := faults.New(st, faults.Options{Rate: c.FaultRate, AfterRate: 0.5, Seed: c.Seed*1000 + uint64(os.Getpid())})
	rs := retry.New(f, retry.Options{Attempts: 4, Initial: time.Millisecond, Max: 20 * time.Millisecond})
	owner, err := placement.NewPrefixPerOwner(rs).Owner(ctx, "owner1", true)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	sum := soakSummary{Name: c.Name, Expected: map[string]int{}}
	rng := rand.New(rand.NewPCG(c.Seed, 99))
	var out *os.File
	if c.Role == "backup" {
		if out, err = os.OpenFile(c.Out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		defer out.Close()
	}
	record := func(rec soakRecord) error {
		b, _ := json.Marshal(rec)
		_, err := out.Write(append(b, '\n'))
		return err
	}
	for iter := 0; time.Now().Before(c.Deadline); iter++ {
		var err error
		switch c.Role {
		case "backup":
			if err := soakChurn(c.Dir, rng, iter); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
			h, herr := manifestHash(c.Dir)
			if herr == nil {
				herr = record(soakRecord{Hash: h})
			}
			if herr != nil {
				fmt.Fprintln(os.Stderr, herr)
				return 2
			}
			var r *repo.Repository
			if r, err = repo.Load(ctx, owner, true); err == nil {
				var res *BackupResult
				res, err = Backup(ctx, r, c.Dir, BackupOptions{Owner: "owner1", Workspace: c.Workspace, SessionLease: 3 * time.Second})
				if err == nil {
					if err := record(soakRecord{Hash: h, Snapshot: res.SnapshotID.String()}); err != nil {
						fmt.Fprintln(os.Stderr, err)
						return 2
					}
				}
			}
		case "forget":
			var r *repo.Repository
			if r, err = repo.Open(ctx, owner); err == nil {
				_, err = r.Forget(ctx, "", retention.Policy{KeepLast: 1 + rng.IntN(3)}, false)
			}
			soakPace(300 * time.Millisecond)
		case "prune":
			var r *repo.Repository
			if r, err = repo.Load(ctx, owner, true); err == nil {
				var res *repo.PruneResult
				res, err = r.Prune(ctx, repo.PruneOptions{Lease: 2 * time.Second, Poll: 50 * time.Millisecond, WaitRunning: c.Wait})
				if err == nil {
					sum.Freed += res.PacksDeleted + res.PacksRepacked
				}
			}
			soakPace(200 * time.Millisecond)
		}
		switch {
		case err == nil:
			sum.OK++
		case errors.Is(err, repo.ErrSessionFenced):
			sum.Expected["fenced"]++
		case errors.Is(err, repo.ErrPruneRunning):
			sum.Expected["prune running"]++
		case errors.Is(err, repo.ErrPruneFenced):
			sum.Expected["prune fenced"]++
		case errors.Is(err, repo.ErrNoRepository):
			sum.Expected["no repository yet"]++ // before the first backup made it
		case errors.Is(err, faults.ErrInjected) || storage.IsTransient(err):
			sum.Expected["faults"]++
		default:
			fmt.Fprintf(os.Stderr, "%s: %v\n", c.Name, err)
			if len(sum.Other) < 20 {
				sum.Other = append(sum.Other, err.Error())
			}
		}
	}
	sum.Injected = f.Injected()
	b, _ := json.Marshal(sum)
	fmt.Println(string(b))
	return 0
}

// soakPace spaces a loop's rounds (pacing, not synchronisation).
func soakPace(d time.Duration) { <-time.After(d) }

// soakChurn changes a loop's tree: the first time it writes 12 files; then
// it rewrites two, sometimes removes one or adds one. Contents come from a
// pool shared by every loop (so workspaces share blobs, and content
// forgotten by one comes back in another), with old mtimes.
func soakChurn(dir string, rng *rand.Rand, iter int) error {
	write := func(name string) error {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		k := rng.IntN(40)
		if err := os.WriteFile(p, genData(uint64(7000+k), 2000+k*1500), 0o644); err != nil {
			return err
		}
		mt := time.Unix(1e9+int64(rng.IntN(1000)), 0)
		return os.Chtimes(p, mt, mt)
	}
	name := func() string { return fmt.Sprintf("d%d/f%02d", rng.IntN(3), rng.IntN(16)) }
	if iter == 0 {
		for range 12 {
			if err := write(name()); err != nil {
				return err
			}
		}
		return nil
	}
	for range 2 {
		if err := write(name()); err != nil {
			return err
		}
	}
	if rng.IntN(4) == 0 {
		if err := os.Remove(filepath.Join(dir, name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// manifestHash hashes everything a restore must reproduce of the tree at
// root (as snapshotDir records it).
func manifestHash(root string) (string, error) {
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		mtime := st.Mtim.Nano()
		if rel == "." || d.IsDir() {
			mtime = 0 // a directory's changes as the loop writes into it
		}
		line := fmt.Sprintf("%q %v %o %d", rel, d.Type(), st.Mode&07777, mtime)
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s := sha256.Sum256(b)
			line += " " + hex.EncodeToString(s[:])
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(lines)
	s := sha256.Sum256([]byte(strings.Join(lines, "\n")))
	return hex.EncodeToString(s[:]), nil
}
