// Package prefix scopes a storage.Storage to the keys under one prefix, so
// that several users (owners, tests) can share one storage root without
// seeing each other's objects.
package prefix

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/backupd/backupd/pkg/storage"
)

// Storage is a storage.Storage whose keys are those of the wrapped storage
// under one prefix, with the prefix removed.
type Storage struct {
	inner  storage.Storage
	prefix string // the validated prefix plus "/"
}

var _ storage.Storage = (*Storage)(nil)

// New returns a view of s in which key k is the key prefix+"/"+k of s.
// prefix must be a valid key (see storage.ValidateKey), such as "owner1"
// or "org/owner1".
func New(s storage.Storage, prefix string) (storage.Storage, error) {
	if err := storage.ValidateKey(prefix); err != nil {
		return nil, fmt.Errorf("prefix: %w", err)
	}
	return &Storage{inner: s, prefix: prefix + "/"}, nil
}

// Prefix returns the prefix that s adds to keys, without the final slash.
func (s *Storage) Prefix() string { return strings.TrimSuffix(s.prefix, "/") }

// full validates key and returns the wrapped storage's key for it.
func (s *Storage) full(key string) (string, error) {
	if err := storage.ValidateKey(key); err != nil {
		return "", err
	}
	return s.prefix + key, nil
}

// Put stores size bytes read from body under key.
func (s *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	k, err := s.full(key)
	if err != nil {
		return err
	}
	return s.inner.Put(ctx, k, body, size)
}

// PutIfAbsent stores size bytes read from body under key if no object is
// there.
func (s *Storage) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	k, err := s.full(key)
	if err != nil {
		return err
	}
	return s.inner.PutIfAbsent(ctx, k, body, size)
}

// PutIfMatch stores size bytes read from body under key if the object
// there has the version given, and returns the new version.
func (s *Storage) PutIfMatch(ctx context.Context, key string, body io.ReadSeeker, size int64, version string) (string, error) {
	k, err := s.full(key)
	if err != nil {
		return "", err
	}
	return s.inner.PutIfMatch(ctx, k, body, size, version)
}

// GetWithInfo opens the whole object at key; the key it reports is
// without the prefix.
func (s *Storage) GetWithInfo(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	k, err := s.full(key)
	if err != nil {
		return nil, storage.ObjectInfo{}, err
	}
	rc, oi, err := s.inner.GetWithInfo(ctx, k)
	if err != nil {
		return nil, storage.ObjectInfo{}, err
	}
	oi.Key = key
	return rc, oi, nil
}

// CleanUploads removes what dead uploads under the prefix and prefix left
// behind: it cleans the wrapped storage under the prefix plus prefix, so
// it never touches another prefix's uploads.
func (s *Storage) CleanUploads(ctx context.Context, prefix string, before time.Time) (int, error) {
	return s.inner.CleanUploads(ctx, s.prefix+prefix, before)
}

// Get opens the byte range [offset, offset+length) of the object at key.
func (s *Storage) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	k, err := s.full(key)
	if err != nil {
		return nil, err
	}
	return s.inner.Get(ctx, k, offset, length)
}

// Stat describes the object at key; the key it reports is without the
// prefix.
func (s *Storage) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	k, err := s.full(key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	oi, err := s.inner.Stat(ctx, k)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	oi.Key = key
	return oi, nil
}

// List calls fn for every object under the prefix whose key (without the
// prefix) starts with prefix.
func (s *Storage) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	return s.inner.List(ctx, s.prefix+prefix, func(oi storage.ObjectInfo) error {
		key, ok := strings.CutPrefix(oi.Key, s.prefix)
		if !ok {
			// A broken backend: never show another prefix's objects.
			return fmt.Errorf("prefix: list %q: wrapped storage returned key %q outside %q", prefix, oi.Key, s.prefix)
		}
		oi.Key = key
		return fn(oi)
	})
}

// Delete removes the object at key; a missing object is not an error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	k, err := s.full(key)
	if err != nil {
		return err
	}
	return s.inner.Delete(ctx, k)
}

// Close does nothing: the wrapped storage is shared and belongs to
// whoever created it, who closes it.
func (s *Storage) Close() error { return nil }
