package sync

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
)

// hookAt returns a prune hook pausing at step.
func hookAt(step string, p *pause) func(string) error {
	return func(s string) error {
		if s == step {
			return p.wait()
		}
		return nil
	}
}

// serial makes a backup's packs the same bytes every time for the same
// tree (one reader, one compressor): the adversarial case, where storing
// a blob again makes the very pack a prune is about to delete.
var serial = BackupOptions{Readers: 1, Compressors: 1, Uploads: 1}

// R2: a backup that starts after the prune marked, at every later step,
// and would deduplicate against condemned blobs, stores them again; the
// prune then deletes what it condemned and the new snapshot is whole.
func TestRaceR2BackupAfterMark(t *testing.T) {
	for _, step := range []string{"marked", "waited", "rewritten", "deleting", "deleted-index"} {
		t.Run(step, func(t *testing.T) {
			raceBackends(t, func(t *testing.T, root storage.Storage) {
				w := newWorld(t, root)
				other := t.TempDir()
				makeSource(t, other, 1, 6)
				w.mustBackup(other, "ws2", serial)
				src := t.TempDir()
				makeSource(t, src, 2, 6)
				w.mustBackup(src, "ws1", serial)
				w.forget("ws1")

				p := newPause()
				pruned := async(func() (*repo.PruneResult, error) {
					return prune(t, root, nil, repo.PruneOptions{Hook: hookAt(step, p)})
				})
				p.await(t)
				res, err := w.backup(nil, src, "ws1", serial)
				must(t, err)
				if res.Snapshot.Stats.NewBlobs == 0 {
					t.Errorf("the backup stored no blob again: it deduplicated against condemned ones")
				}
				p.go_(nil)
				pr, err := pruned()
				must(t, err)
				switch {
				case pr.CondemnedBlobs == 0:
					t.Errorf("prune condemned nothing: nothing raced")
				case step == "marked" || step == "waited":
					// The backup committed before the prune looked at the
					// snapshots written since the mark: it cannot tell this
					// one from one of a backup that began before the mark,
					// and keeps what it reaches (the old copies too).
					if pr.Resurrected == 0 {
						t.Errorf("prune resurrected nothing the new snapshot reaches: %+v", *pr)
					}
				case pr.PacksDeleted == 0:
					t.Errorf("prune deleted no pack: %+v", *pr)
				}
				w.verify()
			})
		})
	}
}

// waitingAfterMark returns a gate function closing waiting once the
// prune, after *marked is set, has looked at the sessions it waits for
// once and begins a second round (its second reading of the storage's
// clock): the running backup was seen running.
func waitingAfterMark(marked *atomic.Bool, waiting chan struct{}) func(op, key string) error {
	var n atomic.Int32
	return func(op, key string) error {
		if op == "put" && strings.HasSuffix(key, "/prune/clock") && marked.Load() && n.Add(1) == 2 {
			close(waiting)
		}
		return nil
	}
}

func awaitChan(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("never: %s", what)
	}
}

// R1: a backup that began (session and index loaded) before the prune
// marked reuses blobs the prune condemned: through the index (the
// content of a forgotten workspace), or through its parent's content
// lists and trees (its parent forgotten meanwhile). It is paused before
// it reads anything, or just before it commits; it commits while the
// prune is paused after the mark, or while the prune waits for it. The
// prune must resurrect what it reused.
func TestRaceR1BackupLoadedBeforeMark(t *testing.T) {
	for _, via := range []string{"index", "parent"} {
		for _, at := range []string{"start", "commit"} {
			for _, order := range []string{"commit-before-wait", "commit-during-wait"} {
				t.Run(via+"/"+at+"/"+order, func(t *testing.T) {
					raceBackends(t, func(t *testing.T, root storage.Storage) {
						testR1(t, root, via, at, order)
					})
				})
			}
		}
	}
}

func testR1(t *testing.T, root storage.Storage, via, at, order string) {
	trustMetadata(t)
	w := newWorld(t, root)
	src := t.TempDir()
	makeSource(t, src, 1, 8)
	w.mustBackup(src, "ws1", serial)
	var reusedBytes int64
	if via == "index" {
		x := t.TempDir()
		makeSource(t, x, 2, 4)
		w.mustBackup(x, "ws2", serial)
		w.forget("ws2")
		makeSource(t, filepath.Join(src, "x"), 2, 4) // the same contents
		for _, e := range snapshotDir(t, x) {
			reusedBytes += e.size
		}
	}
	bp := newPause()
	opts := serial
	if at == "start" {
		opts.AfterStart = bp.wait
	} else {
		opts.BeforeCommit = bp.wait
	}
	backed := async(func() (*BackupResult, error) { return w.backup(nil, src, "ws1", opts) })
	bp.await(t)
	if via == "parent" {
		w.forget("ws1") // the parent's blobs are now referenced by nothing
	}

	pp := newPause()
	var marked atomic.Bool
	listed := make(chan struct{})
	g := newGate(root)
	g.on(waitingAfterMark(&marked, listed))
	pruned := async(func() (*repo.PruneResult, error) {
		return prune(t, root, g, repo.PruneOptions{Hook: func(s string) error {
			if s == "marked" {
				marked.Store(true)
				if order == "commit-before-wait" {
					return pp.wait()
				}
			}
			return nil
		}})
	})
	if order == "commit-before-wait" {
		pp.await(t)
	} else {
		awaitChan(t, listed, "the prune waits for the backup")
	}
	bp.go_(nil)
	res, err := backed()
	must(t, err)
	if order == "commit-before-wait" {
		pp.go_(nil)
	}
	pr, err := pruned()
	must(t, err)
	t.Logf("backup: %+v; prune: %+v", res.Snapshot.Stats, *pr)
	if pr.CondemnedBlobs == 0 || pr.Resurrected == 0 {
		t.Errorf("prune condemned %d blobs and resurrected %d: the backup reused nothing condemned", pr.CondemnedBlobs, pr.Resurrected)
	}
	if order == "commit-during-wait" && pr.SessionsWaited != 1 {
		t.Errorf("prune waited for %d sessions, want 1", pr.SessionsWaited)
	}
	switch via {
	case "parent":
		if res.Snapshot.Stats.UnchangedFiles == 0 {
			t.Errorf("the backup read every file again: it took nothing from its parent")
		}
	case "index":
		if res.Snapshot.Stats.NewBytes >= reusedBytes {
			t.Errorf("the backup stored %d new bytes: it did not deduplicate the %d bytes of the forgotten workspace", res.Snapshot.Stats.NewBytes, reusedBytes)
		}
	}
	w.verify()
}

// R3: the packs of a running backup that no index object names yet (the
// backup is paused at the upload of its index object) survive a prune:
// adopted and condemned at the mark, resurrected by its commit, whether
// it commits before the prune waits or while it waits.
func TestRaceR3PacksInNoIndex(t *testing.T) {
	for _, order := range []string{"commit-before-wait", "commit-during-wait"} {
		t.Run(order, func(t *testing.T) {
			raceBackends(t, func(t *testing.T, root storage.Storage) {
				w := newWorld(t, root)
				old := t.TempDir()
				makeSource(t, old, 1, 6)
				w.mustBackup(old, "ws1", serial)
				src := t.TempDir()
				makeSource(t, src, 3, 10)
				bp := newPause()
				gb := newGate(root)
				gb.on(func(op, key string) error {
					if op == "put" && strings.Contains(key, "/index/") {
						return bp.wait()
					}
					return nil
				})
				backed := async(func() (*BackupResult, error) { return w.backup(gb, src, "ws2", serial) })
				bp.await(t)
				_, packs := storedBytes(t, root, "owner1/data/")
				if packs <= 2 {
					t.Fatalf("%d packs stored: the paused backup stored none", packs)
				}

				pp := newPause()
				var marked atomic.Bool
				listed := make(chan struct{})
				g := newGate(root)
				g.on(waitingAfterMark(&marked, listed))
				pruned := async(func() (*repo.PruneResult, error) {
					return prune(t, root, g, repo.PruneOptions{Hook: func(s string) error {
						if s == "marked" {
							marked.Store(true)
							if order == "commit-before-wait" {
								return pp.wait()
							}
						}
						return nil
					}})
				})
				if order == "commit-before-wait" {
					pp.await(t)
				} else {
					awaitChan(t, listed, "the prune waits for the backup")
				}
				bp.go_(nil)
				_, err := backed()
				must(t, err)
				if order == "commit-before-wait" {
					pp.go_(nil)
				}
				pr, err := pruned()
				must(t, err)
				t.Logf("prune: %+v", *pr)
				if pr.CondemnedBlobs == 0 || pr.Resurrected != pr.CondemnedBlobs {
					t.Errorf("prune condemned %d blobs and resurrected %d: want the running backup's blobs condemned, then all resurrected", pr.CondemnedBlobs, pr.Resurrected)
				}
				w.verify()
			})
		})
	}
}

// R4: a backup paused past its session's lease (cut off from its session
// object, so it cannot renew) is fenced by a prune, which then deletes
// what only it used; resumed, the backup fails with ErrSessionFenced and
// writes no snapshot; the earlier snapshots restore.
func TestRaceR4LapsedSessionFenced(t *testing.T) {
	for _, at := range []string{"start", "commit"} {
		t.Run(at, func(t *testing.T) {
			raceBackends(t, func(t *testing.T, root storage.Storage) {
				trustMetadata(t)
				w := newWorld(t, root)
				keep := t.TempDir()
				makeSource(t, keep, 4, 5)
				w.mustBackup(keep, "ws2", serial)
				src := t.TempDir()
				makeSource(t, src, 1, 8)
				w.mustBackup(src, "ws1", serial)
				makeSource(t, filepath.Join(src, "more"), 5, 3)

				bp := newPause()
				gb := newGate(root)
				pauseCut := func() error {
					gb.on(cutWrites("/sessions/"))
					return bp.wait()
				}
				opts := serial
				opts.SessionLease = 300 * time.Millisecond
				if at == "start" {
					opts.AfterStart = pauseCut
				} else {
					opts.BeforeCommit = pauseCut
				}
				backed := async(func() (*BackupResult, error) { return w.backup(gb, src, "ws1", opts) })
				bp.await(t)
				w.forget("ws1") // what the paused backup reuses is referenced by nothing else

				pr, err := prune(t, root, nil, repo.PruneOptions{})
				must(t, err)
				t.Logf("prune: %+v", *pr)
				if pr.SessionsFenced != 1 || pr.PacksDeleted == 0 {
					t.Errorf("prune fenced %d sessions and deleted %d packs, want 1 and some", pr.SessionsFenced, pr.PacksDeleted)
				}
				gb.on(nil)
				bp.go_(nil)
				res, err := backed()
				if !errors.Is(err, repo.ErrSessionFenced) {
					t.Fatalf("the fenced backup: %v, %+v; want ErrSessionFenced", err, res)
				}
				w.leftovers = true // what it stored until it noticed
				w.verify()
			})
		})
	}
}

// R5a: a second prune while the first holds a valid lease fails with
// ErrPruneRunning and changes nothing; the first finishes.
func TestRaceR5SecondPruneRefused(t *testing.T) {
	raceBackends(t, func(t *testing.T, root storage.Storage) {
		w := newWorld(t, root)
		w.mustBackup(t.TempDir(), "ws2", BackupOptions{})
		for i, step := range []string{"marked", "deleting"} {
			// Something to free for each prune (one with nothing to free
			// does not get to "deleting").
			src := t.TempDir()
			makeSource(t, src, uint64(1+i), 6)
			w.mustBackup(src, "ws1", serial)
			w.forget("ws1")
			p := newPause()
			pruned := async(func() (*repo.PruneResult, error) {
				return prune(t, root, nil, repo.PruneOptions{Hook: hookAt(step, p)})
			})
			p.await(t)
			if res, err := prune(t, root, nil, repo.PruneOptions{}); !errors.Is(err, repo.ErrPruneRunning) {
				t.Errorf("at %s, a second prune: %v, %+v; want ErrPruneRunning", step, err, res)
			}
			p.go_(nil)
			_, err := pruned()
			must(t, err)
		}
		w.verify()
	})
}

// R5b: a prune whose lease lapsed while it was paused at a step (cut off
// from the prune state, so it cannot renew) is taken over by another
// prune, which finishes its generation; then a backup stores again,
// in the very packs the first one deleted or was to delete (no prune
// stands: nothing is salted), what the first prune's generation
// condemned. Resumed, the stale prune fails with ErrPruneFenced and
// deletes nothing.
func TestRaceR5StalePruneTakenOver(t *testing.T) {
	for _, step := range []string{"marked", "waited", "rewritten", "deleting", "deleted-index"} {
		t.Run(step, func(t *testing.T) {
			raceBackends(t, func(t *testing.T, root storage.Storage) {
				w := newWorld(t, root)
				keep := t.TempDir()
				makeSource(t, keep, 4, 5)
				w.mustBackup(keep, "ws2", serial)
				src := t.TempDir()
				makeSource(t, src, 1, 6)
				w.mustBackup(src, "ws1", serial)
				w.forget("ws1")

				p := newPause()
				g1 := newGate(root)
				pruned := async(func() (*repo.PruneResult, error) {
					return prune(t, root, g1, repo.PruneOptions{Lease: 300 * time.Millisecond, Hook: func(s string) error {
						if s == step {
							g1.on(cutWrites("/prune/state"))
						}
						return hookAt(step, p)(s)
					}})
				})
				p.await(t)
				pr2, err := prune(t, root, nil, repo.PruneOptions{WaitRunning: true})
				must(t, err)
				if pr2.PacksDeleted == 0 {
					t.Errorf("the prune that took over deleted nothing: %+v", *pr2)
				}
				w.mustBackup(src, "ws1", serial)

				g1.on(nil)
				p.go_(nil)
				pr1, err := pruned()
				if !errors.Is(err, repo.ErrPruneFenced) {
					t.Errorf("the stale prune: %v, %+v; want ErrPruneFenced", err, pr1)
				}
				w.verify()
			})
		})
	}
}

// R6: a prune that crashes at each step; a backup runs in the state it
// left (storing again what it condemned); the next prune takes over once
// its lease lapsed, resumes or starts over; the repository stays whole
// and everything unreferenced is freed.
func TestRaceR6PruneCrashes(t *testing.T) {
	for _, step := range []string{"marked", "waited", "rewritten", "deleting", "deleted-index", "deleted-packs"} {
		t.Run(step, func(t *testing.T) {
			raceBackends(t, func(t *testing.T, root storage.Storage) {
				w := newWorld(t, root)
				keep := t.TempDir()
				makeSource(t, keep, 4, 5)
				w.mustBackup(keep, "ws2", serial)
				src := t.TempDir()
				makeSource(t, src, 1, 6)
				w.mustBackup(src, "ws1", serial)
				w.forget("ws1")
				crash := errors.New("crash")
				_, err := prune(t, root, nil, repo.PruneOptions{Lease: 300 * time.Millisecond, Hook: func(s string) error {
					if s == step {
						return crash
					}
					return nil
				}})
				if !errors.Is(err, crash) {
					t.Fatalf("the crashing prune: %v", err)
				}
				w.mustBackup(src, "ws1", serial)
				restoreEqual(t, root, src)
				pr, err := prune(t, root, nil, repo.PruneOptions{WaitRunning: true})
				must(t, err)
				t.Logf("the next prune: %+v", *pr)
				if resumed := step == "deleting" || step == "deleted-index" || step == "deleted-packs"; pr.Resumed != resumed {
					t.Errorf("the next prune resumed: %v, want %v", pr.Resumed, resumed)
				}
				w.verify()
			})
		})
	}
}

// R5c: on a storage whose clock has whole seconds (S3's Last-Modified),
// a prune renewed a tenth of a second ago must not be taken over: its
// state's time reads up to a second early. The first prune renewed at
// 1000.95 (read as 1000), the second looks at 1001.0, with a lease of
// 0.9 s; the first is cut off from its state meanwhile (so no renewal
// hides the race), and goes on afterwards.
func TestRaceR5CoarseStorageClock(t *testing.T) {
	raceBackends(t, func(t *testing.T, root storage.Storage) {
		w := newWorld(t, root)
		src := t.TempDir()
		makeSource(t, src, 1, 6)
		w.mustBackup(src, "ws1", serial)
		w.forget("ws1")
		w.mustBackup(t.TempDir(), "ws2", serial)

		clock := newCoarseClock(root, time.Unix(1000, 950e6))
		g1 := newGate(clock)
		p := newPause()
		pruned := async(func() (*repo.PruneResult, error) {
			return prune(t, g1, nil, repo.PruneOptions{Lease: 900 * time.Millisecond, Hook: func(s string) error {
				if s == "marked" {
					g1.on(cutWrites("/prune/state"))
					return p.wait()
				}
				return nil
			}})
		})
		p.await(t)
		clock.set(time.Unix(1001, 0))
		if res, err := prune(t, clock, nil, repo.PruneOptions{}); !errors.Is(err, repo.ErrPruneRunning) {
			t.Errorf("a prune 0.05 s after the first one's renewal: %v, %+v; want ErrPruneRunning", err, res)
		}
		g1.on(nil)
		p.go_(nil)
		_, err := pruned()
		must(t, err)
		w.verify()
	})
}

// R1b: a backup whose repository loaded the index before a prune (or
// while it was deleting), whose session begins only after that prune
// ended: the prune never saw the session, and no prune condemns anything
// any more, yet the index it loaded names what the prune deleted. The
// backup must not deduplicate against it.
func TestRaceR1IndexOlderThanSession(t *testing.T) {
	for _, loadAt := range []string{"before-prune", "deleting"} {
		t.Run(loadAt, func(t *testing.T) {
			raceBackends(t, func(t *testing.T, root storage.Storage) {
				ctx := context.Background()
				w := newWorld(t, root)
				keep := t.TempDir()
				makeSource(t, keep, 4, 5)
				w.mustBackup(keep, "ws2", serial)
				src := t.TempDir()
				makeSource(t, src, 1, 6)
				w.mustBackup(src, "ws1", serial)
				w.forget("ws1")

				var r *repo.Repository
				if loadAt == "before-prune" {
					r = ownerRepo(t, root)
					_, err := prune(t, root, nil, repo.PruneOptions{})
					must(t, err)
				} else {
					p := newPause()
					pruned := async(func() (*repo.PruneResult, error) {
						return prune(t, root, nil, repo.PruneOptions{Hook: hookAt("deleting", p)})
					})
					p.await(t)
					r = ownerRepo(t, root)
					p.go_(nil)
					_, err := pruned()
					must(t, err)
				}
				contents := snapshotDir(t, src)
				res, err := Backup(ctx, r, src, BackupOptions{Owner: "owner1", Workspace: "ws1", Readers: 1, Compressors: 1})
				must(t, err)
				w.want[res.SnapshotID] = contents
				if res.Snapshot.Stats.NewBlobs == 0 {
					t.Errorf("the backup stored nothing: it deduplicated against what the prune deleted")
				}
				w.verify()
			})
		})
	}
}

// R2b: two backups through one Repository (as a process serving several
// workspaces of an owner might): the first began while a prune stood and
// avoids what it condemned; the prune ends and deletes it; the second
// begins, finds the state changed and loads the index again; while it
// does, the first goes on. It must still avoid the condemned blobs (the
// index it sees is the old one until the reload is done).
func TestRaceR2SharedRepository(t *testing.T) {
	raceBackends(t, func(t *testing.T, root storage.Storage) {
		ctx := context.Background()
		w := newWorld(t, root)
		keep := t.TempDir()
		makeSource(t, keep, 4, 5)
		w.mustBackup(keep, "ws2", serial)
		src := t.TempDir()
		makeSource(t, src, 1, 6)
		w.mustBackup(src, "ws1", serial)
		w.forget("ws1")

		pp := newPause()
		pruned := async(func() (*repo.PruneResult, error) {
			return prune(t, root, nil, repo.PruneOptions{Hook: hookAt("waited", pp)})
		})
		pp.await(t)
		g := newGate(root)
		r := ownerRepo(t, g)
		p2 := newPause()
		backup := func(dir, ws string, opts BackupOptions) func() (*BackupResult, error) {
			contents := snapshotDir(t, dir)
			return async(func() (*BackupResult, error) {
				opts.Owner, opts.Workspace, opts.Readers, opts.Compressors = "owner1", ws, 1, 1
				res, err := Backup(ctx, r, dir, opts)
				if err == nil {
					w.mu.Lock()
					w.want[res.SnapshotID] = contents
					w.mu.Unlock()
				}
				return res, err
			})
		}
		b2 := backup(src, "ws1", BackupOptions{AfterStart: p2.wait})
		p2.await(t)
		pp.go_(nil)
		_, err := pruned()
		must(t, err)

		p3 := newPause()
		g.on(func(op, key string) error {
			if op == "list" && strings.HasSuffix(key, "/index/") {
				return p3.wait()
			}
			return nil
		})
		other := t.TempDir()
		makeSource(t, other, 6, 3)
		b3 := backup(other, "ws3", BackupOptions{})
		p3.await(t)
		p2.go_(nil)
		res2, err := b2()
		must(t, err)
		if res2.Snapshot.Stats.NewBlobs == 0 {
			t.Errorf("the first backup stored nothing: it deduplicated against what the prune deleted")
		}
		p3.go_(nil)
		_, err = b3()
		must(t, err)
		w.verify()
	})
}

// R2c: a backup reads the prune state (deleting, with a condemned list),
// then the prune ends and deletes the list before the backup reads it:
// the backup reads the state again, it does not fail.
func TestRaceR2CondemnedListGone(t *testing.T) {
	raceBackends(t, func(t *testing.T, root storage.Storage) {
		w := newWorld(t, root)
		src := t.TempDir()
		makeSource(t, src, 1, 6)
		w.mustBackup(src, "ws1", serial)
		w.forget("ws1")
		pp := newPause()
		pruned := async(func() (*repo.PruneResult, error) {
			return prune(t, root, nil, repo.PruneOptions{Hook: hookAt("deleting", pp)})
		})
		pp.await(t)
		g := newGate(root)
		pb := newPause()
		g.on(func(op, key string) error {
			if op == "get" && strings.Contains(key, "-condemned-") {
				return pb.wait()
			}
			return nil
		})
		backed := async(func() (*BackupResult, error) { return w.backup(g, src, "ws1", serial) })
		pb.await(t)
		pp.go_(nil)
		_, err := pruned()
		must(t, err)
		pb.go_(nil)
		_, err = backed()
		must(t, err)
		w.verify()
	})
}
