// Package placement decides where each owner's repository lives: under a
// per-owner prefix of one storage root (prefix-per-owner, the default; one
// existing bucket and a restricted user suffice), or in a bucket of its own
// named from a template and created on first use (bucket-per-owner, which
// needs bucket-admin rights). Owners never share a repository, so
// deduplication never crosses owners.
package placement

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/prefix"
)

// Modes of placement.
const (
	PrefixPerOwner = "prefix-per-owner"
	BucketPerOwner = "bucket-per-owner"
)

// OpenBucket opens a bucket (container) by name; with create, a missing
// bucket is created private, otherwise it is an error wrapping
// storage.ErrNotFound.
type OpenBucket func(ctx context.Context, bucket string, create bool) (storage.Storage, error)

// Placement hands out each owner's storage.
type Placement struct {
	root     storage.Storage // prefix-per-owner
	open     OpenBucket      // bucket-per-owner
	template string
	empty    bool // a root not created yet: no owner has a repository
}

// NoBackupsError says that an owner has no repository: nothing was ever
// backed up for it (or it was purged). It is repo.ErrNoRepository.
type NoBackupsError struct {
	Owner string
	// Bucket is the owner's missing bucket under bucket-per-owner
	// placement, else "".
	Bucket string
}

func (e *NoBackupsError) Error() string {
	if e.Bucket != "" {
		return fmt.Sprintf("no backups for owner %s (no bucket %s)", e.Owner, e.Bucket)
	}
	return "no backups for owner " + e.Owner
}

// Unwrap makes the error repo.ErrNoRepository.
func (e *NoBackupsError) Unwrap() error { return repo.ErrNoRepository }

// NoBackups turns err into a NoBackupsError for owner when it says that
// the owner has no repository (repo.ErrNoRepository), and returns it
// unchanged otherwise.
func NoBackups(owner string, err error) error {
	var nb *NoBackupsError
	if errors.As(err, &nb) || !errors.Is(err, repo.ErrNoRepository) {
		return err
	}
	return &NoBackupsError{Owner: owner}
}

// NewPrefixPerOwner places owner O's repository at O/ under root.
func NewPrefixPerOwner(root storage.Storage) *Placement { return &Placement{root: root} }

// NewBucketPerOwner places owner O's repository in the bucket named by
// template with "{owner}" replaced by O, lower-cased.
func NewBucketPerOwner(template string, open OpenBucket) (*Placement, error) {
	if err := ValidateTemplate(template); err != nil {
		return nil, err
	}
	return &Placement{open: open, template: template}, nil
}

// ValidateTemplate checks a bucket name template.
func ValidateTemplate(template string) error {
	if !strings.Contains(template, "{owner}") {
		return fmt.Errorf("bucket_template %q must contain {owner}", template)
	}
	return nil
}

// Bucket returns owner's bucket name in bucket-per-owner mode.
func (p *Placement) Bucket(owner string) string {
	return strings.ToLower(strings.ReplaceAll(p.template, "{owner}", owner))
}

// Owner returns owner's storage. With create (a backup), a missing
// bucket is created in bucket-per-owner mode; without, the repository
// must exist.
func (p *Placement) Owner(ctx context.Context, owner string, create bool) (storage.Storage, error) {
	if err := repo.ValidateName("owner", owner); err != nil {
		return nil, err
	}
	if p.empty {
		return nil, &NoBackupsError{Owner: owner}
	}
	if p.root != nil {
		st, err := prefix.New(p.root, owner)
		if err != nil {
			return nil, fmt.Errorf("owner %s: %w", owner, err)
		}
		return st, nil
	}
	st, err := p.open(ctx, p.Bucket(owner), create)
	if (errors.Is(err, storage.ErrNotFound) || errors.Is(err, storage.ErrNoBucket)) && !create {
		return nil, &NoBackupsError{Owner: owner, Bucket: p.Bucket(owner)}
	}
	if err != nil {
		return nil, fmt.Errorf("owner %s: %w", owner, err) // the backend's error names the bucket
	}
	return st, nil
}

// OpenSnapshots opens owner's repository for its snapshot objects alone,
// without its index: listing and deleting snapshots need none, so they
// neither load it (time and memory in a large repository) nor fail on a
// damaged index object. An owner with no repository is a NoBackupsError.
func (p *Placement) OpenSnapshots(ctx context.Context, owner string) (*repo.Repository, error) {
	st, err := p.Owner(ctx, owner, false)
	if err != nil {
		return nil, err
	}
	r, err := repo.Open(ctx, st)
	if errors.Is(err, repo.ErrNoRepository) {
		return nil, NoBackups(owner, err)
	}
	if err != nil {
		return nil, fmt.Errorf("owner %s: %w", owner, err)
	}
	return r, nil
}

// Owners lists the owners that have a repository. In prefix-per-owner mode
// this lists every key under the root, so it is for inspection only; in
// bucket-per-owner mode it is not supported (it would need the right to
// list all buckets, which backupd does not ask for).
func (p *Placement) Owners(ctx context.Context) ([]string, error) {
	if p.empty {
		return nil, nil
	}
	if p.root == nil {
		return nil, errors.New("listing owners is not supported with bucket-per-owner placement; name the owner with --owner")
	}
	return repo.ListOwners(ctx, p.root)
}

// Close closes the root storage (prefix-per-owner); bucket storages are
// closed by whoever opened them.
func (p *Placement) Close() error {
	if p.root != nil {
		return p.root.Close()
	}
	return nil
}
