// Package httprange holds what the S3-protocol backends (s3, minio) share
// when reading objects by byte range.
package httprange

import (
	"io"
	"strconv"
	"strings"
)

// ContentRangeStart returns the first byte of a Content-Range header
// "bytes FIRST-LAST/SIZE".
func ContentRangeStart(cr string) (int64, bool) {
	rest, ok := strings.CutPrefix(cr, "bytes ")
	if !ok {
		return 0, false
	}
	first, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(first, 10, 64)
	return n, err == nil
}

// Reader reads an object's body through R and closes it through C,
// passing read errors other than io.EOF through Err (which names the
// backend, the operation and the key).
type Reader struct {
	R   io.Reader
	C   io.Closer
	Err func(error) error
}

func (r *Reader) Read(p []byte) (int, error) {
	n, err := r.R.Read(p)
	if err != nil && err != io.EOF {
		err = r.Err(err)
	}
	return n, err
}

// Close closes the body.
func (r *Reader) Close() error { return r.C.Close() }
