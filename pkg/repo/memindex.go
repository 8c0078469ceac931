package repo

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/bits"
	"os"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/backupd/backupd/pkg/chunk"
)

// Location says where a blob is stored.
type Location struct {
	Pack chunk.ID
	BlobEntry
}

// Index maps blob ids to their locations in packs. It is safe for
// concurrent use.
//
// Memory is bounded by design, not by the repository's size. Each blob is
// one fixed-size record of 52 bytes (its id, a pack number with the type
// and compression in its low 4 bits, offset, stored and raw length, raw
// offset), with no pointers for the garbage collector to scan. Records
// are kept in runs sorted by id, oldest first, and in a tail of the
// newest (up to 16,384, unsorted, with a map of their positions). A full
// tail is sorted into a run; small runs are merged in memory as a binary
// counter would; each has a fanout table (4 bytes per ~2 records), so a
// lookup searches only the few records of its id's range. Once the runs in memory take more than the index's
// memory budget (SetMemory; DefaultIndexMemory), they are merged into one
// run spilled to an unlinked temporary file (in the node cache's
// directory, else the system's) and read with pread, never mapped: what
// stays in memory of a spilled run is a fanout table (the first bits of
// an id give the range of records, about 10 to a range) and a one-byte
// fingerprint of each record, so that a lookup that misses reads nothing
// (in ~96 % of runs) and one that hits reads one record. Spilled runs are merged four at a
// time when they are of one size class, so that there are a few of them
// and each record is written a few times (log4 of the index's size over
// the budget). Memory is then about 54 bytes a blob up to the budget, and about
// 1.4 bytes a blob beyond it (52 on disk); merges run outside the lock,
// one at a time, with adders waiting only when the memory runs reach 1.5
// times the budget meanwhile.
//
// A blob added twice keeps the location added first, as a map would:
// lookups search the runs oldest first, and merges keep the older of two
// equal ids. A pack beyond 2^28 (never: its ids alone would take 8 GiB),
// or an entry whose type or compression the format does not know (every
// reader refuses those), is not recorded. A spilled run that cannot be
// read (an I/O error on the temporary file) reads as missing blobs: a
// backup stores them again, a restore reports them. A spill or merge that
// fails (a full disk) leaves the runs in memory and is tried again once
// the index has doubled.
type Index struct {
	mu   sync.RWMutex
	cond sync.Cond // on mu; broadcast when a merge ends

	packs  []chunk.ID
	packNo map[chunk.ID]uint32

	tail    []record           // the newest records, unsorted, no two alike
	tailPos map[chunk.ID]int32 // where each is in tail
	runs    []*run             // oldest first: the spilled ones, then those in memory
	stored  int                // records in runs and tail
	inMem   int64              // bytes of the runs in memory
	merging bool               // a merge runs (outside the lock)
	retryAt int                // after a failed merge: stored at which to try again
	// distinct caches Len's count of blobs (-1: to be counted).
	distinct atomic.Int64

	memory int64  // budget of the runs in memory, bytes
	dir    string // where runs are spilled ("": os.TempDir())

	// For prune: treesOnly records the tree blobs alone (what walking
	// snapshots needs), and sink, if set, receives every pack added with
	// all its entries. Both stay with the Index through replace.
	treesOnly bool
	sink      func(pack chunk.ID, entries []BlobEntry)
}

// DefaultIndexMemory is the memory an Index keeps its records in before it
// spills them to temporary files: 16 MiB, about 320,000 blobs.
const DefaultIndexMemory = 16 << 20

const (
	recordSize = chunk.IDSize + 5*4
	kindBits   = 4 // type << 3 | compression
	maxPacks   = 1 << (32 - kindBits)
	tailMax    = 16384
	mergeWidth = 4 // spilled runs merged at once
	// readRecords is how many records a merge reads from a spilled run
	// at once (208 KiB).
	readRecords = 4096
)

// record is a blob's location, 52 bytes in memory and in a spill file.
type record struct {
	id        chunk.ID
	packKind  uint32 // pack number << kindBits | type << 3 | compression
	offset    uint32
	storedLen uint32
	rawLen    uint32
	rawOffset uint32
}

func cmpRecord(a, b record) int { return cmpID(&a.id, &b.id) }

// cmpID compares ids as bytes.Compare would, faster: most differ in their
// first 8 bytes.
func cmpID(a, b *chunk.ID) int {
	x, y := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(b[:8])
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return bytes.Compare(a[8:], b[8:])
}

func (r *record) put(b []byte) {
	copy(b, r.id[:])
	b = b[chunk.IDSize:]
	binary.LittleEndian.PutUint32(b, r.packKind)
	binary.LittleEndian.PutUint32(b[4:], r.offset)
	binary.LittleEndian.PutUint32(b[8:], r.storedLen)
	binary.LittleEndian.PutUint32(b[12:], r.rawLen)
	binary.LittleEndian.PutUint32(b[16:], r.rawOffset)
}

func (r *record) get(b []byte) {
	r.id = chunk.ID(b[:chunk.IDSize])
	b = b[chunk.IDSize:]
	r.packKind = binary.LittleEndian.Uint32(b)
	r.offset = binary.LittleEndian.Uint32(b[4:])
	r.storedLen = binary.LittleEndian.Uint32(b[8:])
	r.rawLen = binary.LittleEndian.Uint32(b[12:])
	r.rawOffset = binary.LittleEndian.Uint32(b[16:])
}

func (r *record) entry() BlobEntry {
	return BlobEntry{ID: r.id, Type: BlobType(r.packKind >> 3 & 1), Compression: chunk.Compression(r.packKind & 7),
		Offset: r.offset, StoredLen: r.storedLen, RawLen: r.rawLen, RawOffset: r.rawOffset}
}

func (r *record) pack() uint32 { return r.packKind >> kindBits }

// run is a sorted run of records without two alike, in memory (recs) or
// spilled (f, with fan and fp in memory). It never changes once made.
type run struct {
	n    int
	recs []record
	f    *os.File
	// shift: an id's bucket is its first 32 bits >> shift; fan[b] is the
	// first record of bucket b (fan has one more entry than buckets).
	shift uint
	fan   []uint32
	fp    []uint8 // byte 4 of each record's id
	busy  bool    // being merged (set and read under Index.mu)
}

func fingerprint(id *chunk.ID) uint8 { return id[4] }

// memRun makes a run in memory of recs (sorted, no two alike), with a
// fanout table of about one entry per two records (2 bytes a blob): a
// lookup binary-searches only its id's range, a few records in one or two
// cache lines, instead of the whole run (17 dependent cache misses in a
// run of 100,000). Ids are SHA-256 hashes, so ranges are even; a crafted
// index that crowds one range costs a binary search of it, no more.
func memRun(recs []record) *run {
	fanBits := min(bits.Len(uint(len(recs))>>1), 28)
	r := &run{n: len(recs), recs: recs, shift: uint(32 - fanBits), fan: make([]uint32, 1<<fanBits+1)}
	for i := range recs {
		r.fan[binary.BigEndian.Uint32(recs[i].id[:4])>>r.shift+1]++
	}
	for i := 1; i < len(r.fan); i++ {
		r.fan[i] += r.fan[i-1]
	}
	return r
}

func (r *run) find(id *chunk.ID) (record, bool) {
	b := binary.BigEndian.Uint32(id[:4]) >> r.shift
	if r.f == nil {
		recs := r.recs[r.fan[b]:r.fan[b+1]]
		for len(recs) > 0 { // binary search, inlined
			h := len(recs) >> 1
			switch c := cmpID(&recs[h].id, id); {
			case c == 0:
				return recs[h], true
			case c < 0:
				recs = recs[h+1:]
			default:
				recs = recs[:h]
			}
		}
		return record{}, false
	}
	fp := fingerprint(id)
	for i := r.fan[b]; i < r.fan[b+1]; i++ {
		if r.fp[i] != fp {
			continue
		}
		var buf [recordSize]byte
		if _, err := r.f.ReadAt(buf[:], int64(i)*recordSize); err != nil {
			return record{}, false
		}
		var rec record
		rec.get(buf[:])
		if rec.id == *id {
			return rec, true
		}
	}
	return record{}, false
}

func (r *run) memBytes() int64 {
	if r.f != nil {
		return 0
	}
	return int64(r.n) * recordSize
}

func (r *run) close() {
	if r.f != nil {
		r.f.Close()
	}
}

// NewIndex returns an empty index, with DefaultIndexMemory.
func NewIndex() *Index {
	x := &Index{packNo: map[chunk.ID]uint32{}, tailPos: map[chunk.ID]int32{}, memory: DefaultIndexMemory}
	x.cond.L = &x.mu
	return x
}

// SetMemory sets how many bytes of records the index keeps in memory
// before it spills them to temporary files (at least 1 MiB is kept as
// the tail and its merges; <= 0 for DefaultIndexMemory). It applies from
// the next blobs added.
func (x *Index) SetMemory(bytes int64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if bytes <= 0 {
		bytes = DefaultIndexMemory
	}
	x.memory = bytes
}

// setDir sets where runs are spilled ("" for os.TempDir()).
func (x *Index) setDir(dir string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.dir = dir
}

// emptyLike returns an empty index with x's memory budget and spill
// directory.
func (x *Index) emptyLike() *Index {
	x.mu.RLock()
	defer x.mu.RUnlock()
	y := NewIndex()
	y.memory, y.dir = x.memory, x.dir
	return y
}

// AddPack records the blobs of one pack.
func (x *Index) AddPack(pack chunk.ID, entries []BlobEntry) {
	if x.sink != nil {
		x.sink(pack, entries)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for x.merging && x.inMem > x.memory+x.memory/2 {
		x.cond.Wait() // a merge is behind: let it catch up
	}
	no, ok := x.packNo[pack]
	if !ok {
		if len(x.packs) >= maxPacks {
			return
		}
		no = uint32(len(x.packs))
		x.packs = append(x.packs, pack)
		x.packNo[pack] = no
	}
	added := false
	for i := range entries {
		e := &entries[i]
		if x.treesOnly && e.Type != TreeBlob || e.Type > TreeBlob || e.Compression > 7 {
			continue
		}
		if _, dup := x.tailPos[e.ID]; dup {
			continue
		}
		x.tailPos[e.ID] = int32(len(x.tail))
		x.tail = append(x.tail, record{id: e.ID, packKind: no<<kindBits | uint32(e.Type)<<3 | uint32(e.Compression),
			offset: e.Offset, storedLen: e.StoredLen, rawLen: e.RawLen, rawOffset: e.RawOffset})
		x.stored++
		added = true
		if len(x.tail) >= tailMax {
			x.sealTail()
		}
	}
	if added {
		x.distinct.Store(-1)
		x.merge()
	}
}

// sealTail sorts the tail into a run in memory and merges the newest runs
// in memory while the older of the last two is at most twice the newer
// and both take at most a quarter of the budget.
func (x *Index) sealTail() {
	if len(x.tail) == 0 {
		return
	}
	recs := slices.Clone(x.tail)
	slices.SortFunc(recs, cmpRecord)
	x.tail = x.tail[:0]
	clear(x.tailPos)
	x.runs = append(x.runs, memRun(recs))
	x.inMem += int64(len(recs)) * recordSize
	for k := len(x.runs); k >= 2; k = len(x.runs) {
		a, b := x.runs[k-2], x.runs[k-1]
		if a.f != nil || a.busy || b.busy || a.n > 2*b.n || int64(a.n+b.n)*recordSize > x.memory/4 {
			break
		}
		out := make([]record, 0, a.n+b.n)
		mergeInto([]*run{a, b}, nil, func(r *record) error { out = append(out, *r); return nil })
		x.stored -= a.n + b.n - len(out)
		x.inMem -= a.memBytes() + b.memBytes() - int64(len(out))*recordSize
		x.runs = append(x.runs[:k-2], memRun(slices.Clip(out)))
	}
}

// merge runs the merges the runs call for, one at a time in the whole
// index (another adder that finds one running leaves it to that one), each
// outside the lock: the runs it reads never change, and lookups go on in
// them until its result takes their place. It is called, and returns,
// with x.mu held.
func (x *Index) merge() {
	if x.merging || x.stored < x.retryAt {
		return
	}
	for {
		job := x.nextJob()
		if job == nil {
			return
		}
		for _, r := range job {
			r.busy = true
		}
		x.merging = true
		dir := x.dir
		x.mu.Unlock()
		out, err := spill(dir, job)
		x.mu.Lock()
		x.merging = false
		x.cond.Broadcast()
		first := slices.Index(x.runs, job[0])
		for _, r := range job {
			r.busy = false
		}
		if err != nil {
			x.retryAt = 2 * x.stored
			return
		}
		n := 0
		for _, r := range job {
			n += r.n
			x.inMem -= r.memBytes()
			r.close() // no lookup is reading it: they hold the read lock
		}
		x.stored -= n - out.n
		x.runs = slices.Replace(x.runs, first, first+len(job), out)
	}
}

// nextJob returns the runs to merge next, if any: every run in memory
// once they exceed the budget, else the last mergeWidth spilled runs when
// they are of one size class.
func (x *Index) nextJob() []*run {
	spilled := 0
	for spilled < len(x.runs) && x.runs[spilled].f != nil {
		spilled++
	}
	if x.inMem > x.memory && spilled < len(x.runs) {
		return slices.Clone(x.runs[spilled:])
	}
	if spilled >= mergeWidth {
		s := x.runs[spilled-mergeWidth : spilled]
		if x.sizeClass(s[0].n) == x.sizeClass(s[len(s)-1].n) {
			return slices.Clone(s)
		}
	}
	return nil
}

// sizeClass is log4 of n over the records a spill writes.
func (x *Index) sizeClass(n int) int {
	unit := max(x.memory/recordSize, 1)
	c := 0
	for q := int64(n) / unit; q >= mergeWidth; q /= mergeWidth {
		c++
	}
	return c
}

// spill merges runs (oldest first) into one run in a new unlinked
// temporary file in dir.
func spill(dir string, runs []*run) (out *run, err error) {
	f, err := os.CreateTemp(dir, ".tmp-index-*") // "": os.TempDir()
	if err != nil && dir != "" {
		f, err = os.CreateTemp("", ".tmp-index-*") // the cache's directory is gone (a purge)
	}
	if err != nil {
		return nil, fmt.Errorf("index: spill: %w", err)
	}
	os.Remove(f.Name()) // unlinked: gone with the descriptor, whatever happens
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	total := 0
	for _, r := range runs {
		total += r.n
	}
	fanBits := min(bits.Len(uint(total)>>4), 28)
	out = &run{f: f, shift: uint(32 - fanBits), fan: make([]uint32, 1<<fanBits+1), fp: make([]uint8, 0, total)}
	buf := make([]byte, 0, readRecords*recordSize)
	err = mergeInto(runs, nil, func(r *record) error {
		out.fan[binary.BigEndian.Uint32(r.id[:4])>>out.shift+1]++
		out.fp = append(out.fp, fingerprint(&r.id))
		buf = buf[:len(buf)+recordSize]
		r.put(buf[len(buf)-recordSize:])
		if len(buf) == cap(buf) {
			if _, err := f.Write(buf); err != nil {
				return fmt.Errorf("index: spill: %w", err)
			}
			buf = buf[:0]
		}
		return nil
	})
	if err == nil && len(buf) > 0 {
		if _, werr := f.Write(buf); werr != nil {
			err = fmt.Errorf("index: spill: %w", werr)
		}
	}
	if err != nil {
		return nil, err
	}
	for i := 1; i < len(out.fan); i++ {
		out.fan[i] += out.fan[i-1]
	}
	out.n = len(out.fp)
	out.fp = slices.Clip(out.fp)
	return out, nil
}

// cursor reads a run in order.
type cursor struct {
	rest []record // what is at hand
	r    *run
	next int // of a spilled run: the next record to read
	buf  []byte
	recs []record
	cur  record
	ok   bool
}

func (c *cursor) advance() error {
	if len(c.rest) == 0 && c.r.f != nil && c.next < c.r.n {
		k := min(readRecords, c.r.n-c.next)
		if c.buf == nil {
			c.buf, c.recs = make([]byte, readRecords*recordSize), make([]record, readRecords)
		}
		b := c.buf[:k*recordSize]
		if _, err := c.r.f.ReadAt(b, int64(c.next)*recordSize); err != nil {
			return fmt.Errorf("index: read spilled run: %w", err)
		}
		for i := range k {
			c.recs[i].get(b[i*recordSize:])
		}
		c.rest, c.next = c.recs[:k], c.next+k
	}
	if c.ok = len(c.rest) > 0; c.ok {
		c.cur, c.rest = c.rest[0], c.rest[1:]
	}
	return nil
}

// mergeInto gives emit the records of runs (oldest first) and then of
// tail (sorted, the newest) in id order, each id once: the oldest record
// of an id.
func mergeInto(runs []*run, tail []record, emit func(*record) error) error {
	cs := make([]cursor, 0, len(runs)+1)
	for _, r := range runs {
		cs = append(cs, cursor{r: r, rest: r.recs})
	}
	if len(tail) > 0 {
		cs = append(cs, cursor{r: &run{}, rest: tail})
	}
	for i := range cs {
		if err := cs[i].advance(); err != nil {
			return err
		}
	}
	for {
		m := -1
		for i := range cs {
			if cs[i].ok && (m < 0 || cmpID(&cs[i].cur.id, &cs[m].cur.id) < 0) {
				m = i
			}
		}
		if m < 0 {
			return nil
		}
		id := cs[m].cur.id
		if err := emit(&cs[m].cur); err != nil {
			return err
		}
		for i := m; i < len(cs); i++ {
			if cs[i].ok && cs[i].cur.id == id {
				if err := cs[i].advance(); err != nil {
					return err
				}
			}
		}
	}
}

// each gives fn every record of the index once, in id order, under the
// read lock.
func (x *Index) each(fn func(*record) error) error {
	tail := slices.SortedFunc(slices.Values(x.tail), cmpRecord)
	return mergeInto(x.runs, tail, fn)
}

// find returns the record of id: the oldest.
func (x *Index) find(id *chunk.ID) (record, bool) {
	for _, r := range x.runs {
		if rec, ok := r.find(id); ok {
			return rec, true
		}
	}
	if i, ok := x.tailPos[*id]; ok {
		return x.tail[i], true
	}
	return record{}, false
}

// Lookup returns the location of a blob.
func (x *Index) Lookup(id chunk.ID) (Location, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	rec, ok := x.find(&id)
	if !ok {
		return Location{}, false
	}
	return Location{Pack: x.packs[rec.pack()], BlobEntry: rec.entry()}, true
}

// Has reports whether the index knows a blob.
func (x *Index) Has(id chunk.ID) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.find(&id)
	return ok
}

// HasPack reports whether the index knows a pack.
func (x *Index) HasPack(id chunk.ID) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.packNo[id]
	return ok
}

// Len returns the number of blobs and packs known. With more than one run
// it counts the blobs in one pass over the index (the result is kept
// until the next blob is added).
func (x *Index) Len() (blobs, packs int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if len(x.runs) == 0 || len(x.runs) == 1 && len(x.tail) == 0 {
		return x.stored, len(x.packs)
	}
	if n := x.distinct.Load(); n >= 0 {
		return int(n), len(x.packs)
	}
	n := 0
	if err := x.each(func(*record) error { n++; return nil }); err != nil {
		return x.stored, len(x.packs) // an upper bound: a spilled run unreadable
	}
	x.distinct.Store(int64(n)) // no writer until the read lock is released
	return n, len(x.packs)
}

// Packs returns every pack the index knows with the blobs it locates in
// it (a blob stored in two packs is located in one only).
func (x *Index) Packs() map[chunk.ID][]BlobEntry {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := make(map[chunk.ID][]BlobEntry, len(x.packs))
	x.each(func(r *record) error {
		p := x.packs[r.pack()]
		out[p] = append(out[p], r.entry())
		return nil
	}) // an unreadable spilled run's blobs are missing, as in Lookup
	return out
}

// replace makes x hold what y holds (y must no longer be used); x keeps
// its memory budget, spill directory, treesOnly and sink.
func (x *Index) replace(y *Index) {
	y.mu.Lock()
	for y.merging {
		y.cond.Wait()
	}
	packs, packNo, tail, tailPos, runs, stored, inMem := y.packs, y.packNo, y.tail, y.tailPos, y.runs, y.stored, y.inMem
	y.packs, y.packNo, y.tail, y.tailPos, y.runs, y.stored, y.inMem = nil, map[chunk.ID]uint32{}, nil, map[chunk.ID]int32{}, nil, 0, 0
	y.mu.Unlock()

	x.mu.Lock()
	for x.merging {
		x.cond.Wait()
	}
	old := x.runs
	x.packs, x.packNo, x.tail, x.tailPos, x.runs, x.stored, x.inMem = packs, packNo, tail, tailPos, runs, stored, inMem
	x.retryAt = 0
	x.distinct.Store(-1)
	x.mu.Unlock()
	for _, r := range old {
		r.close() // no lookup reads them: they held the read lock
	}
}

// packsNotIn returns the packs the index knows that are not in set.
func (x *Index) packsNotIn(set map[chunk.ID]bool) map[chunk.ID]bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := map[chunk.ID]bool{}
	for _, p := range x.packs {
		if !set[p] {
			out[p] = true
		}
	}
	return out
}

// SetIndexMemory sets the memory budget of the repository's in-memory
// index (Index.SetMemory): the records it keeps in memory before it spills
// them to temporary files, for this index and those loaded in its place.
func (r *Repository) SetIndexMemory(bytes int64) { r.index.SetMemory(bytes) }

// newIndex returns an empty index with the memory budget and spill
// directory of r's.
func (r *Repository) newIndex() *Index { return r.index.emptyLike() }

// Footprint returns about how many bytes the index takes in memory (its
// records, tail, fanout tables, fingerprints and pack ids) and in its
// temporary files.
func (x *Index) Footprint() (memory, disk int64) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	memory = x.inMem + int64(cap(x.tail))*(recordSize+48) + int64(len(x.packs))*(chunk.IDSize+64)
	for _, r := range x.runs {
		memory += int64(len(r.fan))*4 + int64(len(r.fp))
		if r.f != nil {
			disk += int64(r.n) * recordSize
		}
	}
	return memory, disk
}

// MemBytes is the memory the index holds, in bytes (Footprint's first
// figure): what a cache of open repositories budgets (the daemon's
// limits.index_memory). Spilled records are on disk, not counted.
func (x *Index) MemBytes() int64 {
	m, _ := x.Footprint()
	return m
}
