package placement

import (
	"context"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/location"
)

// Open opens the storage and placement that cfg describes.
func Open(ctx context.Context, cfg location.Config) (*Placement, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Placement == location.BucketPerOwner {
		return NewBucketPerOwner(cfg.BucketTemplate, func(ctx context.Context, bucket string, create bool) (storage.Storage, error) {
			return location.OpenBucket(ctx, cfg, bucket, create)
		})
	}
	root, err := location.OpenRoot(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return NewPrefixPerOwner(root), nil
}
