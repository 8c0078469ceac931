package main

import (
	"bytes"
	"context"
	bin "encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/local"
)

// TestKilledWhileFinishing: a backup killed before the node cache's copy
// of its index object is renamed into place, and the next one killed
// before its snapshot is (each held there, so the kill lands exactly
// then), leave no snapshot and a temporary file each; the backup that
// completes (under the same filter, letting everything through) stores
// nothing again and removes both, and check is clean.
func TestKilledWhileFinishing(t *testing.T) {
	ctx := context.Background()
	store, cacheDir, src := t.TempDir(), filepath.Join(t.TempDir(), "cache"), t.TempDir()
	genTree(t, src, 4<<20, 5)
	owner := filepath.Join(store, "o1")
	args := []string{"backup", "-r", "file://" + store, "--cache-dir", cacheDir, "--owner", "o1", "--workspace", "w1", "--json", src}
	killAt := func(where string, at func(fsCall) bool) {
		t.Helper()
		var seen []string
		h := startHeld(t, nil, func(_ *heldChild, c fsCall) (bool, string) {
			seen = append(seen, c.String())
			return at(c), where
		}, args...)
		if ws, killed, _, _ := h.Wait(t); !killed || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("not killed (%v): %s\n%s\ncalls: %q", ws, h.stdout.String(), h.stderr.String(), seen)
		}
	}

	killAt("before renaming the cache's copy of the index", func(c fsCall) bool {
		return !c.Create && strings.HasPrefix(c.Path, cacheDir+"/") && filepath.Base(filepath.Dir(c.Path)) == "index"
	})
	idx, _ := filepath.Glob(filepath.Join(owner, "index", "*"))
	cached, _ := filepath.Glob(filepath.Join(cacheDir, "*", "index", ".tmp-*"))
	if len(idx) != 1 || len(cached) != 1 {
		t.Fatalf("after the kill at the cache: index objects %q, cache temporary files %q", idx, cached)
	}
	if a, _ := os.ReadFile(idx[0]); !bytes.Equal(a, must1(os.ReadFile(cached[0]))) {
		t.Fatalf("the cache's temporary file is not the whole index object")
	}

	killAt("before renaming the snapshot into place", func(c fsCall) bool {
		return !c.Create && strings.HasPrefix(c.Path, filepath.Join(owner, "snapshots")+"/")
	})
	snapTmp, _ := filepath.Glob(filepath.Join(owner, "snapshots", "w1", ".tmp-*"))
	if len(snapTmp) != 1 || !strings.Contains(string(must1(os.ReadFile(snapTmp[0]))), `"workspace":"w1"`) {
		t.Fatalf("after the kill at the snapshot: %q", snapTmp)
	}
	if s := measureStore(t, ctx, owner, cacheDir); s.snapshots != 0 || len(s.tmps) != 2 {
		t.Fatalf("after two kills: %d snapshots, temporary files %v", s.snapshots, s.tmps)
	}

	start := time.Now()
	h := startHeld(t, nil, func(*heldChild, fsCall) (bool, string) { return false, "" }, args...)
	ws, killed, _, _ := h.Wait(t)
	var res struct {
		NewBytes *int64 `json:"new_bytes"`
	}
	if err := json.Unmarshal(h.stdout.Bytes(), &res); killed || ws.ExitStatus() != 0 || err != nil || res.NewBytes == nil || *res.NewBytes != 0 {
		t.Fatalf("the backup that completes: %v %s\n%s", ws, h.stdout.String(), h.stderr.String())
	}
	if !strings.Contains(h.stderr.String(), "removed 1 leftovers of interrupted uploads") {
		t.Errorf("stderr: %q", h.stderr.String())
	}
	s := measureStore(t, ctx, owner, cacheDir)
	if s.snapshots != 1 || s.dupBlobs != 0 {
		t.Errorf("after it: %d snapshots, %d blobs stored twice", s.snapshots, s.dupBlobs)
	}
	for _, f := range s.tmps {
		if f.mod.Before(start) {
			t.Errorf("temporary file older than the backup survived it: %s", f.path)
		}
	}
	r := ok(t, run(t, nil, "check", "-r", "file://"+store, "--owner", "o1", "--read-data", "--json"))
	if !strings.Contains(r.stdout, `"ok":true`) || !strings.Contains(r.stdout, `"warnings":[]`) || r.stderr != "" {
		t.Errorf("check: %s %s", r.stdout, r.stderr)
	}
}

func must1[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// killPlan says where one round's backup is killed: at the first of its
// triggers that comes, or at the latest before it would rename its index
// object into place (or its snapshot, should it have no index to write),
// so that no round ever completes.
type killPlan struct {
	name      string        // its kind, for the log
	delay     time.Duration // after the start (0: none)
	firstPack bool          // before creating its first pack file
	createN   int           // before creating its n-th pack file
	renameN   int           // before renaming its n-th data pack into place
	afterN    int           // `after` after its n-th data pack was renamed into place
	after     time.Duration
	at        string // "tree" (before renaming its tree pack), "index-file" (before creating its index object's file)
}

// killRound is what one round did and left.
type killRound struct {
	plan                        killPlan
	why                         string
	at                          time.Duration
	packFiles, dataPacks, trees int // pack files it created, data and tree packs it renamed into place
	endPhase                    bool
	state                       storeState
	newTmps                     []tmpFile // left by this round
}

// storeState is what the repository holds, read from the pack trailers.
type storeState struct {
	packs        int
	blobs        map[chunk.ID]repo.BlobEntry // distinct, in complete packs
	dataRaw      int64                       // distinct data blobs' raw bytes
	allRaw       int64                       // distinct blobs' raw bytes, data and tree
	dataRawTotal int64                       // data blobs' raw bytes over all packs, duplicates counted
	dupBlobs     int
	dupBytes     int64
	indexObjects int
	snapshots    int
	tmps         []tmpFile // in the store and the cache
}

type tmpFile struct {
	path string
	size int64
	mod  time.Time
}

// TestKilledBackupsResume is the acceptance test of resumable backups: 20
// SIGKILLs at random points of a 1 GiB backup, each next backup starting
// from what the killed ones left; then one backup to completion. It stores
// only what the complete packs lack (no blob of a complete pack is stored
// again), every temporary file older than it is gone after it, check
// --read-data is clean and the snapshot restores byte for byte.
//
// The kill points are drawn from a seeded RNG ($BACKUPD_KILL_SEED repeats
// them; the random delays among them land wherever the child is then) and
// are states, not guesses (see killpoint_linux_amd64_test.go): early (a
// random delay, at the latest before the round's first pack file),
// mid-upload (before its n-th pack file is created or renamed into place,
// or a random delay after its n-th data pack), and late, after all data
// is stored (before its tree pack is renamed into place, before its index
// object's file is created, before that is renamed into place). Kills at
// the cache's copy of the index and at the snapshot are
// TestKilledWhileFinishing's: after them no pack would be left for the
// final backup to find. The data and the repository live on /dev/shm,
// the node cache under the test's temporary directory.
func TestKilledBackupsResume(t *testing.T) {
	begin := time.Now()
	ctx := context.Background()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("BACKUPD_KILL_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("BACKUPD_KILL_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (BACKUPD_KILL_SEED=%d repeats the kill points)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0x6b696c6c))

	base := shmDir(t)
	src, storeDir := filepath.Join(base, "src"), filepath.Join(base, "store")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	owner := filepath.Join(storeDir, "o1")
	total := genKillSource(t, src, seed)
	if total != 1<<30 {
		t.Fatalf("source of %d bytes", total)
	}
	t.Logf("1 GiB source generated in %v", time.Since(begin).Round(time.Millisecond))
	args := []string{"backup", "-r", "file://" + storeDir, "--cache-dir", cacheDir, "--owner", "o1", "--workspace", "w1", "--json", src}

	plans := killPlans(rng)
	var rounds []killRound
	prev := storeState{blobs: map[chunk.ID]repo.BlobEntry{}}
	var lostBytes, maxLost int64
	roundsStart := time.Now()
	for i, plan := range plans {
		kr := runKillRound(t, plan, owner, cacheDir, args)
		kr.state = measureStore(t, ctx, owner, cacheDir)
		before := map[string]bool{}
		for _, f := range prev.tmps {
			before[f.path] = true
		}
		for _, f := range kr.state.tmps {
			if !before[f.path] {
				kr.newTmps = append(kr.newTmps, f)
			}
		}
		st := kr.state
		if st.snapshots != 0 {
			t.Fatalf("round %d (%s): a snapshot exists", i+1, kr.why)
		}
		if st.dupBlobs != 0 {
			t.Errorf("round %d (%s): %d blobs (%d bytes) of complete packs stored again", i+1, kr.why, st.dupBlobs, st.dupBytes)
		}
		// What a kill loses of what it uploaded: the packs it was writing,
		// at most one per upload (2 at once to a local store).
		var packTmps int
		for _, f := range kr.newTmps {
			if strings.HasPrefix(f.path, filepath.Join(owner, "data")+"/") {
				packTmps++
				lostBytes += f.size
				maxLost = max(maxLost, f.size)
			}
		}
		if packTmps > 2 {
			t.Errorf("round %d (%s) was writing %d packs at once", i+1, kr.why, packTmps)
		}
		for id := range prev.blobs {
			if _, ok := st.blobs[id]; !ok {
				t.Fatalf("round %d: blob %s of a complete pack is gone", i+1, id.Short())
			}
		}
		t.Logf("round %2d killed %5dms %-58s packs %2d->%2d (+%d trees)  U %4d MiB (+%3d)  left %d temp files (%s)",
			i+1, kr.at.Milliseconds(), kr.why, prev.packs, st.packs, kr.trees, st.dataRaw>>20, (st.dataRaw-prev.dataRaw)>>20,
			len(kr.newTmps), describeTmps(kr.newTmps, storeDir, cacheDir))
		rounds = append(rounds, kr)
		prev = st
	}
	roundsTook := time.Since(roundsStart)

	// The spread of the kill points, as observed.
	var early, withTmp, afterPacks, late, endPhase int
	packsBefore := 0
	for _, kr := range rounds {
		if kr.packFiles == 0 && !kr.endPhase {
			early++
		}
		if packsBefore > 0 || kr.dataPacks > 0 {
			afterPacks++
		}
		for _, f := range kr.newTmps {
			if strings.HasPrefix(f.path, filepath.Join(owner, "data")+"/") {
				withTmp++
				break
			}
		}
		if kr.endPhase {
			endPhase++
			if kr.state.dataRaw == total {
				late++
			}
		}
		packsBefore = kr.state.packs
	}
	t.Logf("uploaded and lost by the kills (their pack temporary files): %.1f MiB in all, at most %.1f MiB in one file", float64(lostBytes)/(1<<20), float64(maxLost)/(1<<20))
	t.Logf("kill points: %d before the round's first pack file, %d with pack temporary files left, %d after packs existed, %d while writing trees or index, %d of them with all data stored",
		early, withTmp, afterPacks, endPhase, late)
	if early < 3 || withTmp < 3 || afterPacks < 3 || endPhase < 3 || late < 2 {
		t.Errorf("the kills did not spread over the stages of a backup")
	}

	// The backup that completes.
	u20 := prev
	var storeTmps, cacheTmps int
	var tmpBytes int64
	for _, f := range u20.tmps {
		if strings.HasPrefix(f.path, cacheDir+"/") {
			cacheTmps++
		} else {
			storeTmps++
		}
		tmpBytes += f.size
	}
	if storeTmps == 0 {
		t.Fatalf("the kills left no temporary file in the store: nothing to clean up")
	}
	// No index object names a pack: the backup that completes must find
	// them all from their trailers.
	if rep := loadReport(t, ctx, owner); len(rep.Adopted) != u20.packs || u20.indexObjects != 0 {
		t.Fatalf("before the final backup: %d of %d packs in no index object, %d index objects", len(rep.Adopted), u20.packs, u20.indexObjects)
	}
	packSize := int64(readPackSize(t, ctx, owner))
	finalStart := time.Now()
	r := ok(t, run(t, nil, args...))
	finalTook := time.Since(finalStart)
	var res struct {
		NewBytes int64 `json:"new_bytes"`
		Bytes    int64 `json:"bytes"`
		Objects  int64 `json:"objects_written"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.Bytes != total {
		t.Fatalf("final backup: %v %s", err, r.stdout)
	}
	end := measureStore(t, ctx, owner, cacheDir)
	t.Logf("final backup in %v: new_bytes %d (1 GiB - U_20 = %d, bound %d), %d objects written; %d temporary files before it (%d in the store, %d in the cache, %d MiB)",
		finalTook.Round(time.Millisecond), res.NewBytes, total-u20.dataRaw, total-u20.dataRaw+packSize, res.Objects, storeTmps+cacheTmps, storeTmps, cacheTmps, tmpBytes>>20)
	if res.NewBytes > total-u20.dataRaw+packSize {
		t.Errorf("final backup stored %d new bytes, more than 1 GiB - U_20 + one pack = %d", res.NewBytes, total-u20.dataRaw+packSize)
	}
	// Exactly: it stored what the complete packs lacked, data and trees.
	if want := end.allRaw - u20.allRaw; res.NewBytes != want {
		t.Errorf("final backup's new_bytes %d, want %d (the blobs no complete pack held)", res.NewBytes, want)
	}
	if end.dataRaw != total || end.dupBlobs != 0 {
		t.Errorf("in the end: %d distinct data bytes stored (want %d), %d blobs stored twice", end.dataRaw, total, end.dupBlobs)
	}
	if end.dataRawTotal > total+int64(len(plans))*packSize {
		t.Errorf("data blobs of %d raw bytes over all packs, more than 1 GiB + %d packs", end.dataRawTotal, len(plans))
	}
	t.Logf("data blobs over all packs: %d raw bytes = 1 GiB + %d (%d blobs stored twice)", end.dataRawTotal, end.dataRawTotal-total, end.dupBlobs)
	for _, f := range end.tmps {
		if f.mod.Before(finalStart) {
			t.Errorf("temporary file older than the final backup survived it: %s (%d bytes, %v)", f.path, f.size, f.mod)
		}
	}
	if m := regexp.MustCompile(`removed (\d+) leftovers of interrupted uploads`).FindStringSubmatch(r.stderr); m == nil || m[1] != strconv.Itoa(storeTmps) {
		t.Errorf("final backup's stderr does not say it removed the %d leftovers: %q", storeTmps, r.stderr)
	}
	if rep := loadReport(t, ctx, owner); len(rep.Adopted) != 0 || len(rep.Damaged) != 0 || len(rep.BadPacks) != 0 {
		t.Errorf("after the final backup: %d packs in no index object, %d damaged index objects, %d bad packs", len(rep.Adopted), len(rep.Damaged), len(rep.BadPacks))
	}

	checkStart := time.Now()
	r = ok(t, run(t, nil, "check", "-r", "file://"+storeDir, "--owner", "o1", "--read-data", "--json"))
	var chk struct {
		OK        bool     `json:"ok"`
		Problems  []string `json:"problems"`
		Warnings  []string `json:"warnings"`
		PacksRead int      `json:"packs_read"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &chk); err != nil || !chk.OK || len(chk.Problems) != 0 || len(chk.Warnings) != 0 || chk.PacksRead != end.packs || r.stderr != "" {
		t.Errorf("check --read-data: %v %s %s", err, r.stdout, r.stderr)
	}
	checkTook := time.Since(checkStart)
	restoreStart := time.Now()
	dst := filepath.Join(base, "restored")
	ok(t, run(t, nil, "restore", "-r", "file://"+storeDir, "--cache-dir", cacheDir, "--owner", "o1", "--workspace", "w1", dst))
	sameBytes(t, src, dst)
	t.Logf("took %v: %v generating, %v for the 20 killed rounds, %v the final backup, %v check --read-data, %v restore and compare",
		time.Since(begin).Round(time.Millisecond), roundsStart.Sub(begin).Round(time.Millisecond), roundsTook.Round(time.Millisecond),
		finalTook.Round(time.Millisecond), checkTook.Round(time.Millisecond), time.Since(restoreStart).Round(time.Millisecond))
}

// killPlans draws the 20 kill points: 17 early and mid-upload ones in a
// random order, then 3 late ones, which need all data stored (a backup
// writes its trees and index only after its last data pack) and so come
// last. Every late one is at or before the index object's rename, so
// that the backup that completes finds every pack in no index object.
func killPlans(rng *rand.Rand) []killPlan {
	var mid []killPlan
	for i := range 17 {
		switch i % 4 {
		case 0:
			mid = append(mid, killPlan{name: "early", delay: time.Duration(rng.Int64N(int64(1500 * time.Millisecond))), firstPack: true})
		case 1:
			mid = append(mid, killPlan{name: "create", createN: 2 + rng.IntN(6)})
		case 2:
			mid = append(mid, killPlan{name: "rename", renameN: 1 + rng.IntN(6)})
		case 3:
			mid = append(mid, killPlan{name: "after", afterN: 1 + rng.IntN(5), after: time.Duration(rng.Int64N(int64(80 * time.Millisecond)))})
		}
	}
	rng.Shuffle(len(mid), func(i, j int) { mid[i], mid[j] = mid[j], mid[i] })
	return append(mid,
		killPlan{name: "tree", at: "tree"},
		killPlan{name: "index-file", at: "index-file"},
		killPlan{name: "index", at: "index"})
}

// runKillRound runs one backup and kills it as plan says.
func runKillRound(t *testing.T, plan killPlan, owner, cacheDir string, args []string) killRound {
	t.Helper()
	kr := killRound{plan: plan}
	var cancels []func()
	h := startHeld(t, nil, killDecider(t, plan, owner, cacheDir, &kr, &cancels), args...)
	if plan.delay > 0 {
		cancels = append(cancels, h.KillAfter(plan.delay, fmt.Sprintf("at %v", plan.delay.Round(time.Millisecond))))
	}
	ws, killed, why, at := h.Wait(t)
	for _, c := range cancels {
		c()
	}
	if !killed || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("backup (%+v) not killed: %v\nstdout: %s\nstderr: %s", plan, ws, h.stdout.String(), h.stderr.String())
	}
	kr.why, kr.at = why, at
	return kr
}

// killDecider returns the decide function of a child that writes the
// repository at owner and the node cache at cacheDir, to be killed as
// plan says; it counts into kr, and appends the timers it starts to
// cancels.
func killDecider(t *testing.T, plan killPlan, owner, cacheDir string, kr *killRound, cancels *[]func()) func(*heldChild, fsCall) (bool, string) {
	dataDir := filepath.Join(owner, "data") + "/"
	indexDir := filepath.Join(owner, "index") + "/"
	snapDir := filepath.Join(owner, "snapshots") + "/"
	return func(h *heldChild, c fsCall) (bool, string) {
		switch {
		case strings.HasPrefix(c.Path, dataDir) && c.Create:
			if plan.firstPack && kr.packFiles == 0 {
				return true, "before creating its first pack file"
			}
			if plan.createN == kr.packFiles+1 {
				return true, fmt.Sprintf("before creating pack file %d", kr.packFiles+1)
			}
			kr.packFiles++
		case strings.HasPrefix(c.Path, dataDir):
			if packType(t, c.From) == repo.TreeBlob {
				kr.endPhase = true
				if plan.at == "tree" {
					return true, "before renaming its tree pack into place"
				}
				kr.trees++
				return false, ""
			}
			if plan.renameN == kr.dataPacks+1 {
				return true, fmt.Sprintf("before renaming data pack %d into place", kr.dataPacks+1)
			}
			kr.dataPacks++
			if plan.afterN == kr.dataPacks {
				n := kr.dataPacks
				*cancels = append(*cancels, h.KillAfter(h.Since()+plan.after, fmt.Sprintf("%v after data pack %d was renamed into place", plan.after.Round(time.Millisecond), n)))
			}
		case strings.HasPrefix(c.Path, indexDir):
			kr.endPhase = true
			if c.Create && plan.at == "index-file" {
				return true, "before creating its index object's file"
			}
			if !c.Create {
				return true, "before renaming its index object into place"
			}
		case strings.HasPrefix(c.Path, snapDir):
			kr.endPhase = true
			return true, "before writing its snapshot" // never reached while packs are in no index
		}
		return false, ""
	}
}

// packType reads the type of the first blob of the complete pack file p.
func packType(t *testing.T, p string) repo.BlobType {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	footer := make([]byte, repo.PackFooterSize)
	if _, err := f.ReadAt(footer, fi.Size()-repo.PackFooterSize); err != nil {
		t.Fatal(err)
	}
	n := int64(bin.LittleEndian.Uint32(footer))
	typ := make([]byte, 1)
	if _, err := f.ReadAt(typ, fi.Size()-repo.PackFooterSize-n+chunk.IDSize); err != nil {
		t.Fatal(err)
	}
	return repo.BlobType(typ[0])
}

// measureStore reads what the repository at owner holds: every complete
// pack's trailer, the index objects and snapshots listed; and the
// temporary files in it and in the cache.
func measureStore(t *testing.T, ctx context.Context, owner, cacheDir string) storeState {
	t.Helper()
	s := storeState{blobs: map[chunk.ID]repo.BlobEntry{}}
	for _, dir := range []string{owner, cacheDir} {
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && strings.HasPrefix(d.Name(), ".tmp-") {
				if fi, err := d.Info(); err == nil {
					s.tmps = append(s.tmps, tmpFile{p, fi.Size(), fi.ModTime()})
				}
			}
			return nil
		})
	}
	st, err := local.New(owner)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, st)
	if errors.Is(err, repo.ErrNoRepository) {
		return s // killed before it wrote the config
	}
	if err != nil {
		t.Fatal(err)
	}
	err = st.List(ctx, "data/", func(oi storage.ObjectInfo) error {
		id, err := chunk.ParseID(filepath.Base(oi.Key))
		if err != nil {
			return err
		}
		entries, err := r.ReadPackTrailer(ctx, id, oi.Size)
		if err != nil {
			return err // a complete pack is never damaged by a kill
		}
		s.packs++
		for _, e := range entries {
			if e.Type == repo.DataBlob {
				s.dataRawTotal += int64(e.RawLen)
			}
			if _, ok := s.blobs[e.ID]; ok {
				s.dupBlobs++
				s.dupBytes += int64(e.RawLen)
				continue
			}
			s.blobs[e.ID] = e
			s.allRaw += int64(e.RawLen)
			if e.Type == repo.DataBlob {
				s.dataRaw += int64(e.RawLen)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	count := func(prefix string) (n int) {
		if err := st.List(ctx, prefix, func(storage.ObjectInfo) error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	s.indexObjects, s.snapshots = count("index/"), count("snapshots/")
	// Loading the index sees every complete pack and nothing damaged.
	rep := loadReport(t, ctx, owner)
	if len(rep.Damaged) != 0 || len(rep.BadPacks) != 0 || rep.Packs != s.packs {
		t.Fatalf("loading the index after a kill: %d packs of %d, damaged %v, bad packs %v", rep.Packs, s.packs, rep.Damaged, rep.BadPacks)
	}
	return s
}

func loadReport(t *testing.T, ctx context.Context, owner string) *repo.IndexReport {
	t.Helper()
	st, err := local.New(owner)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Load(ctx, st, false)
	if err != nil {
		t.Fatal(err)
	}
	return r.IndexReport()
}

func readPackSize(t *testing.T, ctx context.Context, owner string) int {
	t.Helper()
	st, err := local.New(owner)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	return r.Config().PackSize
}

func describeTmps(fs []tmpFile, storeDir, cacheDir string) string {
	var parts []string
	for _, f := range fs {
		where := strings.TrimPrefix(filepath.Dir(f.path), storeDir+"/o1/")
		if strings.HasPrefix(f.path, cacheDir+"/") {
			where = "cache/" + filepath.Base(filepath.Dir(f.path))
		}
		parts = append(parts, fmt.Sprintf("%s %.1f MiB", where, float64(f.size)/(1<<20)))
	}
	return strings.Join(parts, ", ")
}

// shmDir returns a new directory on /dev/shm (tmpfs: this VM's disk is
// slow and noisy), or in the temporary directory if there is none,
// removed when the test ends.
func shmDir(t *testing.T) string {
	t.Helper()
	shm := "/dev/shm"
	if fi, err := os.Stat(shm); err != nil || !fi.IsDir() {
		shm = os.TempDir()
	}
	base, err := os.MkdirTemp(shm, "backupd-kill-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	return base
}

// genKillSource writes 1 GiB of incompressible content: 48 files of 16
// MiB, 24 of 4 MiB and 40 of 1 MiB in a few directories, 400 small source
// files (1 byte to 64 KiB) in 20 packages, files that make up the rest
// (about 100 MiB), an empty directory and a symlink. It returns the bytes
// written.
func genKillSource(t *testing.T, dir string, seed uint64) int64 {
	t.Helper()
	var files []genFile
	for i := range 48 {
		files = append(files, genFile{fmt.Sprintf("assets/%c/blob-%02d.bin", 'a'+i%4, i), 16 << 20})
	}
	for i := range 24 {
		files = append(files, genFile{fmt.Sprintf("build/obj/o%02d.o", i), 4 << 20})
	}
	for i := range 40 {
		files = append(files, genFile{fmt.Sprintf("node_modules/m%02d/index.js", i), 1 << 20})
	}
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range 400 {
		files = append(files, genFile{fmt.Sprintf("src/pkg%02d/f%03d.go", i%20, i), 1 + r.IntN(64<<10)})
	}
	var sum int64
	for _, f := range files {
		sum += int64(f.size)
	}
	for rest, i := 1<<30-sum, 0; rest > 0; i++ { // the rest in files of up to 16 MiB
		n := min(rest, 16<<20)
		files = append(files, genFile{fmt.Sprintf("assets/rest/r%d.bin", i), int(n)})
		rest -= n
	}
	if err := os.MkdirAll(filepath.Join(dir, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("assets/rest/r0.bin", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	return genFiles(t, dir, seed, files)
}

// genFile is a file genFiles writes: its path below the directory and
// its size, at most 16 MiB.
type genFile struct {
	path string
	size int
}

// genFiles writes files of pseudo-random (incompressible) content under
// dir, each from its own ChaCha8 stream of seed, two at a time, and
// returns the bytes written.
func genFiles(t *testing.T, dir string, seed uint64, files []genFile) int64 {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 16<<20)
			for i := w; i < len(files); i += 2 {
				f := files[i]
				var key [32]byte
				bin.LittleEndian.PutUint64(key[:], seed)
				bin.LittleEndian.PutUint64(key[8:], uint64(i))
				rand.NewChaCha8(key).Read(buf[:f.size])
				p := filepath.Join(dir, f.path)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					errs <- err
					return
				}
				if err := os.WriteFile(p, buf[:f.size], 0o644); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var n int64
	for _, f := range files {
		n += int64(f.size)
	}
	return n
}

// sameBytes compares two trees: the same entries, types, permissions,
// link targets and file contents, byte for byte.
func sameBytes(t *testing.T, a, b string) {
	t.Helper()
	entries := 0
	bufA, bufB := make([]byte, 4<<20), make([]byte, 4<<20)
	err := filepath.WalkDir(a, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		entries++
		rel, _ := filepath.Rel(a, p)
		q := filepath.Join(b, rel)
		fa, err := os.Lstat(p)
		if err != nil {
			return err
		}
		fb, err := os.Lstat(q)
		if err != nil {
			return fmt.Errorf("%s not restored: %w", rel, err)
		}
		if fa.Mode() != fb.Mode() {
			return fmt.Errorf("%s: mode %v restored as %v", rel, fa.Mode(), fb.Mode())
		}
		switch {
		case fa.Mode()&fs.ModeSymlink != 0:
			la, _ := os.Readlink(p)
			lb, _ := os.Readlink(q)
			if la != lb {
				return fmt.Errorf("%s: link to %q restored as %q", rel, la, lb)
			}
		case fa.Mode().IsRegular():
			if fa.Size() != fb.Size() {
				return fmt.Errorf("%s: %d bytes restored as %d", rel, fa.Size(), fb.Size())
			}
			ra, err := os.Open(p)
			if err != nil {
				return err
			}
			defer ra.Close()
			rb, err := os.Open(q)
			if err != nil {
				return err
			}
			defer rb.Close()
			for off := int64(0); ; {
				n, err := io.ReadFull(ra, bufA)
				m, _ := io.ReadFull(rb, bufB[:n])
				if m != n || !bytes.Equal(bufA[:n], bufB[:n]) {
					return fmt.Errorf("%s differs after byte %d", rel, off)
				}
				off += int64(n)
				if err != nil {
					break
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	restored := 0
	filepath.WalkDir(b, func(string, fs.DirEntry, error) error { restored++; return nil })
	if restored != entries {
		t.Fatalf("%d entries backed up, %d restored", entries, restored)
	}
}
