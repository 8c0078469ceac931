// Package faults wraps a storage.Storage to inject failures in tests: a
// fraction of calls fail, deterministically for a given seed. A fault can
// strike before the call reaches the backend or after it succeeded (the
// reply was "lost"), which is how retried uploads are proven idempotent.
// It also counts calls per operation.
package faults

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/backupd/backupd/pkg/storage"
)

// ErrInjected is the cause of every injected failure; injected errors are
// marked transient (storage.IsTransient).
var ErrInjected = errors.New("injected fault")

// Op names a Storage method.
type Op string

// Operations that can fail and are counted.
const (
	Put          Op = "put"
	Get          Op = "get"
	Stat         Op = "stat"
	List         Op = "list"
	Delete       Op = "delete"
	PutIfAbsent  Op = "put_if_absent"
	PutIfMatch   Op = "put_if_match"
	GetWithInfo  Op = "get_with_info"
	CleanUploads Op = "clean_uploads"
)

// Options configures a fault injector.
type Options struct {
	// Rate is the fraction of calls (0..1) that fail.
	Rate float64
	// Ops limits faults to these operations; empty means all.
	Ops []Op
	// Seed makes the sequence of faults repeatable.
	Seed uint64
	// AfterRate is the fraction of failing Puts, PutIfAbsents, PutIfMatches
	// and Deletes that fail after the backend carried them out (a lost
	// reply: a retried PutIfAbsent then finds its own object and fails
	// with storage.ErrExists, a retried PutIfMatch with
	// storage.ErrVersionMismatch).
	AfterRate float64
}

// Storage is a fault-injecting wrapper.
type Storage struct {
	s storage.Storage

	mu   sync.Mutex
	rng  *rand.Rand
	opts Options

	counts   sync.Map // Op -> *atomic.Int64
	injected atomic.Int64
}

// New wraps s.
func New(s storage.Storage, opts Options) *Storage {
	return &Storage{s: s, opts: opts, rng: rand.New(rand.NewPCG(opts.Seed, 0x6661756c7473))}
}

// SetOptions changes the fault configuration (for instance to stop
// injecting faults once the part of a test that needs them is done).
func (f *Storage) SetOptions(opts Options) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.opts = opts
	f.rng = rand.New(rand.NewPCG(opts.Seed, 0x6661756c7473))
}

// Calls returns how many times op was called (failed calls included).
func (f *Storage) Calls(op Op) int64 {
	v, ok := f.counts.Load(op)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

// Injected returns how many faults were injected.
func (f *Storage) Injected() int64 { return f.injected.Load() }

// decide counts a call and says whether it fails, and if so whether after
// the real call.
func (f *Storage) decide(op Op) (fail, after bool) {
	v, _ := f.counts.LoadOrStore(op, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.opts.Rate <= 0 {
		return false, false
	}
	if len(f.opts.Ops) > 0 {
		found := false
		for _, o := range f.opts.Ops {
			found = found || o == op
		}
		if !found {
			return false, false
		}
	}
	if f.rng.Float64() >= f.opts.Rate {
		return false, false
	}
	f.injected.Add(1)
	return true, (op == Put || op == PutIfAbsent || op == PutIfMatch || op == Delete) && f.rng.Float64() < f.opts.AfterRate
}

func injected(op Op, key string, after bool) error {
	when := "before"
	if after {
		when = "after"
	}
	return storage.Transient(fmt.Errorf("%s %s: %w (%s the call)", op, key, ErrInjected, when))
}

// Put implements storage.Storage.
func (f *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	fail, after := f.decide(Put)
	if fail && !after {
		return injected(Put, key, false)
	}
	if err := f.s.Put(ctx, key, body, size); err != nil {
		return err
	}
	if fail {
		return injected(Put, key, true)
	}
	return nil
}

// PutIfAbsent implements storage.Storage; it fails like Put.
func (f *Storage) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	fail, after := f.decide(PutIfAbsent)
	if fail && !after {
		return injected(PutIfAbsent, key, false)
	}
	if err := f.s.PutIfAbsent(ctx, key, body, size); err != nil {
		return err
	}
	if fail {
		return injected(PutIfAbsent, key, true)
	}
	return nil
}

// PutIfMatch implements storage.Storage; it fails like Put.
func (f *Storage) PutIfMatch(ctx context.Context, key string, body io.ReadSeeker, size int64, version string) (string, error) {
	fail, after := f.decide(PutIfMatch)
	if fail && !after {
		return "", injected(PutIfMatch, key, false)
	}
	v, err := f.s.PutIfMatch(ctx, key, body, size, version)
	if err != nil {
		return "", err
	}
	if fail {
		return "", injected(PutIfMatch, key, true)
	}
	return v, nil
}

// GetWithInfo implements storage.Storage; it fails like Get.
func (f *Storage) GetWithInfo(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	if fail, _ := f.decide(GetWithInfo); fail {
		return nil, storage.ObjectInfo{}, injected(GetWithInfo, key, false)
	}
	return f.s.GetWithInfo(ctx, key)
}

// CleanUploads implements storage.Storage; an injected fault strikes
// before the call.
func (f *Storage) CleanUploads(ctx context.Context, prefix string, before time.Time) (int, error) {
	if fail, _ := f.decide(CleanUploads); fail {
		return 0, injected(CleanUploads, prefix, false)
	}
	return f.s.CleanUploads(ctx, prefix, before)
}

// Get implements storage.Storage.
func (f *Storage) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if fail, _ := f.decide(Get); fail {
		return nil, injected(Get, key, false)
	}
	return f.s.Get(ctx, key, offset, length)
}

// Stat implements storage.Storage.
func (f *Storage) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if fail, _ := f.decide(Stat); fail {
		return storage.ObjectInfo{}, injected(Stat, key, false)
	}
	return f.s.Stat(ctx, key)
}

// List implements storage.Storage.
func (f *Storage) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if fail, _ := f.decide(List); fail {
		return injected(List, prefix, false)
	}
	return f.s.List(ctx, prefix, fn)
}

// Delete implements storage.Storage.
func (f *Storage) Delete(ctx context.Context, key string) error {
	fail, after := f.decide(Delete)
	if fail && !after {
		return injected(Delete, key, false)
	}
	if err := f.s.Delete(ctx, key); err != nil {
		return err
	}
	if fail {
		return injected(Delete, key, true)
	}
	return nil
}

// Close closes the wrapped storage.
func (f *Storage) Close() error { return f.s.Close() }
