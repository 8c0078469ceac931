// Package limit wraps a storage.Storage to bound how many transfers run at
// once: uploads (Put, PutIfAbsent, PutIfMatch) and downloads (Get and
// GetWithInfo, until the reader is closed) have separate limits; metadata
// calls (Stat, List, Delete, CleanUploads) share a third.
package limit

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/backupd/backupd/pkg/storage"
)

// Options sets the limits; each must be at least 1.
type Options struct {
	Uploads, Downloads, Metadata int
}

// Validate checks the limits.
func (o Options) Validate() error {
	if o.Uploads < 1 || o.Downloads < 1 || o.Metadata < 1 {
		return fmt.Errorf("limit: uploads %d, downloads %d, metadata %d: each must be at least 1", o.Uploads, o.Downloads, o.Metadata)
	}
	return nil
}

// Storage is a concurrency-limiting wrapper.
type Storage struct {
	s                  storage.Storage
	up, down, metadata chan struct{}
}

// New wraps s; it panics on invalid options (validate user input first).
func New(s storage.Storage, o Options) *Storage {
	if err := o.Validate(); err != nil {
		panic(err)
	}
	return &Storage{s: s, up: make(chan struct{}, o.Uploads), down: make(chan struct{}, o.Downloads), metadata: make(chan struct{}, o.Metadata)}
}

func acquire(ctx context.Context, sem chan struct{}) error {
	select {
	case sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Put implements storage.Storage.
func (l *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if err := acquire(ctx, l.up); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	defer func() { <-l.up }()
	return l.s.Put(ctx, key, body, size)
}

// PutIfAbsent implements storage.Storage; it takes an upload slot.
func (l *Storage) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if err := acquire(ctx, l.up); err != nil {
		return fmt.Errorf("put-if-absent %s: %w", key, err)
	}
	defer func() { <-l.up }()
	return l.s.PutIfAbsent(ctx, key, body, size)
}

// PutIfMatch implements storage.Storage; it takes an upload slot.
func (l *Storage) PutIfMatch(ctx context.Context, key string, body io.ReadSeeker, size int64, version string) (string, error) {
	if err := acquire(ctx, l.up); err != nil {
		return "", fmt.Errorf("put-if-match %s: %w", key, err)
	}
	defer func() { <-l.up }()
	return l.s.PutIfMatch(ctx, key, body, size, version)
}

// GetWithInfo implements storage.Storage; it takes a download slot, held
// until the reader is closed.
func (l *Storage) GetWithInfo(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	if err := acquire(ctx, l.down); err != nil {
		return nil, storage.ObjectInfo{}, fmt.Errorf("get %s: %w", key, err)
	}
	rc, oi, err := l.s.GetWithInfo(ctx, key)
	if err != nil {
		<-l.down
		return nil, storage.ObjectInfo{}, err
	}
	return &slotReader{ReadCloser: rc, release: func() { <-l.down }}, oi, nil
}

// CleanUploads implements storage.Storage; it takes a metadata slot.
func (l *Storage) CleanUploads(ctx context.Context, prefix string, before time.Time) (int, error) {
	if err := acquire(ctx, l.metadata); err != nil {
		return 0, fmt.Errorf("clean uploads %s: %w", prefix, err)
	}
	defer func() { <-l.metadata }()
	return l.s.CleanUploads(ctx, prefix, before)
}

// Get implements storage.Storage; the slot is held until the reader is
// closed.
func (l *Storage) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := acquire(ctx, l.down); err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	rc, err := l.s.Get(ctx, key, offset, length)
	if err != nil {
		<-l.down
		return nil, err
	}
	return &slotReader{ReadCloser: rc, release: func() { <-l.down }}, nil
}

type slotReader struct {
	io.ReadCloser
	once    sync.Once
	release func()
}

func (r *slotReader) Close() error {
	err := r.ReadCloser.Close()
	r.once.Do(r.release)
	return err
}

// Stat implements storage.Storage.
func (l *Storage) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := acquire(ctx, l.metadata); err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, err)
	}
	defer func() { <-l.metadata }()
	return l.s.Stat(ctx, key)
}

// List implements storage.Storage. The slot is not held while fn runs, so
// fn may call the same Storage.
func (l *Storage) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if err := acquire(ctx, l.metadata); err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	var infos []storage.ObjectInfo
	err := l.s.List(ctx, prefix, func(oi storage.ObjectInfo) error {
		infos = append(infos, oi)
		return nil
	})
	<-l.metadata
	if err != nil {
		return err
	}
	for _, oi := range infos {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		if err := fn(oi); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements storage.Storage.
func (l *Storage) Delete(ctx context.Context, key string) error {
	if err := acquire(ctx, l.metadata); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	defer func() { <-l.metadata }()
	return l.s.Delete(ctx, key)
}

// Close closes the wrapped storage.
func (l *Storage) Close() error { return l.s.Close() }
