// Package retry wraps a storage.Storage so that transient failures (server
// errors, throttling, connection resets, timeouts) are retried with
// exponential backoff and full jitter, and permanent ones (not found,
// permission denied, invalid key or range, cancellation) are not.
//
// Retrying is safe because every Storage call is idempotent (Put of the
// same bytes, Delete of a missing key). Reads that break off midway resume
// where they stopped, and a listing retried after it began never reports
// a key twice. PutIfAbsent is retried like Put, but is not idempotent in
// what it reports: when a try failed after the backend stored the object
// (the reply was lost), the next try finds the object and fails with
// storage.ErrExists, although it is the caller's own; a caller that must
// know reads the object back. PutIfMatch likewise: after a lost reply the
// next try fails with storage.ErrVersionMismatch, the object having moved
// on to the caller's own write (storage.ReadVersioned tells). GetWithInfo
// is retried until it opens, but its reader is not resumed: a resumed
// read could return another version's bytes than the info describes
// (its objects are small). CleanUploads is retried too, and reports the
// uploads removed by all its tries.
package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"syscall"
	"time"

	"github.com/backupd/backupd/internal/ctxsleep"
	"github.com/backupd/backupd/pkg/storage"
)

// Options configures retries.
type Options struct {
	// Attempts is the number of tries of one call, the first included.
	Attempts int
	// Initial is the backoff before the second try; each further one
	// doubles, up to Max. The actual wait is drawn uniformly from
	// [0, backoff) (full jitter).
	Initial, Max time.Duration
	// OnRetry, if set, is told about each retry (for logs and metrics).
	OnRetry func(op, key string, attempt int, err error)
}

// DefaultOptions: 6 tries spread over up to about 6 seconds.
func DefaultOptions() Options {
	return Options{Attempts: 6, Initial: 200 * time.Millisecond, Max: 5 * time.Second}
}

// Validate checks the options.
func (o Options) Validate() error {
	if o.Attempts < 1 || o.Attempts > 100 {
		return fmt.Errorf("retry: attempts %d out of range 1..100", o.Attempts)
	}
	if o.Initial <= 0 || o.Max < o.Initial {
		return fmt.Errorf("retry: backoff initial %v, max %v: need 0 < initial <= max", o.Initial, o.Max)
	}
	return nil
}

// Storage retries the calls of the Storage it wraps.
type Storage struct {
	s    storage.Storage
	opts Options
}

// New wraps s. It panics on invalid options (a programming error); use
// Options.Validate on user input first.
func New(s storage.Storage, opts Options) *Storage {
	if err := opts.Validate(); err != nil {
		panic(err)
	}
	return &Storage{s: s, opts: opts}
}

// Retryable reports whether err is worth another try: errors marked
// storage.Transient and network failures (resets, refused connections,
// timeouts, truncated replies), never cancellation or permanent errors.
func Retryable(err error) bool {
	switch {
	case err == nil, errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	case errors.Is(err, storage.ErrNotFound), errors.Is(err, storage.ErrPermission),
		errors.Is(err, storage.ErrInvalidKey), errors.Is(err, storage.ErrInvalidRange),
		errors.Is(err, storage.ErrExists), errors.Is(err, storage.ErrVersionMismatch):
		return false
	case storage.IsTransient(err):
		return true
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.EPIPE), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// do runs call until it succeeds, fails permanently, runs out of tries or
// ctx ends.
func (r *Storage) do(ctx context.Context, op, key string, call func() error) error {
	backoff := r.opts.Initial
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%s %s: %w", op, key, err)
		}
		err := call()
		if err == nil || !Retryable(err) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (after: %v)", ctx.Err(), err)
		}
		if attempt >= r.opts.Attempts {
			return fmt.Errorf("%w (gave up after %d tries)", err, attempt)
		}
		if r.opts.OnRetry != nil {
			r.opts.OnRetry(op, key, attempt, err)
		}
		if !ctxsleep.Sleep(ctx, rand.N(backoff)+time.Millisecond) {
			return fmt.Errorf("%w (while waiting to retry after: %v)", ctx.Err(), err)
		}
		backoff = min(2*backoff, r.opts.Max)
	}
}

// Put implements storage.Storage, rewinding the body before each retry.
func (r *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	first := true
	return r.do(ctx, "put", key, func() error {
		if !first {
			if _, err := body.Seek(0, io.SeekStart); err != nil {
				return fmt.Errorf("put %s: rewind body for retry: %w", key, err)
			}
		}
		first = false
		return r.s.Put(ctx, key, body, size)
	})
}

// PutIfAbsent implements storage.Storage, rewinding the body before each
// retry. After a try whose reply was lost, a retry may fail with
// storage.ErrExists for the object that try stored (see the package
// comment).
func (r *Storage) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	first := true
	return r.do(ctx, "put-if-absent", key, func() error {
		if !first {
			if _, err := body.Seek(0, io.SeekStart); err != nil {
				return fmt.Errorf("put-if-absent %s: rewind body for retry: %w", key, err)
			}
		}
		first = false
		return r.s.PutIfAbsent(ctx, key, body, size)
	})
}

// PutIfMatch implements storage.Storage, rewinding the body before each
// retry. After a try whose reply was lost, a retry may fail with
// storage.ErrVersionMismatch although the object is what that try stored
// (see the package comment).
func (r *Storage) PutIfMatch(ctx context.Context, key string, body io.ReadSeeker, size int64, version string) (string, error) {
	first := true
	var v string
	err := r.do(ctx, "put-if-match", key, func() (err error) {
		if !first {
			if _, err := body.Seek(0, io.SeekStart); err != nil {
				return fmt.Errorf("put-if-match %s: rewind body for retry: %w", key, err)
			}
		}
		first = false
		v, err = r.s.PutIfMatch(ctx, key, body, size, version)
		return err
	})
	return v, err
}

// GetWithInfo implements storage.Storage. Opening is retried; the reader
// is the wrapped storage's own, never resumed (see the package comment).
func (r *Storage) GetWithInfo(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	var rc io.ReadCloser
	var oi storage.ObjectInfo
	err := r.do(ctx, "get", key, func() (err error) {
		rc, oi, err = r.s.GetWithInfo(ctx, key)
		return err
	})
	if err != nil {
		return nil, storage.ObjectInfo{}, err
	}
	return rc, oi, nil
}

// CleanUploads implements storage.Storage; the count is that of every
// try, also of those that failed partway.
func (r *Storage) CleanUploads(ctx context.Context, prefix string, before time.Time) (int, error) {
	total := 0
	err := r.do(ctx, "clean uploads", prefix, func() error {
		n, err := r.s.CleanUploads(ctx, prefix, before)
		total += n
		return err
	})
	return total, err
}

// Get implements storage.Storage. The returned reader resumes a transfer
// that breaks off, from the first byte not yet delivered.
func (r *Storage) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := r.do(ctx, "get", key, func() (err error) {
		rc, err = r.s.Get(ctx, key, offset, length)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &resumingReader{r: r, ctx: ctx, key: key, rc: rc, offset: offset, remaining: length}, nil
}

type resumingReader struct {
	r         *Storage
	ctx       context.Context
	key       string
	rc        io.ReadCloser
	offset    int64 // of the next byte to deliver
	remaining int64 // < 0: to the end
	resumes   int
}

func (rr *resumingReader) Read(p []byte) (int, error) {
	if rr.remaining >= 0 && int64(len(p)) > rr.remaining {
		p = p[:rr.remaining]
	}
	if len(p) == 0 && rr.remaining == 0 {
		return 0, io.EOF
	}
	n, err := rr.rc.Read(p)
	rr.offset += int64(n)
	if rr.remaining >= 0 {
		rr.remaining -= int64(n)
	}
	if err == nil || err == io.EOF || !Retryable(err) || rr.ctx.Err() != nil || rr.resumes >= rr.r.opts.Attempts-1 {
		return n, err
	}
	// Resume: reopen from the first byte not delivered.
	rr.resumes++
	if rr.r.opts.OnRetry != nil {
		rr.r.opts.OnRetry("get", rr.key, rr.resumes, err)
	}
	rr.rc.Close()
	var rc io.ReadCloser
	rerr := rr.r.do(rr.ctx, "get", rr.key, func() (e error) {
		rc, e = rr.r.s.Get(rr.ctx, rr.key, rr.offset, rr.remaining)
		return e
	})
	if rerr != nil {
		rr.rc = io.NopCloser(errReader{rerr})
		if n > 0 {
			return n, nil
		}
		return 0, rerr
	}
	rr.rc = rc
	return n, nil
}

func (rr *resumingReader) Close() error { return rr.rc.Close() }

// callerError carries an error of the caller's own callback; it has no
// Unwrap, so Retryable never sees it as transient.
type callerError struct{ err error }

func (e callerError) Error() string { return e.err.Error() }

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// Stat implements storage.Storage.
func (r *Storage) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	var oi storage.ObjectInfo
	err := r.do(ctx, "stat", key, func() (err error) {
		oi, err = r.s.Stat(ctx, key)
		return err
	})
	return oi, err
}

// List implements storage.Storage. A listing retried after it began skips
// the keys already reported.
func (r *Storage) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	seen := map[string]struct{}{}
	var fnErr error
	err := r.do(ctx, "list", prefix, func() error {
		err := r.s.List(ctx, prefix, func(oi storage.ObjectInfo) error {
			if _, dup := seen[oi.Key]; dup {
				return nil
			}
			seen[oi.Key] = struct{}{}
			if err := fn(oi); err != nil {
				fnErr = err
				return err
			}
			return nil
		})
		if fnErr != nil {
			return callerError{fnErr} // hides fnErr from Retryable
		}
		return err
	})
	if fnErr != nil {
		return fnErr // the caller's own error: never retried
	}
	return err
}

// Delete implements storage.Storage.
func (r *Storage) Delete(ctx context.Context, key string) error {
	return r.do(ctx, "delete", key, func() error { return r.s.Delete(ctx, key) })
}

// Close closes the wrapped storage.
func (r *Storage) Close() error { return r.s.Close() }
