package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	backupdOnce sync.Once
	backupdBin  string
	backupdErr  error
)

// buildBackupd builds cmd/backupd next to the backupctl binary (removed
// with it by TestMain), once.
func buildBackupd(t *testing.T) string {
	t.Helper()
	backupdOnce.Do(func() {
		backupdBin = filepath.Join(filepath.Dir(binary), "backupd")
		if out, err := exec.Command("go", "build", "-o", backupdBin, "../backupd").CombinedOutput(); err != nil {
			backupdErr = fmt.Errorf("build backupd: %v\n%s", err, out)
		}
	})
	if backupdErr != nil {
		t.Fatal(backupdErr)
	}
	return backupdBin
}

// waitListening waits until the daemon h logs that it listens, failing
// if it exits first.
func waitListening(t *testing.T, h *heldChild) {
	t.Helper()
	select {
	case <-h.stderr.Contains(`"backupd listening"`):
	case <-h.exited:
		t.Fatalf("backupd exited before listening: %s", h.stderr.String())
	case <-time.After(2 * time.Minute): // a guard against a hang, not a wait for a state
		h.Kill("not listening after 2 minutes")
		t.Fatalf("backupd not listening after 2 minutes: %s", h.stderr.String())
	}
}

// TestDaemonKilledMidBackupResumes: backupd killed with SIGKILL in the
// middle of a BackupWorkspace, three times at points drawn from a seeded
// RNG, and started again each time on the same store and cache; the
// backup that completes stores only what no complete pack held, the
// leftovers of the killed ones are gone after it, and the snapshot
// restores through the daemon byte for byte.
func TestDaemonKilledMidBackupResumes(t *testing.T) {
	ctx := context.Background()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("BACKUPD_KILL_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("BACKUPD_KILL_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (BACKUPD_KILL_SEED=%d repeats the kill points)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0x6461656d))
	daemonBin := buildBackupd(t)
	base := shmDir(t)
	root, storeDir := filepath.Join(base, "workspaces"), filepath.Join(base, "store")
	src := filepath.Join(root, "ws1")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	owner := filepath.Join(storeDir, "o1")
	var files []genFile
	for i := range 14 {
		files = append(files, genFile{fmt.Sprintf("data/f%02d.bin", i), 16 << 20})
	}
	for i := range 100 {
		files = append(files, genFile{fmt.Sprintf("src/p%d/f%02d.go", i%10, i), 1 + rng.IntN(32<<10)})
	}
	total := genFiles(t, src, seed, files)
	sock := filepath.Join(base, "d.sock")
	daemonArgs := []string{"--listen", "unix://" + sock, "--workspace-root", root, "--repo", "file://" + storeDir, "--cache-dir", cacheDir}
	backup := []string{"backup", "--daemon", "unix://" + sock, "--owner", "o1", "--workspace", "ws1", "--json", src}

	plans := []killPlan{
		{createN: 2 + rng.IntN(4)},
		{renameN: 1 + rng.IntN(4)},
		{afterN: 1 + rng.IntN(3), after: time.Duration(rng.Int64N(int64(50 * time.Millisecond)))},
	}
	rng.Shuffle(len(plans), func(i, j int) { plans[i], plans[j] = plans[j], plans[i] })
	prev := storeState{}
	for i, plan := range plans {
		kr := killRound{plan: plan}
		var cancels []func()
		h := startHeldProgram(t, daemonBin, nil, killDecider(t, plan, owner, cacheDir, &kr, &cancels), daemonArgs...)
		waitListening(t, h)
		r := run(t, nil, backup...)
		ws, killed, why, at := h.Wait(t)
		for _, c := range cancels {
			c()
		}
		if !killed || !ws.Signaled() || ws.Signal() != syscall.SIGKILL || r.code == 0 {
			t.Fatalf("backupd (%+v) not killed: %v; backupctl exit %d %s %s\n%s", plan, ws, r.code, r.stdout, r.stderr, h.stderr.String())
		}
		st := measureStore(t, ctx, owner, cacheDir)
		if st.snapshots != 0 || st.dupBlobs != 0 {
			t.Fatalf("after kill %d: %d snapshots, %d blobs stored twice", i+1, st.snapshots, st.dupBlobs)
		}
		t.Logf("backupd killed %5dms into the run %-50s packs %2d->%2d  U %3d MiB (+%3d); backupctl: %s",
			at.Milliseconds(), why, prev.packs, st.packs, st.dataRaw>>20, (st.dataRaw-prev.dataRaw)>>20, firstLine(r.stderr))
		prev = st
	}
	if prev.dataRaw == 0 || prev.dataRaw >= total {
		t.Fatalf("the kills left %d of %d bytes stored: nothing or everything to resume", prev.dataRaw, total)
	}
	tmps := 0
	for _, f := range prev.tmps {
		if filepath.Dir(filepath.Dir(f.path)) == filepath.Join(owner, "data") {
			tmps++
		}
	}
	if tmps == 0 {
		t.Fatalf("the kills left no pack temporary file: nothing to clean up")
	}

	// Started again, plainly: the backup completes.
	d := exec.Command(daemonBin, daemonArgs...)
	d.Env = append(os.Environ(), "XDG_CACHE_HOME="+childCache)
	var logs watchedBuffer
	d.Stderr = &logs
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { d.Wait(); close(exited) }()
	t.Cleanup(func() { d.Process.Signal(syscall.SIGTERM); <-exited })
	select {
	case <-logs.Contains(`"backupd listening"`):
	case <-exited:
		t.Fatalf("backupd exited: %s", logs.String())
	}
	packSize := int64(readPackSize(t, ctx, owner))
	start := time.Now()
	r := ok(t, run(t, nil, backup...))
	var res struct {
		NewBytes int64 `json:"new_bytes"`
		Bytes    int64 `json:"bytes"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.Bytes != total {
		t.Fatalf("backup after the restart: %v %s", err, r.stdout)
	}
	end := measureStore(t, ctx, owner, cacheDir)
	t.Logf("after the restart: new_bytes %d of %d (%d not yet stored, bound %d); %d pack temporary files before it",
		res.NewBytes, total, total-prev.dataRaw, total-prev.dataRaw+packSize, tmps)
	if res.NewBytes > total-prev.dataRaw+packSize || res.NewBytes != end.allRaw-prev.allRaw || end.dupBlobs != 0 || end.dataRaw != total {
		t.Errorf("the backup after the restart stored %d new bytes: want %d (what no complete pack held), at most %d; %d blobs stored twice",
			res.NewBytes, end.allRaw-prev.allRaw, total-prev.dataRaw+packSize, end.dupBlobs)
	}
	for _, f := range end.tmps {
		if f.mod.Before(start) {
			t.Errorf("temporary file older than the backup survived it: %s", f.path)
		}
	}
	dst := filepath.Join(root, "restored")
	ok(t, run(t, nil, "restore", "--daemon", "unix://"+sock, "--owner", "o1", "--workspace", "ws1", dst))
	sameBytes(t, src, dst)
	r = ok(t, run(t, nil, "check", "-r", "file://"+storeDir, "--owner", "o1", "--read-data", "--json"))
	var chk struct {
		OK       bool     `json:"ok"`
		Warnings []string `json:"warnings"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &chk); err != nil || !chk.OK || len(chk.Warnings) != 0 {
		t.Errorf("check --read-data: %v %s %s", err, r.stdout, r.stderr)
	}
}

func firstLine(s string) string {
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}
