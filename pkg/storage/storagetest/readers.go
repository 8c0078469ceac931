package storagetest

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
)

// errReadPastSize is what strictReader returns when Put reads beyond size.
var errReadPastSize = errors.New("storagetest: Put read past the size it was given")

// errBodyFailed is what hookReader returns when it is set to fail.
var errBodyFailed = errors.New("storagetest: body failed on purpose")

// randomBytes returns n reproducible pseudo-random bytes for seed.
func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24),
		byte(seed >> 32), byte(seed >> 40), byte(seed >> 48), byte(seed >> 56)})
	_, _ = rng.Read(b)
	return b
}

// seekReader is an io.ReadSeeker over a byte slice. Unlike bytes.Reader it
// has no WriteTo method, so it exercises a backend's plain Read path.
type seekReader struct {
	data []byte
	pos  int64
}

func (r *seekReader) Read(p []byte) (int, error) {
	if r.pos >= int64(len(r.data)) {
		return 0, io.EOF
	}
	n := copy(p, r.data[r.pos:])
	r.pos += int64(n)
	return n, nil
}

func (r *seekReader) Seek(offset int64, whence int) (int64, error) {
	pos, err := seekPos(r.pos, int64(len(r.data)), offset, whence)
	if err != nil {
		return r.pos, err
	}
	r.pos = pos
	return pos, nil
}

// strictReader serves data but fails any Read at or beyond limit, so a Put
// given size limit that reads more than size bytes fails visibly. Reads
// that start before limit stop at it.
type strictReader struct {
	data  []byte
	limit int64
	pos   int64
}

func (r *strictReader) Read(p []byte) (int, error) {
	if r.pos >= r.limit {
		return 0, errReadPastSize
	}
	end := min(r.limit, r.pos+int64(len(p)))
	n := copy(p, r.data[r.pos:end])
	r.pos += int64(n)
	return n, nil
}

func (r *strictReader) Seek(offset int64, whence int) (int64, error) {
	pos, err := seekPos(r.pos, int64(len(r.data)), offset, whence)
	if err != nil {
		return r.pos, err
	}
	r.pos = pos
	return pos, nil
}

// hookReader serves data and calls hook once every time a Read reaches
// offset at (reads that start before at stop there). A non-nil error from
// hook is returned by that Read; with sticky set it is returned by every
// later Read too, until a Seek. hookReader is not safe for concurrent use,
// which Put does not need.
type hookReader struct {
	data   []byte
	at     int64
	hook   func() error
	sticky bool

	pos   int64
	fired bool
	err   error
}

func (r *hookReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.pos == r.at && !r.fired {
		r.fired = true
		if err := r.hook(); err != nil {
			if r.sticky {
				r.err = err
			}
			return 0, err
		}
	}
	if r.pos >= int64(len(r.data)) {
		return 0, io.EOF
	}
	end := int64(len(r.data))
	if r.pos < r.at {
		end = min(end, r.at)
	}
	end = min(end, r.pos+int64(len(p)))
	n := copy(p, r.data[r.pos:end])
	r.pos += int64(n)
	return n, nil
}

func (r *hookReader) Seek(offset int64, whence int) (int64, error) {
	pos, err := seekPos(r.pos, int64(len(r.data)), offset, whence)
	if err != nil {
		return r.pos, err
	}
	r.pos, r.fired, r.err = pos, false, nil
	return pos, nil
}

func seekPos(cur, size, offset int64, whence int) (int64, error) {
	var pos int64
	switch whence {
	case io.SeekStart:
		pos = offset
	case io.SeekCurrent:
		pos = cur + offset
	case io.SeekEnd:
		pos = size + offset
	default:
		return 0, fmt.Errorf("storagetest: bad whence %d", whence)
	}
	if pos < 0 {
		return 0, errors.New("storagetest: negative seek position")
	}
	return pos, nil
}
