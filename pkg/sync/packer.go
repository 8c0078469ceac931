package sync

import (
	"context"
	gosync "sync"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/repo"
)

type finishedPack struct {
	id      chunk.ID
	data    []byte
	entries []repo.BlobEntry
	pool    *bufferPool // where data goes back once uploaded
}

// packSlack is the room a pack buffer has beyond the pack size, for the
// trailer: a pack of many small blobs is closed before its trailer would
// outgrow it (else Finish would copy the whole pack into a larger buffer,
// which would then stay in the pool).
const packSlack = 256 << 10

// packedSize is the size of a pack of n blobs of blobBytes bytes in all,
// with its trailer and footer.
func packedSize(blobBytes, n int) int { return blobBytes + repo.PackTrailerReadSize(n) }

// packer collects blobs of one type into packs of about size bytes and
// hands full packs to the uploaders.
type packer struct {
	typ  repo.BlobType
	size int
	pool *bufferPool
	// salted: every pack begins with a salt blob (repo.PackBuilder.AddSalt),
	// so that no pack is byte for byte one a standing prune is about to
	// delete.
	salted bool
	// compact: packs end in a compact trailer (format version 3).
	compact bool

	mu  gosync.Mutex
	cur *repo.PackBuilder
	// target is the size the pack being filled aims at: newPacker's ramp
	// for the first, doubled at each pack sent, up to size.
	target int
}

// rampStart is the size a backup's first data pack aims at; the next
// ones double up to the pack size. The link then starts after a quarter
// of a pack is cut, hashed and compressed, not a whole one: in a stop
// after a checkpoint over a 1 Gbit/s link, where the upload is what the
// stop waits for, the link sat idle for 0.25-0.6 s until the first 16 MiB
// were cut, hashed and compressed, with both cores shared among the walk,
// the hashing of the resumed part and MinIO; with the ramp, 0.17-0.26 s
// (benchmarks/RESULTS.md, section 23b). Two more objects per backup of
// more than 12 MiB of new data, and none for one of less than 4 MiB.
const rampStart = 4 << 20

// newPacker returns a packer of blobs of type typ into packs of size
// bytes through pool, the first ones smaller from ramp (0: none) on.
func newPacker(typ repo.BlobType, size, ramp int, pool *bufferPool, compact bool) *packer {
	p := &packer{typ: typ, size: size, pool: pool, compact: compact, target: size}
	if ramp > 0 {
		p.target = min(ramp, size)
	}
	return p
}

// add appends one stored blob. A pack that the blob would push past the
// target size is sent to the uploaders first. add never blocks while
// holding the lock, so a full buffer pool only waits for the uploaders.
func (p *packer) add(ctx context.Context, uploads chan<- finishedPack, id chunk.ID, comp chunk.Compression, stored []byte, rawLen int, st *backupStats) error {
	return p.put(ctx, uploads, len(stored), 1, st, func(pb *repo.PackBuilder) { pb.Add(id, p.typ, comp, stored, rawLen) })
}

// addGroup appends one group (repo.PackBuilder.AddGroup), as add does a
// blob: the group's members stay together in one pack.
func (p *packer) addGroup(ctx context.Context, uploads chan<- finishedPack, frame []byte, members []repo.GroupMember, st *backupStats) error {
	return p.put(ctx, uploads, len(frame), len(members), st, func(pb *repo.PackBuilder) { pb.AddGroup(p.typ, frame, members) })
}

// put runs add into the current pack, for n stored bytes of count blobs,
// first sending the pack on if they would take it past its target size or
// past MaxPackBlobs.
func (p *packer) put(ctx context.Context, uploads chan<- finishedPack, n, count int, st *backupStats, add func(*repo.PackBuilder)) error {
	for {
		p.mu.Lock()
		target := p.target
		if p.cur != nil && p.cur.Count() > 0 && (p.cur.Len()+n > target || p.cur.Full(target) || p.cur.Count()+count > repo.MaxPackBlobs ||
			packedSize(p.cur.Len()+n, p.cur.Count()+count) > target+packSlack) {
			full := p.cur
			p.cur = nil
			p.target = min(2*p.target, p.size)
			p.mu.Unlock()
			if err := send(ctx, uploads, full, p.pool); err != nil {
				return err
			}
			continue
		}
		if p.cur == nil {
			p.mu.Unlock()
			buf, err := p.pool.get(ctx)
			if err != nil {
				return err
			}
			p.mu.Lock()
			if p.cur == nil {
				p.cur = repo.NewPackBuilderBuffer(buf)
				if p.compact {
					p.cur.SetCompactTrailer()
				}
				if p.salted {
					p.cur.AddSalt(p.typ)
				}
			} else {
				p.pool.put(buf)
			}
			p.mu.Unlock()
			continue
		}
		add(p.cur)
		p.mu.Unlock()
		st.storedBytes.Add(int64(n))
		return nil
	}
}

func (p *packer) flush(ctx context.Context, uploads chan<- finishedPack) error {
	p.mu.Lock()
	full := p.cur
	p.cur = nil
	p.mu.Unlock()
	if full == nil || full.Count() == 0 {
		return nil
	}
	return send(ctx, uploads, full, p.pool)
}

func send(ctx context.Context, uploads chan<- finishedPack, pb *repo.PackBuilder, pool *bufferPool) error {
	data, id, entries := pb.Finish()
	select {
	case uploads <- finishedPack{id: id, data: data, entries: entries, pool: pool}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// bufferPool hands out at most n buffers of length size, reusing returned
// ones, so that the memory a pipeline holds is bounded.
type bufferPool struct {
	size int
	free chan []byte
	sem  chan struct{}
	// shrink: a returned buffer that grew beyond size is dropped (the
	// next get makes a new one of size), so that a rare large chunk does
	// not keep its memory in the pool.
	shrink bool
}

func newBufferPool(n, size int) *bufferPool {
	return &bufferPool{size: size, free: make(chan []byte, n), sem: make(chan struct{}, n)}
}

func (p *bufferPool) get(ctx context.Context) ([]byte, error) {
	select {
	case b := <-p.free:
		return p.sized(b), nil
	default:
	}
	select {
	case b := <-p.free:
		return p.sized(b), nil
	case p.sem <- struct{}{}:
		return make([]byte, p.size), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// sized returns b, or a new buffer in place of a dropped one (nil), at
// length size.
func (p *bufferPool) sized(b []byte) []byte {
	if cap(b) < p.size {
		return make([]byte, p.size)
	}
	return b[:p.size]
}

func (p *bufferPool) put(b []byte) {
	if p.shrink && cap(b) > p.size {
		b = nil
	}
	select {
	case p.free <- b[:cap(b)]:
	default:
		panic("sync: bufferPool.put: more buffers returned than handed out")
	}
}
