package body

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
)

// seekOnly hides bytes.Reader's ReadAt, to test the locked, seeking path.
type seekOnly struct{ r *bytes.Reader }

func (s *seekOnly) Read(p []byte) (int, error)                { return s.r.Read(p) }
func (s *seekOnly) Seek(off int64, whence int) (int64, error) { return s.r.Seek(off, whence) }

func TestBodyReader(t *testing.T) {
	data := []byte("0123456789")
	for _, body := range []io.ReadSeeker{bytes.NewReader(data), &seekOnly{r: bytes.NewReader(data)}} {
		b := NewReader(t.Context(), body, 7)
		if n, err := b.Seek(0, io.SeekEnd); n != 7 || err != nil {
			t.Errorf("Seek(0, end) = %d, %v; want 7", n, err)
		}
		b.Seek(0, io.SeekStart)
		if got, err := io.ReadAll(b); string(got) != "0123456" || err != nil {
			t.Errorf("ReadAll = %q, %v; want 0123456", got, err)
		}
		p := make([]byte, 4)
		if n, err := b.ReadAt(p, 5); n != 2 || err != io.EOF || string(p[:n]) != "56" {
			t.Errorf("ReadAt(4 bytes, 5) = %d %q, %v; want 2 \"56\" EOF", n, p[:n], err)
		}
	}
	// Short: size 12 of a 10-byte body.
	b := NewReader(t.Context(), bytes.NewReader(data), 12)
	if _, err := io.ReadAll(b); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("ReadAll of a short body: %v, want io.ErrUnexpectedEOF", err)
	}
	// Cancelled.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	b = NewReader(ctx, bytes.NewReader(data), 10)
	if _, err := io.ReadAll(b); !errors.Is(err, context.Canceled) {
		t.Errorf("ReadAll with a cancelled context: %v, want context.Canceled", err)
	}
}
