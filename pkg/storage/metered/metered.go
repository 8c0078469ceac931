// Package metered wraps a storage.Storage to tell an Observer about every
// call it makes: the operation, its error, the bytes it moved and how long
// it took. It knows nothing of any metrics library; the daemon's Observer
// feeds Prometheus.
package metered

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/backupd/backupd/pkg/storage"
)

// Operations, as passed to Observer.ObserveCall.
const (
	OpPut          = "put"
	OpGet          = "get"
	OpStat         = "stat"
	OpList         = "list"
	OpDelete       = "delete"
	OpPutIfAbsent  = "put_if_absent"
	OpPutIfMatch   = "put_if_match"
	OpGetWithInfo  = "get_with_info"
	OpCleanUploads = "clean_uploads"
)

// Observer is told about every finished storage call. It must be safe for
// concurrent use: calls finish on many goroutines at once.
//
// err is the call's error as the wrapped Storage returned it, nil on
// success. Errors that callers often expect are reported too: a missing
// object is an error wrapping storage.ErrNotFound, a cancelled call one
// wrapping context.Canceled; the Observer decides (with errors.Is) how to
// count them.
//
// bytes is the payload moved: for a Put, PutIfAbsent or PutIfMatch the
// size stored (0 when it failed, as how much of it was sent is unknown,
// and when a PutIfAbsent found the key taken or a PutIfMatch another
// version); for a Get or GetWithInfo what the caller read from the
// reader; 0 for the other operations (a CleanUploads' count of removed
// uploads is not bytes).
//
// d is how long the call took; for a Get or GetWithInfo, from the call
// until its reader was closed; for a List, without the time spent in the
// caller's fn.
type Observer interface {
	ObserveCall(op string, err error, bytes int64, d time.Duration)
}

// ObserverFunc is a function that is an Observer.
type ObserverFunc func(op string, err error, bytes int64, d time.Duration)

// ObserveCall calls f.
func (f ObserverFunc) ObserveCall(op string, err error, bytes int64, d time.Duration) {
	f(op, err, bytes, d)
}

// Storage is a metering wrapper.
type Storage struct {
	s storage.Storage
	o Observer
}

var _ storage.Storage = (*Storage)(nil)

// New wraps s, reporting to o. It panics if o is nil (a programming error:
// a Storage that meters nothing should not be wrapped at all).
func New(s storage.Storage, o Observer) *Storage {
	if o == nil {
		panic("metered: nil Observer")
	}
	return &Storage{s: s, o: o}
}

// Put implements storage.Storage; it is reported when it returns, with
// size as its bytes if it succeeded.
func (m *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	start := time.Now()
	err := m.s.Put(ctx, key, body, size)
	var n int64
	if err == nil {
		n = size
	}
	m.o.ObserveCall(OpPut, err, n, time.Since(start))
	return err
}

// PutIfAbsent implements storage.Storage; it is reported as its own
// operation, OpPutIfAbsent, when it returns, with size as its bytes if it
// succeeded. A PutIfAbsent that found the key taken is reported with its
// error, which wraps storage.ErrExists.
func (m *Storage) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	start := time.Now()
	err := m.s.PutIfAbsent(ctx, key, body, size)
	var n int64
	if err == nil {
		n = size
	}
	m.o.ObserveCall(OpPutIfAbsent, err, n, time.Since(start))
	return err
}

// PutIfMatch implements storage.Storage; it is reported as its own
// operation, OpPutIfMatch, when it returns, with size as its bytes if it
// succeeded. A PutIfMatch that found another version is reported with its
// error, which wraps storage.ErrVersionMismatch.
func (m *Storage) PutIfMatch(ctx context.Context, key string, body io.ReadSeeker, size int64, version string) (string, error) {
	start := time.Now()
	v, err := m.s.PutIfMatch(ctx, key, body, size, version)
	var n int64
	if err == nil {
		n = size
	}
	m.o.ObserveCall(OpPutIfMatch, err, n, time.Since(start))
	return v, err
}

// GetWithInfo implements storage.Storage; it is reported as OpGetWithInfo,
// as Get is: at once if it fails, else when its reader is closed.
func (m *Storage) GetWithInfo(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	start := time.Now()
	rc, oi, err := m.s.GetWithInfo(ctx, key)
	if err != nil {
		m.o.ObserveCall(OpGetWithInfo, err, 0, time.Since(start))
		return nil, storage.ObjectInfo{}, err
	}
	return &reader{rc: rc, o: m.o, op: OpGetWithInfo, start: start}, oi, nil
}

// CleanUploads implements storage.Storage; it is reported as
// OpCleanUploads.
func (m *Storage) CleanUploads(ctx context.Context, prefix string, before time.Time) (int, error) {
	start := time.Now()
	n, err := m.s.CleanUploads(ctx, prefix, before)
	m.o.ObserveCall(OpCleanUploads, err, 0, time.Since(start))
	return n, err
}

// Get implements storage.Storage. A Get that fails is reported at once; one
// that succeeds is reported when its reader is closed (a reader never
// closed is never reported), with the bytes read from it and the first
// error a Read returned other than io.EOF, or else Close's error.
func (m *Storage) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	start := time.Now()
	rc, err := m.s.Get(ctx, key, offset, length)
	if err != nil {
		m.o.ObserveCall(OpGet, err, 0, time.Since(start))
		return nil, err
	}
	return &reader{rc: rc, o: m.o, op: OpGet, start: start}, nil
}

// reader counts what is read from a Get's reader and reports the call
// once, when closed.
type reader struct {
	rc    io.ReadCloser
	o     Observer
	op    string // OpGet or OpGetWithInfo
	start time.Time

	mu     sync.Mutex // guards the fields below: Close may race a Read
	n      int64
	err    error // the first Read error other than io.EOF
	closed bool
}

func (r *reader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.mu.Lock()
	r.n += int64(n)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	r.mu.Unlock()
	return n, err
}

func (r *reader) Close() error {
	cerr := r.rc.Close()
	r.mu.Lock()
	first := !r.closed
	r.closed = true
	n, err := r.n, r.err
	r.mu.Unlock()
	if first {
		if err == nil {
			err = cerr
		}
		r.o.ObserveCall(r.op, err, n, time.Since(r.start))
	}
	return cerr
}

// Stat implements storage.Storage.
func (m *Storage) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	start := time.Now()
	oi, err := m.s.Stat(ctx, key)
	m.o.ObserveCall(OpStat, err, 0, time.Since(start))
	return oi, err
}

// List implements storage.Storage. The time spent in fn is not counted,
// and a listing that fn stopped with an error is reported as successful:
// that error is the caller's, not the storage's (fn's own storage calls,
// if it makes any, are reported by themselves).
func (m *Storage) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	start := time.Now()
	var inFn time.Duration
	var fnErr error
	err := m.s.List(ctx, prefix, func(oi storage.ObjectInfo) error {
		t := time.Now()
		err := fn(oi)
		inFn += time.Since(t)
		if err != nil {
			fnErr = err
		}
		return err
	})
	reported := err
	if fnErr != nil && errors.Is(err, fnErr) {
		reported = nil
	}
	m.o.ObserveCall(OpList, reported, 0, time.Since(start)-inFn)
	return err
}

// Delete implements storage.Storage.
func (m *Storage) Delete(ctx context.Context, key string) error {
	start := time.Now()
	err := m.s.Delete(ctx, key)
	m.o.ObserveCall(OpDelete, err, 0, time.Since(start))
	return err
}

// Close closes the wrapped storage, as limit and retry do: a backend
// handed to a wrapper belongs to it.
func (m *Storage) Close() error { return m.s.Close() }
