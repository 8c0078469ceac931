// Package bandwidth wraps storage.Storage values to cap the bytes per
// second they transfer: one Limiter is a node-wide budget, with separate
// rates for uploads (Put, PutIfAbsent and PutIfMatch bodies) and
// downloads (Get and GetWithInfo readers), shared by every transfer of
// every Storage it wraps. Metadata
// calls (Stat, List, Delete, CleanUploads) are not throttled.
//
// Bytes are paid for as they flow, in chunks of at most 256 KiB, so a
// large pack needs no burst of its own size and concurrent transfers share
// the budget fairly. Waiting for budget honours the call's context.
package bandwidth

import (
	"context"
	"fmt"
	"io"
	"time"

	"golang.org/x/time/rate"

	"github.com/backupd/backupd/pkg/storage"
)

const (
	// maxChunk is the most bytes paid for at once, and the burst.
	maxChunk = 256 << 10
	// minChunk is the least chunk, for very low rates.
	minChunk = 1 << 10
)

// Options sets the rates; 0 means unlimited.
type Options struct {
	UploadBytesPerSecond, DownloadBytesPerSecond int64
}

// Validate checks the rates.
func (o Options) Validate() error {
	if o.UploadBytesPerSecond < 0 || o.DownloadBytesPerSecond < 0 {
		return fmt.Errorf("bandwidth: upload %d, download %d bytes per second: must not be negative (0 is unlimited)",
			o.UploadBytesPerSecond, o.DownloadBytesPerSecond)
	}
	return nil
}

// Limiter is one bandwidth budget; it is safe for concurrent use.
type Limiter struct {
	up, down *bucket // nil: unlimited
}

// NewLimiter returns a budget of o's rates. It panics on invalid options
// (validate user input first).
func NewLimiter(o Options) *Limiter {
	if err := o.Validate(); err != nil {
		panic(err)
	}
	return &Limiter{up: newBucket(o.UploadBytesPerSecond), down: newBucket(o.DownloadBytesPerSecond)}
}

// Wrap returns s with its transfers paid for from l's budget, which it
// shares with every other Storage l wraps. When l limits neither
// direction it returns s itself.
func (l *Limiter) Wrap(s storage.Storage) storage.Storage {
	if l.up == nil && l.down == nil {
		return s
	}
	return &Storage{s: s, l: l}
}

// New wraps s with a budget of its own; see NewLimiter and Limiter.Wrap.
func New(s storage.Storage, o Options) storage.Storage { return NewLimiter(o).Wrap(s) }

// bucket is the token bucket of one direction.
type bucket struct {
	lim   *rate.Limiter
	chunk int // the most bytes paid for at once; also the burst
}

// newBucket returns a bucket of perSecond bytes per second, nil for 0.
// The chunk is a quarter of a second's worth, within [minChunk,
// maxChunk], so no single wait is long at sensible rates.
func newBucket(perSecond int64) *bucket {
	if perSecond == 0 {
		return nil
	}
	chunk := int(min(max(perSecond/4, minChunk), maxChunk))
	return &bucket{lim: rate.NewLimiter(rate.Limit(perSecond), chunk), chunk: chunk}
}

// wait pays for n bytes (n <= b.chunk), waiting as needed. It fails with
// ctx.Err() once ctx is done, returning the unused budget.
func (b *bucket) wait(ctx context.Context, n int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if n <= 0 {
		return nil
	}
	now := time.Now()
	r := b.lim.ReserveN(now, n) // always OK: n is at most the burst
	d := r.DelayFrom(now)
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		r.Cancel()
		return ctx.Err()
	}
}

// Storage is a bandwidth-limiting wrapper; make one with Limiter.Wrap.
type Storage struct {
	s storage.Storage
	l *Limiter
}

var _ storage.Storage = (*Storage)(nil)

// Put implements storage.Storage, throttling the reads of body. The body
// the wrapped storage sees still seeks (for retries) and, if body is an
// io.ReaderAt, reads at offsets too (for parallel part uploads).
func (s *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if s.l.up == nil {
		return s.s.Put(ctx, key, body, size)
	}
	return s.s.Put(ctx, key, s.throttledBody(ctx, body), size)
}

// PutIfAbsent implements storage.Storage, throttling the reads of body as
// Put does.
func (s *Storage) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if s.l.up == nil {
		return s.s.PutIfAbsent(ctx, key, body, size)
	}
	return s.s.PutIfAbsent(ctx, key, s.throttledBody(ctx, body), size)
}

// PutIfMatch implements storage.Storage, throttling the reads of body as
// Put does.
func (s *Storage) PutIfMatch(ctx context.Context, key string, body io.ReadSeeker, size int64, version string) (string, error) {
	if s.l.up == nil {
		return s.s.PutIfMatch(ctx, key, body, size, version)
	}
	return s.s.PutIfMatch(ctx, key, s.throttledBody(ctx, body), size, version)
}

// throttledBody returns body paid for from the upload budget: it still
// seeks and, if body is an io.ReaderAt, reads at offsets too.
func (s *Storage) throttledBody(ctx context.Context, body io.ReadSeeker) io.ReadSeeker {
	tb := &throttledBody{throttled: throttled{ctx: ctx, r: body, b: s.l.up}, seeker: body}
	if ra, ok := body.(io.ReaderAt); ok {
		return &throttledBodyAt{throttledBody: tb, ra: ra}
	}
	return tb
}

// Get implements storage.Storage, throttling the reads of the returned
// reader.
func (s *Storage) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	rc, err := s.s.Get(ctx, key, offset, length)
	if err != nil || s.l.down == nil {
		return rc, err
	}
	return &throttledReadCloser{throttled: throttled{ctx: ctx, r: rc, b: s.l.down}, closer: rc}, nil
}

// GetWithInfo implements storage.Storage, throttling the reads of the
// returned reader as Get does.
func (s *Storage) GetWithInfo(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	rc, oi, err := s.s.GetWithInfo(ctx, key)
	if err != nil || s.l.down == nil {
		return rc, oi, err
	}
	return &throttledReadCloser{throttled: throttled{ctx: ctx, r: rc, b: s.l.down}, closer: rc}, oi, nil
}

// throttled reads at most a chunk at a time from r and pays for what it
// read before handing it over.
type throttled struct {
	ctx context.Context
	r   io.Reader
	b   *bucket
}

func (t *throttled) Read(p []byte) (int, error) {
	if err := t.ctx.Err(); err != nil {
		return 0, err
	}
	if len(p) > t.b.chunk {
		p = p[:t.b.chunk]
	}
	n, err := t.r.Read(p)
	if werr := t.b.wait(t.ctx, n); werr != nil {
		return 0, werr
	}
	return n, err
}

type throttledReadCloser struct {
	throttled
	closer io.Closer
}

func (t *throttledReadCloser) Close() error { return t.closer.Close() }

type throttledBody struct {
	throttled
	seeker io.Seeker
}

func (t *throttledBody) Seek(offset int64, whence int) (int64, error) {
	return t.seeker.Seek(offset, whence)
}

type throttledBodyAt struct {
	*throttledBody
	ra io.ReaderAt
}

// ReadAt reads from ra a chunk at a time, paying for each chunk; it is as
// safe for concurrent use as ra.
func (t *throttledBodyAt) ReadAt(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		if err := t.ctx.Err(); err != nil {
			return done, err
		}
		c := min(len(p)-done, t.b.chunk)
		n, err := t.ra.ReadAt(p[done:done+c], off+int64(done))
		if werr := t.b.wait(t.ctx, n); werr != nil {
			return done, werr
		}
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// Stat implements storage.Storage; it is not throttled.
func (s *Storage) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	return s.s.Stat(ctx, key)
}

// List implements storage.Storage; it is not throttled.
func (s *Storage) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	return s.s.List(ctx, prefix, fn)
}

// Delete implements storage.Storage; it is not throttled.
func (s *Storage) Delete(ctx context.Context, key string) error { return s.s.Delete(ctx, key) }

// CleanUploads implements storage.Storage; it is not throttled.
func (s *Storage) CleanUploads(ctx context.Context, prefix string, before time.Time) (int, error) {
	return s.s.CleanUploads(ctx, prefix, before)
}

// Close closes the wrapped storage, as limit and retry do: a backend
// handed to a wrapper belongs to it.
func (s *Storage) Close() error { return s.s.Close() }
