package repo

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/klauspost/compress/zstd"
)

const indexMagic = "BKPDIX01"

// Location says where a blob is stored.
type Location struct {
	Pack chunk.ID
	BlobEntry
}

type packedLocation struct {
	pack        uint32 // index into Index.packs
	offset      uint32
	storedLen   uint32
	rawLen      uint32
	typ         BlobType
	compression chunk.Compression
}

// Index maps blob ids to their locations in packs. It is safe for
// concurrent use.
type Index struct {
	mu     sync.RWMutex
	packs  []chunk.ID
	packNo map[chunk.ID]uint32
	blobs  map[chunk.ID]packedLocation
}

// NewIndex returns an empty index.
func NewIndex() *Index {
	return &Index{packNo: map[chunk.ID]uint32{}, blobs: map[chunk.ID]packedLocation{}}
}

// AddPack records the blobs of one pack.
func (x *Index) AddPack(pack chunk.ID, entries []BlobEntry) {
	x.mu.Lock()
	defer x.mu.Unlock()
	no, ok := x.packNo[pack]
	if !ok {
		no = uint32(len(x.packs))
		x.packs = append(x.packs, pack)
		x.packNo[pack] = no
	}
	for _, e := range entries {
		if _, dup := x.blobs[e.ID]; dup {
			continue
		}
		x.blobs[e.ID] = packedLocation{pack: no, offset: e.Offset, storedLen: e.StoredLen, rawLen: e.RawLen, typ: e.Type, compression: e.Compression}
	}
}

// Lookup returns the location of a blob.
func (x *Index) Lookup(id chunk.ID) (Location, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	l, ok := x.blobs[id]
	if !ok {
		return Location{}, false
	}
	return Location{Pack: x.packs[l.pack], BlobEntry: BlobEntry{ID: id, Type: l.typ, Compression: l.compression, Offset: l.offset, StoredLen: l.storedLen, RawLen: l.rawLen}}, true
}

// Has reports whether the index knows a blob.
func (x *Index) Has(id chunk.ID) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.blobs[id]
	return ok
}

// Len returns the number of blobs and packs known.
func (x *Index) Len() (blobs, packs int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.blobs), len(x.packs)
}

// PackIndex is the part of an index object that describes one pack.
type PackIndex struct {
	Pack  chunk.ID
	Blobs []BlobEntry
}

var (
	indexEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	indexDecoder, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<30))
	indexCodecMu    sync.Mutex
)

// EncodeIndex returns the index object for packs.
func EncodeIndex(packs []PackIndex) []byte {
	var body []byte
	for _, p := range packs {
		body = append(body, p.Pack[:]...)
		body = binary.AppendUvarint(body, uint64(len(p.Blobs)))
		for _, b := range p.Blobs {
			body = append(body, b.ID[:]...)
			body = append(body, byte(b.Type), byte(b.Compression))
			body = binary.AppendUvarint(body, uint64(b.Offset))
			body = binary.AppendUvarint(body, uint64(b.StoredLen))
			body = binary.AppendUvarint(body, uint64(b.RawLen))
		}
	}
	indexCodecMu.Lock()
	defer indexCodecMu.Unlock()
	return indexEncoder.EncodeAll(body, []byte(indexMagic))
}

// DecodeIndex parses an index object.
func DecodeIndex(obj []byte) ([]PackIndex, error) {
	if !bytes.HasPrefix(obj, []byte(indexMagic)) {
		return nil, fmt.Errorf("%w: index magic missing", ErrCorrupt)
	}
	indexCodecMu.Lock()
	body, err := indexDecoder.DecodeAll(obj[len(indexMagic):], nil)
	indexCodecMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("%w: index: %v", ErrCorrupt, err)
	}
	var packs []PackIndex
	r := body
	for len(r) > 0 {
		var p PackIndex
		if len(r) < chunk.IDSize {
			return nil, fmt.Errorf("%w: index truncated", ErrCorrupt)
		}
		copy(p.Pack[:], r)
		r = r[chunk.IDSize:]
		n, k := binary.Uvarint(r)
		if k <= 0 || n > uint64(len(r)) {
			return nil, fmt.Errorf("%w: index blob count", ErrCorrupt)
		}
		r = r[k:]
		p.Blobs = make([]BlobEntry, n)
		for i := range p.Blobs {
			b := &p.Blobs[i]
			if len(r) < chunk.IDSize+2 {
				return nil, fmt.Errorf("%w: index truncated", ErrCorrupt)
			}
			copy(b.ID[:], r)
			b.Type, b.Compression = BlobType(r[32]), chunk.Compression(r[33])
			r = r[chunk.IDSize+2:]
			var vals [3]uint64
			for j := range vals {
				v, k := binary.Uvarint(r)
				if k <= 0 || v > 1<<32-1 {
					return nil, fmt.Errorf("%w: index entry", ErrCorrupt)
				}
				vals[j], r = v, r[k:]
			}
			b.Offset, b.StoredLen, b.RawLen = uint32(vals[0]), uint32(vals[1]), uint32(vals[2])
		}
		packs = append(packs, p)
	}
	return packs, nil
}

// Packs returns every pack the index knows with the blobs it locates in
// it (a blob stored in two packs is located in one only).
func (x *Index) Packs() map[chunk.ID][]BlobEntry {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := make(map[chunk.ID][]BlobEntry, len(x.packs))
	for id, l := range x.blobs {
		p := x.packs[l.pack]
		out[p] = append(out[p], BlobEntry{ID: id, Type: l.typ, Compression: l.compression, Offset: l.offset, StoredLen: l.storedLen, RawLen: l.rawLen})
	}
	return out
}
