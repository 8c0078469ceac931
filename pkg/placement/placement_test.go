package placement

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/mem"
)

func TestPrefixPerOwnerIsolatesOwners(t *testing.T) {
	ctx := context.Background()
	root := mem.New()
	p := NewPrefixPerOwner(root)
	a, _ := p.Owner(ctx, "alice", true)
	b, _ := p.Owner(ctx, "bob", true)
	a.Put(ctx, "config", bytes.NewReader([]byte("a")), 1)
	if _, err := b.Stat(ctx, "config"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("bob sees alice's object: %v", err)
	}
	if _, err := root.Stat(ctx, "alice/config"); err != nil {
		t.Fatalf("alice's object not under alice/: %v", err)
	}
	owners, err := p.Owners(ctx)
	if err != nil || len(owners) != 1 || owners[0] != "alice" {
		t.Fatalf("owners = %v, %v", owners, err)
	}
	if _, err := p.Owner(ctx, "../bob", true); err == nil {
		t.Fatal("owner with a path accepted")
	}
}

func TestBucketPerOwner(t *testing.T) {
	ctx := context.Background()
	buckets := map[string]storage.Storage{}
	open := func(_ context.Context, bucket string, create bool) (storage.Storage, error) {
		if st, ok := buckets[bucket]; ok {
			return st, nil
		}
		if !create {
			return nil, fmt.Errorf("bucket %s: %w", bucket, storage.ErrNotFound)
		}
		buckets[bucket] = mem.New()
		return buckets[bucket], nil
	}
	if _, err := NewBucketPerOwner("backupd-static", open); err == nil {
		t.Fatal("template without {owner} accepted")
	}
	p, err := NewBucketPerOwner("backupd-{owner}", open)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Owner(ctx, "Alice", false); !errors.Is(err, repo.ErrNoRepository) {
		t.Fatalf("missing bucket without create: %v", err)
	}
	if _, err := p.Owner(ctx, "Alice", true); err != nil {
		t.Fatal(err)
	}
	if _, ok := buckets["backupd-alice"]; !ok {
		t.Fatalf("buckets = %v", buckets)
	}
	if _, err := p.Owners(ctx); err == nil {
		t.Fatal("Owners should refuse in bucket-per-owner mode")
	}
}
