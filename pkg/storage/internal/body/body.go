// Package body adapts the body of a Storage.Put for object-store SDKs
// that upload parts in parallel: a bounded, context-aware io.ReaderAt and
// io.ReadSeeker over the caller's io.ReadSeeker. It is shared by the s3 and
// minio backends.
package body

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Error is a failure of the caller's body (reading it, or it being
// shorter than the size given). It is not the service's fault and not
// transient.
type Error struct{ err error }

func (e *Error) Error() string { return "reading the body: " + e.err.Error() }
func (e *Error) Unwrap() error { return e.err }

// Reader presents the first size bytes of a Put's body as an
// io.ReaderAt and io.ReadSeeker, so that an SDK can send parts in
// parallel straight from it and re-read it to sign or checksum. It never reads the body past size, reports a body shorter
// than size as io.ErrUnexpectedEOF, and fails once ctx is done. A body
// that is an io.ReaderAt (a file, a bytes.Reader) is read at offsets
// concurrently; any other is read under a lock, seeking as needed.
type Reader struct {
	ctx  context.Context
	size int64
	ra   io.ReaderAt // the body, if it is one

	mu    sync.Mutex // guards rs, rsPos and failure
	rs    io.ReadSeeker
	rsPos int64 // rs's position, -1 if unknown
	// failure is the body's first failure, which Put reports rather than
	// what the client library made of it.
	failure error

	pos int64 // of Read and Seek
}

func NewReader(ctx context.Context, body io.ReadSeeker, size int64) *Reader {
	b := &Reader{ctx: ctx, size: size, rs: body, rsPos: -1}
	if ra, ok := body.(io.ReaderAt); ok {
		b.ra = ra
	}
	return b
}

// ReadAt reads len(p) bytes at off, fewer (with io.EOF) at the end.
func (b *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &Error{fmt.Errorf("negative offset %d", off)}
	}
	if off >= b.size {
		return 0, io.EOF
	}
	if err := b.ctx.Err(); err != nil {
		return 0, err
	}
	want := p
	if rest := b.size - off; int64(len(want)) > rest {
		want = want[:rest]
	}
	var n int
	var err error
	if b.ra != nil {
		n, err = b.ra.ReadAt(want, off)
	} else {
		n, err = b.readSeeking(want, off)
	}
	if n == len(want) {
		err = nil
	} else if err == nil || err == io.EOF {
		err = fmt.Errorf("body ended after %d of %d bytes: %w", off+int64(n), b.size, io.ErrUnexpectedEOF)
	}
	if err != nil {
		berr := &Error{err}
		b.mu.Lock()
		if b.failure == nil {
			b.failure = berr
		}
		b.mu.Unlock()
		return n, berr
	}
	if len(want) < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// readSeeking fills p from the body at off, seeking only when needed.
func (b *Reader) readSeeking(p []byte, off int64) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.rsPos != off {
		if _, err := b.rs.Seek(off, io.SeekStart); err != nil {
			b.rsPos = -1
			return 0, err
		}
		b.rsPos = off
	}
	n, err := io.ReadFull(b.rs, p)
	b.rsPos += int64(n)
	if err != nil {
		b.rsPos = -1
	}
	return n, err
}

// Err returns the body's first failure, if any.
func (b *Reader) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failure
}

func (b *Reader) Read(p []byte) (int, error) {
	if b.pos >= b.size {
		return 0, io.EOF
	}
	n, err := b.ReadAt(p, b.pos)
	b.pos += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

func (b *Reader) Seek(offset int64, whence int) (int64, error) {
	var pos int64
	switch whence {
	case io.SeekStart:
		pos = offset
	case io.SeekCurrent:
		pos = b.pos + offset
	case io.SeekEnd:
		pos = b.size + offset
	default:
		return b.pos, fmt.Errorf("body: bad whence %d", whence)
	}
	if pos < 0 {
		return b.pos, errors.New("body: negative position")
	}
	b.pos = pos
	return pos, nil
}
