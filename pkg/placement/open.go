package placement

import (
	"context"
	"errors"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/location"
)

// Open opens the storage and placement that cfg describes. With create
// (a command that writes: a backup, init, the daemon), a missing storage
// root is created where the config allows it (location.OpenRoot). Without
// create nothing is created: a root that a backup would create but that
// does not exist yet holds no backups, so Owner answers NoBackupsError and
// Owners lists none.
func Open(ctx context.Context, cfg location.Config, create bool) (*Placement, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Placement == location.BucketPerOwner {
		return NewBucketPerOwner(cfg.BucketTemplate, func(ctx context.Context, bucket string, create bool) (storage.Storage, error) {
			return location.OpenBucket(ctx, cfg, bucket, create)
		})
	}
	root, err := location.OpenRoot(ctx, cfg, create)
	if err != nil {
		if !create && errors.Is(err, storage.ErrNoBucket) && cfg.CreatesRoot() {
			return &Placement{empty: true}, nil
		}
		return nil, err
	}
	return NewPrefixPerOwner(root), nil
}
