package chunk

import (
	"fmt"
	"runtime"

	"github.com/klauspost/compress/zstd"
)

// Compression says how a blob is stored.
type Compression uint8

// Compression kinds, as recorded in pack trailers and indexes.
const (
	Raw  Compression = 0
	Zstd Compression = 1
)

// DefaultLevel is the zstd level used unless configured otherwise. Measured
// with BenchmarkCompress on Go source: SpeedFastest compresses ~3.5x at
// several hundred MB/s per core, SpeedDefault gains little ratio at roughly
// half the speed, and zstd dominates the CPU cost of a first backup.
const DefaultLevel = zstd.SpeedFastest

// Codec compresses and decompresses blobs. It is safe for concurrent use.
type Codec struct {
	enc *zstd.Encoder
	dec *zstd.Decoder
}

// NewCodec returns a codec compressing at level (a zstd.EncoderLevel, 1..4).
func NewCodec(level int) (*Codec, error) {
	if level < int(zstd.SpeedFastest) || level > int(zstd.SpeedBestCompression) {
		return nil, fmt.Errorf("compression level %d out of range %d..%d", level, zstd.SpeedFastest, zstd.SpeedBestCompression)
	}
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.EncoderLevel(level)),
		// EncodeAll takes one encoder per call from a pool of this size, so
		// the pool must match the number of goroutines that compress.
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
		zstd.WithZeroFrames(true),
		zstd.WithEncoderCRC(false), // every blob is verified by its SHA-256
	)
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(1<<30))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &Codec{enc: enc, dec: dec}, nil
}

// Compress appends the stored form of src to dst and returns it with the
// compression used: zstd when that is smaller, otherwise raw.
func (c *Codec) Compress(dst, src []byte) ([]byte, Compression) {
	start := len(dst)
	out := c.enc.EncodeAll(src, dst)
	if len(out)-start < len(src) {
		return out, Zstd
	}
	return append(out[:start], src...), Raw
}

// Decompress appends the raw content of a stored blob to dst. rawLen is the
// expected length; a different length is an error.
func (c *Codec) Decompress(dst, stored []byte, comp Compression, rawLen int) ([]byte, error) {
	start := len(dst)
	switch comp {
	case Raw:
		dst = append(dst, stored...)
	case Zstd:
		if cap(dst)-start < rawLen {
			nd := make([]byte, start, start+rawLen)
			copy(nd, dst)
			dst = nd
		}
		var err error
		dst, err = c.dec.DecodeAll(stored, dst)
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
	default:
		return nil, fmt.Errorf("unknown compression %d", comp)
	}
	if len(dst)-start != rawLen {
		return nil, fmt.Errorf("decompressed length %d, want %d", len(dst)-start, rawLen)
	}
	return dst, nil
}
