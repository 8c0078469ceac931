// Package mem is an in-memory storage.Storage for tests and experiments.
// It keeps copies of the bytes it is given and hands out copies, so no
// caller can change a stored object behind its back.
//
// An object's Version is the number of the write that stored it, counted
// per Storage: every write (also of identical bytes) makes a new one, and
// none repeats. PutIfMatch compares and stores under the one lock.
package mem

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/backupd/backupd/pkg/storage"
)

// pieceSize is how much Put reads between two checks of its context.
const pieceSize = 1 << 20

// Storage is an in-memory storage.Storage. The zero value is not usable;
// call New.
type Storage struct {
	mu      sync.RWMutex
	objects map[string]object
	writes  uint64 // how many objects were stored; the last one's version
}

type object struct {
	data    []byte // never changed once stored
	modTime time.Time
	version uint64
}

func (o object) info(key string) storage.ObjectInfo {
	return storage.ObjectInfo{Key: key, Size: int64(len(o.data)), ModTime: o.modTime, Version: strconv.FormatUint(o.version, 10)}
}

// store stores data under key; s.mu must be held.
func (s *Storage) store(key string, data []byte) object {
	s.writes++
	obj := object{data: data, modTime: time.Now(), version: s.writes}
	s.objects[key] = obj
	return obj
}

var _ storage.Storage = (*Storage)(nil)

// New returns an empty in-memory storage.
func New() *Storage {
	return &Storage{objects: map[string]object{}}
}

// Put stores a copy of size bytes read from body under key. The object
// appears whole, only after all of it has been read.
func (s *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	data, err := readBody(ctx, "put", key, body, size)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.store(key, data)
	return nil
}

// PutIfAbsent stores a copy of size bytes read from body under key if no
// object is there; else it fails with storage.ErrExists. The check and
// the store happen under one lock, after the whole body has been read.
func (s *Storage) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	data, err := readBody(ctx, "put-if-absent", key, body, size)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.objects[key]; ok {
		return fmt.Errorf("mem: put-if-absent %s: %w", key, storage.ErrExists)
	}
	s.store(key, data)
	return nil
}

// PutIfMatch stores a copy of size bytes read from body under key if the
// object there has the version given, and returns the new version. The
// comparison and the store happen under one lock, after the whole body
// has been read.
func (s *Storage) PutIfMatch(ctx context.Context, key string, body io.ReadSeeker, size int64, version string) (string, error) {
	data, err := readBody(ctx, "put-if-match", key, body, size)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	obj, ok := s.objects[key]
	switch {
	case !ok:
		return "", fmt.Errorf("mem: put-if-match %s: %w: %w", key, storage.ErrVersionMismatch, storage.ErrNotFound)
	case version == "" || strconv.FormatUint(obj.version, 10) != version:
		return "", fmt.Errorf("mem: put-if-match %s: %w: the object is at version %d, not %q", key, storage.ErrVersionMismatch, obj.version, version)
	}
	return s.store(key, data).info(key).Version, nil
}

// readBody validates key and size and reads a copy of size bytes of body,
// checking ctx between pieces and once more at the end.
func readBody(ctx context.Context, op, key string, body io.Reader, size int64) ([]byte, error) {
	if err := storage.ValidateKey(key); err != nil {
		return nil, fmt.Errorf("mem: %s: %w", op, err)
	}
	if size < 0 {
		return nil, fmt.Errorf("mem: %s %s: negative size %d", op, key, size)
	}
	data := make([]byte, 0, min(size, 64<<20))
	for int64(len(data)) < size {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("mem: %s %s: %w", op, key, err)
		}
		n := int(min(size-int64(len(data)), pieceSize))
		start := len(data)
		data = append(data, make([]byte, n)...)
		if _, err := io.ReadFull(body, data[start:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("mem: %s %s: read body: %w", op, key, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("mem: %s %s: %w", op, key, err)
	}
	return data, nil
}

// Get returns a reader over a copy of the requested range of the object.
func (s *Storage) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := storage.ValidateKey(key); err != nil {
		return nil, fmt.Errorf("mem: get: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("mem: get %s: %w", key, err)
	}
	s.mu.RLock()
	obj, ok := s.objects[key]
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("mem: get %s: %w", key, storage.ErrNotFound)
	}
	size := int64(len(obj.data))
	if offset < 0 || offset > size {
		return nil, fmt.Errorf("mem: get %s: offset %d of %d bytes: %w", key, offset, size, storage.ErrInvalidRange)
	}
	end := size
	if length >= 0 && length < size-offset {
		end = offset + length
	}
	return &reader{ctx: ctx, r: bytes.NewReader(bytes.Clone(obj.data[offset:end]))}, nil
}

// GetWithInfo returns a reader over a copy of the whole object, and its
// info.
func (s *Storage) GetWithInfo(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	if err := storage.ValidateKey(key); err != nil {
		return nil, storage.ObjectInfo{}, fmt.Errorf("mem: get: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, storage.ObjectInfo{}, fmt.Errorf("mem: get %s: %w", key, err)
	}
	s.mu.RLock()
	obj, ok := s.objects[key]
	s.mu.RUnlock()
	if !ok {
		return nil, storage.ObjectInfo{}, fmt.Errorf("mem: get %s: %w", key, storage.ErrNotFound)
	}
	return &reader{ctx: ctx, r: bytes.NewReader(bytes.Clone(obj.data))}, obj.info(key), nil
}

// Stat describes the object at key.
func (s *Storage) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := storage.ValidateKey(key); err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("mem: stat: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("mem: stat %s: %w", key, err)
	}
	s.mu.RLock()
	obj, ok := s.objects[key]
	s.mu.RUnlock()
	if !ok {
		return storage.ObjectInfo{}, fmt.Errorf("mem: stat %s: %w", key, storage.ErrNotFound)
	}
	return obj.info(key), nil
}

// List calls fn for every object whose key starts with prefix. It takes a
// snapshot of the matching keys first, so fn may call any method of s.
func (s *Storage) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mem: list %q: %w", prefix, err)
	}
	var infos []storage.ObjectInfo
	s.mu.RLock()
	for key, obj := range s.objects {
		if strings.HasPrefix(key, prefix) {
			infos = append(infos, obj.info(key))
		}
	}
	s.mu.RUnlock()
	for _, oi := range infos {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("mem: list %q: %w", prefix, err)
		}
		if err := fn(oi); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes the object at key; a missing object is not an error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	if err := storage.ValidateKey(key); err != nil {
		return fmt.Errorf("mem: delete: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mem: delete %s: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.objects, key)
	return nil
}

// CleanUploads removes nothing: an upload to memory leaves nothing behind
// when it fails. It returns 0.
func (s *Storage) CleanUploads(ctx context.Context, prefix string, before time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("mem: clean uploads %q: %w", prefix, err)
	}
	return 0, nil
}

// Close does nothing; the objects stay readable.
func (s *Storage) Close() error { return nil }

// reader fails reads once its Get's context is cancelled, like a network
// backend's response body.
type reader struct {
	ctx context.Context
	r   *bytes.Reader
}

func (r *reader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

func (r *reader) Close() error { return nil }
