package repo

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func TestDecodeIndexBodyLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("decodes an index body at the limit")
	}
	// At the limit: accepted.
	body := counterBody(MaxIndexSize / 70)
	if _, err := DecodeIndex(indexObject(body)); err != nil {
		t.Fatalf("body of %d bytes: %v", len(body), err)
	}
	// One pack more: refused from the frame's header when it gives the
	// content size, as EncodeIndex's do.
	body = counterBody(MaxIndexSize/70 + 1)
	if _, err := DecodeIndex(indexObject(body)); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("body above MaxIndexSize: %v", err)
	}
	// A streamed frame does not: refused once decoded that far, for a
	// bounded cost.
	var streamed bytes.Buffer
	streamed.WriteString(indexMagic)
	enc, err := zstd.NewWriter(&streamed, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	enc.Write(body)
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	obj := streamed.Bytes()
	var h zstd.Header
	if err := h.Decode(obj[len(indexMagic):]); err != nil || h.HasFCS {
		t.Fatalf("streamed frame header: %+v, %v", h, err)
	}
	n := allocated(func() { _, err = DecodeIndex(obj) })
	t.Logf("%d-byte body in a %d-byte object: allocated %d bytes (%.1fx the object, %.2fx the body)", len(body), len(obj), n, float64(n)/float64(len(obj)), float64(n)/float64(len(body)))
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("body above MaxIndexSize: %v", err)
	}
	if n > 3*MaxIndexSize+indexMaxWindow {
		t.Fatalf("allocated %d bytes, more than 3x MaxIndexSize and a window", n)
	}
}
