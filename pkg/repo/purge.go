package repo

import (
	"context"
	"errors"
	"fmt"
	"time"

	gosync "sync"

	"golang.org/x/sync/errgroup"

	"github.com/backupd/backupd/internal/ctxsleep"
	"github.com/backupd/backupd/pkg/storage"
)

// PurgeOptions configure PurgeOwner.
type PurgeOptions struct {
	// Settle is how long PurgeOwner waits, after fencing running backups
	// and deleting everything, before it deletes again what they wrote
	// until they noticed (a fenced backup stops at its next renewal, a
	// fifth of its lease: DefaultLease/5 + 10 s if 0). Only when it fenced
	// any.
	Settle time.Duration
	// Parallel deletions (8 if 0).
	Parallel int
	// Log, if set, receives a line per step.
	Log func(string)
}

// PurgeOwner deletes every object of an owner's repository: st is the
// owner's storage (the owner's prefix, or the owner's bucket under
// bucket-per-owner), which is left empty. Running backups of the owner
// are fenced first, so that none commits: they fail with ErrSessionFenced.
// It works whether or not a repository is there (an owner with nothing
// stored gives an empty receipt), and may be repeated. It never deletes a
// bucket (the minimal IAM policy has no s3:DeleteBucket): an emptied
// bucket-per-owner bucket is for the operator to remove.
func PurgeOwner(ctx context.Context, st storage.Storage, opts PurgeOptions) (Receipt, error) {
	start := time.Now()
	if opts.Parallel <= 0 {
		opts.Parallel = 8
	}
	if opts.Settle <= 0 {
		opts.Settle = DefaultLease/5 + 10*time.Second
	}
	log := func(format string, args ...any) {
		if opts.Log != nil {
			opts.Log(fmt.Sprintf(format, args...))
		}
	}
	var rec Receipt
	fenced, err := fenceSessions(ctx, st)
	if err != nil {
		return rec, err
	}
	if fenced > 0 {
		log("fenced %d running backups", fenced)
	}
	if err := deleteAll(ctx, st, opts.Parallel, &rec); err != nil {
		return rec, err
	}
	// What appeared meanwhile: backups the fence caught, which stop at
	// their next renewal, and backups that began after the sessions were
	// listed. Until a listing is empty, a few rounds.
	for round := 0; ; round++ {
		left := 0
		if err := st.List(ctx, "", func(storage.ObjectInfo) error { left++; return nil }); err != nil {
			return rec, fmt.Errorf("purge: list: %w", err)
		}
		if left == 0 && (fenced == 0 || round > 0) {
			break
		}
		if round == 3 {
			return rec, fmt.Errorf("purge: %d objects of the owner keep appearing (backups still running for it): stop them and purge again", left)
		}
		log("waiting %s for fenced or new backups to stop (%d objects appeared)", opts.Settle, left)
		if !ctxsleep.Sleep(ctx, opts.Settle) {
			return rec, ctx.Err()
		}
		n, err := fenceSessions(ctx, st)
		if err != nil {
			return rec, err
		}
		fenced += n
		if err := deleteAll(ctx, st, opts.Parallel, &rec); err != nil {
			return rec, err
		}
	}
	rec.Duration = time.Since(start)
	return rec, nil
}

// fenceSessions fences every running session under st and returns how
// many it fenced.
func fenceSessions(ctx context.Context, st storage.Storage) (int, error) {
	keys, err := listSessions(ctx, st)
	if err != nil {
		return 0, fmt.Errorf("purge: %w", err)
	}
	n := 0
	for _, k := range keys {
		for try := 0; ; try++ {
			b, oi, err := storage.ReadVersioned(ctx, st, k, MaxSessionSize)
			if errors.Is(err, storage.ErrNotFound) {
				break
			}
			if err != nil {
				return n, fmt.Errorf("purge: read %s: %w", k, err)
			}
			if rec, err := decodeSession(b); err == nil && rec.State == sessionFenced {
				break
			}
			err = fenceSession(ctx, st, k, oi.Version)
			if err == nil {
				n++
				break
			}
			if !errors.Is(err, storage.ErrVersionMismatch) || try >= 10 {
				return n, fmt.Errorf("purge: fence %s: %w", k, err)
			}
			// Renewed meanwhile: read it again.
		}
	}
	return n, nil
}

// deleteAll deletes every object under st, counting them in rec.
func deleteAll(ctx context.Context, st storage.Storage, parallel int, rec *Receipt) error {
	var objs []storage.ObjectInfo
	if err := st.List(ctx, "", func(oi storage.ObjectInfo) error {
		objs = append(objs, oi)
		return nil
	}); err != nil {
		return fmt.Errorf("purge: list: %w", err)
	}
	// The config last, so that an interrupted purge leaves a repository
	// that opens (and a repeated purge finishes it).
	var config *storage.ObjectInfo
	var mu gosync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	for _, oi := range objs {
		if oi.Key == configKey {
			config = &oi
			continue
		}
		g.Go(func() error {
			if err := st.Delete(gctx, oi.Key); err != nil {
				return fmt.Errorf("purge: delete %s: %w", oi.Key, err)
			}
			mu.Lock()
			rec.Objects++
			rec.Bytes += oi.Size
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if config != nil {
		if err := st.Delete(ctx, configKey); err != nil {
			return fmt.Errorf("purge: delete %s: %w", configKey, err)
		}
		rec.Objects++
		rec.Bytes += config.Size
	}
	return nil
}
