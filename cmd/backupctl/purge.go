package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/backupd/backupd/internal/usage"

	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/location"
	"github.com/backupd/backupd/pkg/storage/minio"
	"github.com/backupd/backupd/pkg/storage/s3"
)

func newPurgeCmd() *cobra.Command {
	var (
		f   repoFlags
		yes bool
	)
	cmd := &cobra.Command{
		Use:   "purge -r REPO --owner O --yes [--json]",
		Short: "Delete everything of an owner: every snapshot, all data, the repository",
		Long: `Delete every object of owner O's repository: its snapshots, packs,
index, sessions, prune state and config. Nothing of the owner is left in
the storage, and nothing can be restored afterwards. Running backups of the
owner are fenced first, so that none of them commits a snapshot; they fail.
The owner's part of the node-local cache (--cache-dir) is removed too.

Under bucket-per-owner placement the owner's bucket is left empty but not
removed: removing it needs s3:DeleteBucket (or the like), which backupd's
minimal policy does not grant; that is for the operator.

Without --yes, purge only says what it would delete. Purging an owner with
nothing stored, or purging again, is not an error.`,
		Args: usage.Args(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := repo.ValidateName("owner", f.owner); err != nil {
				return err
			}
			cfg, err := f.storageConfigFromFlags()
			if err != nil {
				return err
			}
			bucket := ""
			where := fmt.Sprintf("every object under %s/ in %s", f.owner, location.Redact(cfg.URL))
			if cfg.Placement == location.BucketPerOwner {
				p, err := placement.NewBucketPerOwner(cfg.BucketTemplate, nil)
				if err != nil {
					return err
				}
				bucket = p.Bucket(f.owner)
				where = fmt.Sprintf("every object in bucket %s", bucket)
			}
			if !yes {
				return usageError{Err: fmt.Errorf("purge would delete %s: all of owner %s's snapshots and data, for good; add --yes to do it", where, f.owner)}
			}
			ctx := cmd.Context()
			p, err := f.openPlacement(ctx, false)
			if err != nil {
				return err
			}
			defer p.Close()
			logf := func(format string, args ...any) {
				if !f.json {
					fmt.Fprintf(os.Stderr, "purge: "+format+"\n", args...)
				}
			}
			st, err := p.Owner(ctx, f.owner, false)
			if bucket != "" && noBucket(err) {
				// No bucket: nothing of the owner is stored.
				return printPurge(&f, purgeReceipt{bucket: bucket, noBucket: true})
			}
			if errors.Is(err, repo.ErrNoRepository) {
				return printPurge(&f, purgeReceipt{}) // no storage root yet: nothing stored
			}
			if err != nil {
				return err
			}
			defer st.Close()
			// The cache is kept per repository config id: read it before
			// the config goes.
			var cacheDir string
			if base := f.cacheDirectory(); base != "" {
				r, err := repo.Open(ctx, st)
				switch {
				case err == nil:
					cacheDir = filepath.Join(base, r.Config().ID)
				case errors.Is(err, repo.ErrNoRepository):
				default:
					fmt.Fprintf(os.Stderr, "purge: warning: %v; the node-local cache, if any, is left\n", err)
				}
			}
			opts := repo.PurgeOptions{Log: func(line string) { logf("%s", line) }}
			rec, err := repo.PurgeOwner(ctx, st, opts)
			if err != nil {
				return fmt.Errorf("owner %s: %w (nothing is restorable any more; run purge again to finish)", f.owner, err)
			}
			// What is left: nothing, unless a backup started meanwhile.
			left := 0
			if err := st.List(ctx, "", func(storage.ObjectInfo) error { left++; return nil }); err != nil {
				return fmt.Errorf("owner %s: purged, but listing what is left: %w", f.owner, err)
			}
			if cacheDir != "" {
				if err := os.RemoveAll(cacheDir); err != nil {
					fmt.Fprintf(os.Stderr, "purge: warning: removing the node-local cache %s: %v\n", cacheDir, err)
					cacheDir = ""
				}
			}
			if err := printPurge(&f, purgeReceipt{rec: rec, bucket: bucket, cacheDir: cacheDir, left: left}); err != nil {
				return err
			}
			if left > 0 {
				return fmt.Errorf("owner %s: %s appeared while purging (a backup started meanwhile?); run purge again", f.owner, plural(int64(left), "object"))
			}
			return nil
		},
	}
	f.register(cmd, true)
	f.registerJSON(cmd)
	cmd.Flags().BoolVar(&yes, "yes", false, "really delete everything of the owner")
	return cmd
}

// noBucket reports whether opening an owner's bucket failed because the
// bucket does not exist. The backends say so differently: placement maps
// storage.ErrNotFound to repo.ErrNoRepository; s3 and minio have their
// own ErrNoBucket.
func noBucket(err error) bool {
	return errors.Is(err, repo.ErrNoRepository) || errors.Is(err, storage.ErrNotFound) ||
		errors.Is(err, s3.ErrNoBucket) || errors.Is(err, minio.ErrNoBucket)
}

// purgeReceipt is what a purge did: rec, and the node-local cache
// directory it removed (cacheDir), the objects left after it (none, unless
// a backup started meanwhile); under bucket-per-owner the owner's bucket
// and whether it was missing (nothing to purge).
type purgeReceipt struct {
	rec      repo.Receipt
	cacheDir string
	left     int
	bucket   string
	noBucket bool
}

// printPurge prints a purge's receipt.
func printPurge(f *repoFlags, p purgeReceipt) error {
	if f.json {
		out := map[string]any{"owner": f.owner, "objects_deleted": p.rec.Objects, "bytes_deleted": p.rec.Bytes,
			"duration_ms": p.rec.Duration.Milliseconds(), "objects_left": p.left, "cache_removed": p.cacheDir}
		if p.bucket != "" {
			out["bucket"] = p.bucket
			out["bucket_exists"] = !p.noBucket
			out["bucket_empty"] = !p.noBucket && p.left == 0
		}
		return json.NewEncoder(os.Stdout).Encode(out)
	}
	if p.noBucket {
		fmt.Printf("owner %s has nothing to purge: bucket %s does not exist\n", f.owner, p.bucket)
		return nil
	}
	fmt.Printf("purged owner %s: deleted %s (%s) in %.1fs\n", f.owner, plural(int64(p.rec.Objects), "object"), fmtBytes(p.rec.Bytes), p.rec.Duration.Seconds())
	if p.cacheDir != "" {
		fmt.Printf("removed the node-local cache %s\n", p.cacheDir)
	}
	if p.bucket != "" && p.left == 0 {
		fmt.Printf("bucket %s is now empty; removing the bucket is for the operator (backupd's policy has no s3:DeleteBucket)\n", p.bucket)
	}
	return nil
}
