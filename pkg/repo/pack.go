package repo

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/backupd/backupd/pkg/chunk"
)

// BlobType says what a blob holds.
type BlobType uint8

// Blob types.
const (
	DataBlob BlobType = 0
	TreeBlob BlobType = 1
)

func (t BlobType) String() string {
	switch t {
	case DataBlob:
		return "data"
	case TreeBlob:
		return "tree"
	}
	return fmt.Sprintf("blobtype(%d)", t)
}

const (
	packMagic      = "BKPDPK01"
	trailerEntry   = chunk.IDSize + 1 + 1 + 4 + 4
	packFooterSize = 4 + len(packMagic)
)

// BlobEntry describes one blob inside a pack.
type BlobEntry struct {
	ID          chunk.ID
	Type        BlobType
	Compression chunk.Compression
	Offset      uint32
	StoredLen   uint32
	RawLen      uint32
}

// PackBuilder assembles one pack in memory. It is not safe for concurrent
// use.
type PackBuilder struct {
	buf     []byte
	entries []BlobEntry
}

// NewPackBuilder returns a builder whose buffer starts with capacity size.
func NewPackBuilder(size int) *PackBuilder {
	return &PackBuilder{buf: make([]byte, 0, size)}
}

// NewPackBuilderBuffer returns a builder that appends to buf (reused memory).
func NewPackBuilderBuffer(buf []byte) *PackBuilder {
	return &PackBuilder{buf: buf[:0]}
}

// Add appends a stored blob to the pack.
func (p *PackBuilder) Add(id chunk.ID, t BlobType, comp chunk.Compression, stored []byte, rawLen int) {
	p.entries = append(p.entries, BlobEntry{ID: id, Type: t, Compression: comp, Offset: uint32(len(p.buf)), StoredLen: uint32(len(stored)), RawLen: uint32(rawLen)})
	p.buf = append(p.buf, stored...)
}

// Len is the number of bytes of blobs added so far.
func (p *PackBuilder) Len() int { return len(p.buf) }

// Count is the number of blobs added so far.
func (p *PackBuilder) Count() int { return len(p.entries) }

// Finish appends the trailer and returns the complete pack, its id and its
// entries. The builder must not be used afterwards.
func (p *PackBuilder) Finish() ([]byte, chunk.ID, []BlobEntry) {
	for _, e := range p.entries {
		p.buf = append(p.buf, e.ID[:]...)
		p.buf = append(p.buf, byte(e.Type), byte(e.Compression))
		p.buf = binary.LittleEndian.AppendUint32(p.buf, e.StoredLen)
		p.buf = binary.LittleEndian.AppendUint32(p.buf, e.RawLen)
	}
	p.buf = binary.LittleEndian.AppendUint32(p.buf, uint32(len(p.entries)*trailerEntry))
	p.buf = append(p.buf, packMagic...)
	return p.buf, chunk.Hash(p.buf), p.entries
}

// ErrCorrupt marks damaged repository objects.
var ErrCorrupt = errors.New("corrupt object")

// ParsePackTrailer reads the blob list from the end of a pack. tail holds
// the last bytes of the pack (at least the trailer and footer) and packSize
// is the pack's total length.
func ParsePackTrailer(tail []byte, packSize int64) ([]BlobEntry, error) {
	if len(tail) < packFooterSize || string(tail[len(tail)-len(packMagic):]) != packMagic {
		return nil, fmt.Errorf("%w: pack footer missing", ErrCorrupt)
	}
	tlen := int64(binary.LittleEndian.Uint32(tail[len(tail)-packFooterSize:]))
	if tlen%trailerEntry != 0 || tlen+int64(packFooterSize) > int64(len(tail)) || tlen+int64(packFooterSize) > packSize {
		return nil, fmt.Errorf("%w: pack trailer length %d", ErrCorrupt, tlen)
	}
	t := tail[int64(len(tail))-int64(packFooterSize)-tlen : len(tail)-packFooterSize]
	n := int(tlen / trailerEntry)
	entries := make([]BlobEntry, n)
	var off int64
	for i := range entries {
		e := t[i*trailerEntry:]
		copy(entries[i].ID[:], e)
		entries[i].Type = BlobType(e[32])
		entries[i].Compression = chunk.Compression(e[33])
		entries[i].StoredLen = binary.LittleEndian.Uint32(e[34:])
		entries[i].RawLen = binary.LittleEndian.Uint32(e[38:])
		entries[i].Offset = uint32(off)
		off += int64(entries[i].StoredLen)
	}
	if off+tlen+int64(packFooterSize) != packSize {
		return nil, fmt.Errorf("%w: pack trailer lists %d bytes of blobs, pack holds %d", ErrCorrupt, off, packSize-tlen-int64(packFooterSize))
	}
	return entries, nil
}

// PackTrailerReadSize is how many bytes from a pack's end suffice to parse
// the trailer of a pack of n blobs.
func PackTrailerReadSize(n int) int { return n*trailerEntry + packFooterSize }
