package sync

import "github.com/backupd/backupd/pkg/chunk"

// hasher hashes one file's chunks, one at a time and in order, on a
// goroutine of its own, so that the reader reads or cuts the next chunk
// meanwhile: reading, cutting and hashing are each about 1 GB/s or less
// on one core (BenchmarkChunker, BenchmarkHash), and one large file is
// read by one reader. The zero hasher has no goroutine: it hashes in
// wait, on the reader's (a checkpoint keeps to one core).
type hasher struct {
	in      chan []byte
	out     chan chunk.ID
	pending []byte // without a goroutine: the chunk start was given
}

// newHasher returns a hasher with its goroutine; close ends it.
func newHasher() *hasher {
	h := &hasher{in: make(chan []byte), out: make(chan chunk.ID, 1)}
	go func() {
		defer close(h.out)
		for d := range h.in {
			h.out <- chunk.Hash(d)
		}
	}()
	return h
}

// start hashes data (until wait returns, data must not change).
func (h *hasher) start(data []byte) {
	if h.in == nil {
		h.pending = data
		return
	}
	h.in <- data
}

// wait returns the id of the chunk start was last given.
func (h *hasher) wait() chunk.ID {
	if h.in == nil {
		d := h.pending
		h.pending = nil
		return chunk.Hash(d)
	}
	return <-h.out
}

// close ends the hasher's goroutine; no start or wait is pending.
func (h *hasher) close() {
	if h.in != nil {
		close(h.in)
		for range h.out {
		}
	}
}
