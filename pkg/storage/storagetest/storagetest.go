// Package storagetest is the conformance suite that every storage.Storage
// backend and wrapper runs. It checks the guarantees written down in the
// doc comment of storage.Storage, so that code above the storage layer can
// rely on them whatever backend it is given.
//
// A backend's test is a few lines:
//
//	func TestConformance(t *testing.T) {
//		storagetest.Run(t, func(t *testing.T) storage.Storage {
//			s, err := local.New(t.TempDir())
//			if err != nil {
//				t.Fatal(err)
//			}
//			return s
//		})
//	}
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backupd/backupd/pkg/storage"
)

// Options tunes the suite, mainly so that slow remote backends can shrink
// its heaviest tests. The zero value gives the defaults.
type Options struct {
	// ListCount is how many objects the large listing test puts and then
	// lists; 0 means 2500 (more than one page of a typical object store
	// listing).
	ListCount int
	// LargeSize is the size in bytes of the large round-trip object; 0
	// means 20 MiB.
	LargeSize int
	// Concurrency is how many goroutines put objects at once in the
	// concurrency and listing tests; 0 means 16.
	Concurrency int
	// MaxKeyLength is the length of the longest key the storage must
	// accept; 0 means 1024, the limit of storage.ValidateKey. A wrapper
	// that adds a prefix to keys accepts that much less.
	MaxKeyLength int
	// LostReplies says that the storage retries calls whose replies may
	// have been lost after the backend carried them out (a retry wrapper
	// over a faulty one). A PutIfAbsent may then fail with
	// storage.ErrExists although the object there is the one it stored,
	// as the storage.Storage documentation allows; the suite accepts that
	// when the object holds exactly the bytes of that PutIfAbsent; and
	// likewise a PutIfMatch that fails with storage.ErrVersionMismatch.
	LostReplies bool
	// ContentVersions says that the storage derives an object's Version
	// from its content (S3 and MinIO ETags), so that replacing an object
	// with identical bytes may keep its Version. Without it the suite
	// requires a new Version on every replacement.
	ContentVersions bool
}

func (o Options) withDefaults() Options {
	if o.ListCount <= 0 {
		o.ListCount = 2500
	}
	if o.LargeSize <= 0 {
		o.LargeSize = 20 << 20
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.MaxKeyLength <= 0 || o.MaxKeyLength > 1024 {
		o.MaxKeyLength = 1024
	}
	return o
}

// Run runs the conformance suite with default Options. The subtests run
// in parallel; newStorage is called once per subtest, possibly from
// several goroutines at once, and must return a new, empty Storage that no
// other subtest sees (a fresh directory, bucket prefix or in-memory store).
// The suite closes it when the subtest ends.
func Run(t *testing.T, newStorage func(t *testing.T) storage.Storage) {
	RunWithOptions(t, Options{}, newStorage)
}

// RunWithOptions runs the conformance suite tuned by opts; see Run.
func RunWithOptions(t *testing.T, opts Options, newStorage func(t *testing.T) storage.Storage) {
	s := &suite{opts: opts.withDefaults(), newStorage: newStorage}
	tests := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"PutGet", s.testPutGet},
		{"PutLarge", s.testPutLarge},
		{"PutReadsExactlySize", s.testPutReadsExactlySize},
		{"PutShortBody", s.testPutShortBody},
		{"PutBodyKinds", s.testPutBodyKinds},
		{"Overwrite", s.testOverwrite},
		{"GetRange", s.testGetRange},
		{"Stat", s.testStat},
		{"NotFound", s.testNotFound},
		{"Delete", s.testDelete},
		{"List", s.testList},
		{"ListOddPrefixes", s.testListOddPrefixes},
		{"ListMany", s.testListMany},
		{"ListStopsOnError", s.testListStopsOnError},
		{"ListWhileDeleting", s.testListWhileDeleting},
		{"InvalidKeys", s.testInvalidKeys},
		{"ValidKeys", s.testValidKeys},
		{"ConcurrentPuts", s.testConcurrentPuts},
		{"ConcurrentPutsSameKey", s.testConcurrentPutsSameKey},
		{"PutCancelled", s.testPutCancelled},
		{"PutBodyFails", s.testPutBodyFails},
		{"PutCancelledMidway", s.testPutCancelledMidway},
		{"CancelledCalls", s.testCancelledCalls},
		{"ListCancelledMidway", s.testListCancelledMidway},
		{"PutIfAbsent", s.testPutIfAbsent},
		{"PutIfAbsentRace", s.testPutIfAbsentRace},
		{"PutIfAbsentBody", s.testPutIfAbsentBody},
		{"PutIfAbsentLarge", s.testPutIfAbsentLarge},
		{"PutIfMatch", s.testPutIfMatch},
		{"PutIfMatchMissing", s.testPutIfMatchMissing},
		{"Versions", s.testVersions},
		{"VersionsOfIdenticalBytes", s.testVersionsOfIdenticalBytes},
		{"PutIfMatchRace", s.testPutIfMatchRace},
		{"PutIfMatchRaceOthers", s.testPutIfMatchRaceOthers},
		{"PutIfMatchBody", s.testPutIfMatchBody},
		{"PutIfMatchLarge", s.testPutIfMatchLarge},
		{"GetWithInfo", s.testGetWithInfo},
		{"CleanUploadsEmpty", s.testCleanUploadsEmpty},
		{"CleanUploadsKeepsObjects", s.testCleanUploadsKeepsObjects},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t)
		})
	}
}

type suite struct {
	opts       Options
	newStorage func(t *testing.T) storage.Storage
}

// open returns a fresh storage for t, closed when t ends, and checks that
// it is empty.
func (s *suite) open(t *testing.T) storage.Storage {
	t.Helper()
	st := s.newStorage(t)
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if got := listKeys(t, st, ""); len(got) != 0 {
		t.Fatalf("newStorage returned a storage that is not empty: %d objects", len(got))
	}
	return st
}

func (s *suite) testPutGet(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	sizes := []int{0, 1, 100, 64<<10 + 1, 1<<20 - 1, 1 << 20, 1<<20 + 13, 3<<20 + 7}
	for i, n := range sizes {
		key := fmt.Sprintf("putget/%d", n)
		data := randomBytes(uint64(i), n)
		orig := bytes.Clone(data)
		put(t, st, key, data)
		// The caller keeps ownership of the body: changing it afterwards
		// must not change the object.
		clear(data)
		checkObject(t, st, key, orig)
		// Changing what Get returned must not change the object either.
		got := get(t, st, key, 0, -1)
		clear(got)
		checkObject(t, st, key, orig)
	}
	// storage.ReadAll works on the result.
	b, err := storage.ReadAll(ctx, st, "putget/100", 0, -1)
	if err != nil || !bytes.Equal(b, randomBytes(2, 100)) {
		t.Errorf("ReadAll(putget/100) = %d bytes, %v; want the 100 bytes put", len(b), err)
	}
}

func (s *suite) testPutLarge(t *testing.T) {
	st := s.open(t)
	n := s.opts.LargeSize
	data := randomBytes(42, n)
	put(t, st, "large/object", data)
	checkObject(t, st, "large/object", data)
	// Ranges across the middle and up to the end of a large object.
	mid := int64(n / 2)
	for _, r := range []struct{ off, length int64 }{
		{mid - 3, 2<<20 + 5},
		{int64(n) - 10, -1},
		{int64(n) - 10, 100},
		{1, int64(n) - 2},
	} {
		end := int64(n)
		if r.length >= 0 {
			end = min(end, r.off+r.length)
		}
		equalBytes(t, fmt.Sprintf("Get(large/object, %d, %d)", r.off, r.length),
			get(t, st, "large/object", r.off, r.length), data[r.off:end])
	}
}

func (s *suite) testPutReadsExactlySize(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	// The body holds more bytes than size; reading any of them fails, so a
	// backend that reads past size (to find the length, to hash, ...) fails
	// here.
	for _, tc := range []struct{ size, extra int }{{0, 10}, {1000, 1}, {1<<20 + 3, 1 << 10}} {
		key := fmt.Sprintf("exact/%d", tc.size)
		data := randomBytes(7, tc.size+tc.extra)
		body := &strictReader{data: data, limit: int64(tc.size)}
		if err := st.Put(ctx, key, body, int64(tc.size)); err != nil {
			t.Errorf("Put(%s) of %d bytes from a longer body: %v", key, tc.size, err)
			continue
		}
		checkObject(t, st, key, data[:tc.size])
	}
}

func (s *suite) testPutShortBody(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	// A body shorter than size must fail and store nothing.
	data := randomBytes(8, 1000)
	if err := st.Put(ctx, "short/new", bytes.NewReader(data), 1001); err == nil {
		t.Errorf("Put(short/new) with a body shorter than size: got nil error")
	}
	checkAbsent(t, st, "short/new")

	// Over an existing object, the previous content stays.
	old := randomBytes(9, 500)
	put(t, st, "short/old", old)
	if err := st.Put(ctx, "short/old", bytes.NewReader(data), 2000); err == nil {
		t.Errorf("Put(short/old) with a body shorter than size: got nil error")
	}
	checkObject(t, st, "short/old", old)
	checkListed(t, st, "short/", map[string]int64{"short/old": 500})
}

func (s *suite) testPutBodyKinds(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	data := randomBytes(10, 1<<20+321)

	// A reader with only Read and Seek.
	if err := st.Put(ctx, "kinds/plain", &seekReader{data: data}, int64(len(data))); err != nil {
		t.Fatalf("Put(kinds/plain): %v", err)
	}
	checkObject(t, st, "kinds/plain", data)

	// A file: Put must not close it, the caller owns it.
	f, err := os.CreateTemp(t.TempDir(), "body")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, "kinds/file", f, int64(len(data))); err != nil {
		t.Fatalf("Put(kinds/file): %v", err)
	}
	checkObject(t, st, "kinds/file", data)
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Errorf("body file unusable after Put (closed?): %v", err)
	}
	if _, err := f.Read(make([]byte, 1)); err != nil {
		t.Errorf("body file unusable after Put (closed?): %v", err)
	}
}

func (s *suite) testOverwrite(t *testing.T) {
	st := s.open(t)
	a := randomBytes(11, 3000)
	b := randomBytes(12, 1200) // shorter: no leftovers from a may remain
	c := randomBytes(13, 5000)

	put(t, st, "over/key", a)
	put(t, st, "over/key", a) // same bytes again: harmless
	checkObject(t, st, "over/key", a)
	put(t, st, "over/key", b)
	checkObject(t, st, "over/key", b)
	put(t, st, "over/key", c)
	checkObject(t, st, "over/key", c)
	put(t, st, "over/key", nil)
	checkObject(t, st, "over/key", nil)
	checkListed(t, st, "over/", map[string]int64{"over/key": 0})
}

func (s *suite) testGetRange(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	const n = 1000
	data := randomBytes(14, n)
	put(t, st, "range/obj", data)
	put(t, st, "range/empty", nil)

	for _, r := range []struct{ off, length, wantFrom, wantTo int64 }{
		{0, -1, 0, n},
		{0, n, 0, n},
		{0, n + 1, 0, n},
		{10, 20, 10, 30},
		{0, 1, 0, 1},
		{n - 1, -1, n - 1, n},
		{n - 1, 1, n - 1, n},
		{990, 100, 990, n},
		{500, 0, 500, 500},
		{0, 0, 0, 0},
		{n, -1, n, n},
		{n, 10, n, n},
		{n, 0, n, n},
		{5, -7, 5, n}, // any negative length reads to the end
	} {
		equalBytes(t, fmt.Sprintf("Get(range/obj, %d, %d)", r.off, r.length),
			get(t, st, "range/obj", r.off, r.length), data[r.wantFrom:r.wantTo])
	}
	for _, r := range []struct{ off, length int64 }{{0, -1}, {0, 10}, {0, 0}} {
		equalBytes(t, fmt.Sprintf("Get(range/empty, %d, %d)", r.off, r.length),
			get(t, st, "range/empty", r.off, r.length), nil)
	}

	for _, r := range []struct {
		key         string
		off, length int64
	}{
		{"range/obj", n + 1, -1},
		{"range/obj", n + 1, 0},
		{"range/obj", n + 1000, 10},
		{"range/obj", -1, 10},
		{"range/obj", -1, -1},
		{"range/obj", -n, n},
		{"range/empty", 1, -1},
		{"range/empty", -1, 0},
	} {
		rc, err := st.Get(ctx, r.key, r.off, r.length)
		if err == nil {
			rc.Close()
		}
		if !errors.Is(err, storage.ErrInvalidRange) {
			t.Errorf("Get(%s, %d, %d): got error %v, want ErrInvalidRange", r.key, r.off, r.length, err)
		}
	}
}

func (s *suite) testStat(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	before := time.Now()
	put(t, st, "stat/a", randomBytes(15, 1234))
	put(t, st, "stat/empty", nil)
	for key, size := range map[string]int64{"stat/a": 1234, "stat/empty": 0} {
		oi, err := st.Stat(ctx, key)
		if err != nil {
			t.Errorf("Stat(%s): %v", key, err)
			continue
		}
		if oi.Key != key || oi.Size != size {
			t.Errorf("Stat(%s) = key %q size %d; want key %q size %d", key, oi.Key, oi.Size, key, size)
		}
		// ModTime may be zero; otherwise it should be about now (allowing
		// for clock skew with a remote server and coarse timestamps).
		if !oi.ModTime.IsZero() && (oi.ModTime.Before(before.Add(-time.Hour)) || oi.ModTime.After(time.Now().Add(time.Hour))) {
			t.Errorf("Stat(%s).ModTime = %v; want about %v", key, oi.ModTime, before)
		}
	}
}

func (s *suite) testNotFound(t *testing.T) {
	st := s.open(t)
	put(t, st, "nf/dir/obj", []byte("x"))
	put(t, st, "nf/file", []byte("y"))
	for _, key := range []string{
		"missing",
		"nf/missing",
		"nf/dir/missing",
		"nf/dir",      // only a prefix of an object, not an object
		"nf",          // likewise
		"nf/dir/ob",   // a prefix of an object's name
		"nf/file/sub", // "below" an object
		"nf/dir/obj/sub",
	} {
		checkAbsent(t, st, key)
	}
}

func (s *suite) testDelete(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	put(t, st, "del/a", []byte("a"))
	put(t, st, "del/b", []byte("bb"))
	put(t, st, "del/sub/c", []byte("ccc"))

	if err := st.Delete(ctx, "del/a"); err != nil {
		t.Fatalf("Delete(del/a): %v", err)
	}
	checkAbsent(t, st, "del/a")
	checkObject(t, st, "del/b", []byte("bb"))

	// Deleting what is not there is not an error.
	for _, key := range []string{"del/a", "del/missing", "nothing/at/all", "del/b/below", "del/sub", "del"} {
		if err := st.Delete(ctx, key); err != nil {
			t.Errorf("Delete(%s) of a missing object: %v", key, err)
		}
	}
	// Deleting a prefix-only key must not touch the objects under it.
	checkObject(t, st, "del/sub/c", []byte("ccc"))
	checkListed(t, st, "del/", map[string]int64{"del/b": 2, "del/sub/c": 3})

	if err := st.Delete(ctx, "del/sub/c"); err != nil {
		t.Fatalf("Delete(del/sub/c): %v", err)
	}
	checkListed(t, st, "del/", map[string]int64{"del/b": 2})
	// A deleted key can be put again.
	put(t, st, "del/sub/c", []byte("again"))
	checkObject(t, st, "del/sub/c", []byte("again"))
}

func (s *suite) testList(t *testing.T) {
	st := s.open(t)
	objects := map[string]int64{}
	for i, key := range []string{
		"data/ab/x",
		"data/ab/y",
		"data/ac",
		"data/b/z",
		"index/1",
		"snapshots/ws1/s1",
		"snapshots/ws1/s2",
		"snapshots/ws10/s1",
		"deep/a/b/c/d/e/f/g",
		"top",
	} {
		objects[key] = int64(i * 10)
		put(t, st, key, make([]byte, i*10))
	}
	subset := func(prefix string) map[string]int64 {
		m := map[string]int64{}
		for k, v := range objects {
			if strings.HasPrefix(k, prefix) {
				m[k] = v
			}
		}
		return m
	}
	for _, prefix := range []string{
		"",
		"d",
		"dat",
		"data",
		"data/",
		"data/a",
		"data/ab",
		"data/ab/",
		"data/ab/x",
		"data/ab/x/",
		"data/ab/xy",
		"data/b/",
		"snapshots/ws1/",
		"snapshots/ws1",
		"snapshots/ws10/",
		"snapshots/ws2/",
		"deep/a/b/c/",
		"deep/a/b/c/d/e/f/g",
		"t",
		"top",
		"top/",
		"nothing/",
		"zzz",
	} {
		checkListed(t, st, prefix, subset(prefix))
	}
}

func (s *suite) testListOddPrefixes(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	put(t, st, "data/x", []byte("x"))
	put(t, st, "a", []byte("a"))
	// No valid key starts with these prefixes: List finds nothing, or
	// refuses the prefix with ErrInvalidKey.
	for _, prefix := range []string{"/", "/data", "data//", "../", "./data", "data/./", "data/../data/", "..", ".", "\\", "data\\", "a\x00"} {
		var got []string
		err := st.List(ctx, prefix, func(oi storage.ObjectInfo) error {
			got = append(got, oi.Key)
			return nil
		})
		if err != nil && !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("List(%q): %v; want no error or ErrInvalidKey", prefix, err)
		}
		if len(got) != 0 {
			t.Errorf("List(%q) = %q; want nothing", prefix, got)
		}
	}
}

func (s *suite) testListMany(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	n := s.opts.ListCount
	key := func(i int) string { return fmt.Sprintf("many/%x/%05d", i%16, i) }
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.opts.Concurrency)
	for i := range n {
		g.Go(func() error {
			body := []byte(key(i))
			return st.Put(gctx, key(i), bytes.NewReader(body), int64(len(body)))
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("putting %d objects: %v", n, err)
	}
	want := map[string]int64{}
	want3 := map[string]int64{}
	for i := range n {
		want[key(i)] = int64(len(key(i)))
		if i%16 == 3 {
			want3[key(i)] = int64(len(key(i)))
		}
	}
	checkListed(t, st, "many/", want)
	checkListed(t, st, "", want)
	checkListed(t, st, "many/3/", want3)
	checkListed(t, st, "many/3", want3)
}

func (s *suite) testListStopsOnError(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	for i := range 10 {
		put(t, st, fmt.Sprintf("stop/%d", i), []byte{byte(i)})
	}
	errStop := errors.New("stop here")
	calls := 0
	err := st.List(ctx, "stop/", func(storage.ObjectInfo) error {
		calls++
		return errStop
	})
	if !errors.Is(err, errStop) {
		t.Errorf("List with fn failing: got error %v, want fn's error", err)
	}
	if calls != 1 {
		t.Errorf("List called fn %d times after it failed the first time; want 1", calls)
	}
}

func (s *suite) testListWhileDeleting(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	want := map[string]int64{}
	for i := range 50 {
		key := fmt.Sprintf("lwd/%d/%d", i%3, i)
		put(t, st, key, []byte(key))
		want[key] = int64(len(key))
	}
	// fn may use the storage: a garbage collector deletes what it lists.
	done := make(chan error, 1)
	seen := map[string]int64{}
	go func() {
		done <- st.List(ctx, "lwd/", func(oi storage.ObjectInfo) error {
			if _, dup := seen[oi.Key]; dup {
				return fmt.Errorf("key %s listed twice", oi.Key)
			}
			seen[oi.Key] = oi.Size
			if _, err := st.Stat(ctx, oi.Key); err != nil {
				return fmt.Errorf("Stat(%s) inside List: %w", oi.Key, err)
			}
			if err := st.Delete(ctx, oi.Key); err != nil {
				return fmt.Errorf("Delete(%s) inside List: %w", oi.Key, err)
			}
			return nil
		})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("List deleting each listed key: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("List deleting each listed key did not return within 30s (deadlock?)")
	}
	if !mapsEqual(seen, want) {
		t.Errorf("List while deleting saw %d keys, want %d", len(seen), len(want))
	}
	checkListed(t, st, "", map[string]int64{})
}

func (s *suite) testInvalidKeys(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	invalidKeys := []string{
		"", "/", "/a", "a/", "a//b", "//", ".", "..", "./a", "a/.", "../x", "a/../b", "a/..",
		"a\\b", "a\x00b", "a\nb", "a\x7fb", "a\tb", strings.Repeat("k", 1025),
	}
	for _, key := range invalidKeys {
		if storage.ValidateKey(key) == nil {
			t.Fatalf("suite bug: %q is a valid key", key)
		}
		if err := st.Put(ctx, key, bytes.NewReader([]byte("x")), 1); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Put(%q): got %v, want ErrInvalidKey", key, err)
		}
		rc, err := st.Get(ctx, key, 0, -1)
		if err == nil {
			rc.Close()
		}
		if !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Get(%q): got %v, want ErrInvalidKey", key, err)
		}
		if _, err := st.Stat(ctx, key); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Stat(%q): got %v, want ErrInvalidKey", key, err)
		}
		if err := st.Delete(ctx, key); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Delete(%q): got %v, want ErrInvalidKey", key, err)
		}
		if err := st.PutIfAbsent(ctx, key, bytes.NewReader([]byte("x")), 1); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("PutIfAbsent(%q): got %v, want ErrInvalidKey", key, err)
		}
		if _, err := st.PutIfMatch(ctx, key, bytes.NewReader([]byte("x")), 1, "1"); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("PutIfMatch(%q): got %v, want ErrInvalidKey", key, err)
		}
		rc, _, err = st.GetWithInfo(ctx, key)
		if err == nil {
			rc.Close()
		}
		if !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("GetWithInfo(%q): got %v, want ErrInvalidKey", key, err)
		}
	}
	checkListed(t, st, "", map[string]int64{})
}

func (s *suite) testValidKeys(t *testing.T) {
	st := s.open(t)
	// A key of the longest length, of components no longer than 200 bytes
	// (file systems limit a name to 255 bytes).
	long := ""
	for s.opts.MaxKeyLength-len(long) > 200 {
		long += strings.Repeat("l", 199) + "/"
	}
	long += strings.Repeat("m", s.opts.MaxKeyLength-len(long))
	keys := []string{
		"plain",
		"with space",
		"plus+sign",
		"percent%20sign",
		"question?mark",
		"hash#tag",
		"amp&eq=",
		"semi;colon,comma",
		"tilde~star*",
		"quote'\"",
		"brackets[]{}()",
		"at@bang!dollar$",
		"unicode/äöü€😀",
		".hidden",
		"..dots",
		"trailing.",
		"dir.with.dots/x",
		"-dash/_under",
		"UPPER/lower",
		long,
	}
	want := map[string]int64{}
	for i, key := range keys {
		if err := storage.ValidateKey(key); err != nil {
			t.Fatalf("suite bug: %v", err)
		}
		data := randomBytes(uint64(100+i), 10+i)
		put(t, st, key, data)
		checkObject(t, st, key, data)
		want[key] = int64(len(data))
	}
	checkListed(t, st, "", want)
	checkListed(t, st, "unicode/ä", map[string]int64{"unicode/äöü€😀": want["unicode/äöü€😀"]})
	ctx := t.Context()
	for _, key := range keys {
		if err := st.Delete(ctx, key); err != nil {
			t.Errorf("Delete(%q): %v", key, err)
		}
	}
	checkListed(t, st, "", map[string]int64{})
}

func (s *suite) testConcurrentPuts(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	workers := s.opts.Concurrency
	const perWorker = 8
	data := func(w, i int) []byte { return randomBytes(uint64(1000+w*perWorker+i), 1000+w*perWorker+i) }
	g, gctx := errgroup.WithContext(ctx)
	for w := range workers {
		g.Go(func() error {
			for i := range perWorker {
				key := fmt.Sprintf("conc/%d/%d", w, i)
				d := data(w, i)
				if err := st.Put(gctx, key, bytes.NewReader(d), int64(len(d))); err != nil {
					return err
				}
				rc, err := st.Get(gctx, key, 0, -1)
				if err != nil {
					return err
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil {
					return fmt.Errorf("read %s: %w", key, err)
				}
				if !bytes.Equal(got, d) {
					return fmt.Errorf("Get(%s) right after Put returned %d bytes that differ from the %d put", key, len(got), len(d))
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("concurrent puts: %v", err)
	}
	want := map[string]int64{}
	for w := range workers {
		for i := range perWorker {
			key := fmt.Sprintf("conc/%d/%d", w, i)
			want[key] = int64(len(data(w, i)))
			checkObject(t, st, key, data(w, i))
		}
	}
	checkListed(t, st, "conc/", want)
}

func (s *suite) testConcurrentPutsSameKey(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	const key = "same/key"
	writers := s.opts.Concurrency
	// Each writer's value has its own size, so a reader can tell which
	// value it saw and check that it saw all of it and nothing else.
	values := make([][]byte, writers)
	bySize := map[int64][]byte{}
	for w := range values {
		values[w] = randomBytes(uint64(2000+w), 64<<10+w*4099)
		bySize[int64(len(values[w]))] = values[w]
	}

	var writing sync.WaitGroup
	var stop atomic.Bool
	g, gctx := errgroup.WithContext(ctx)
	for w := range writers {
		writing.Add(1)
		g.Go(func() error {
			defer writing.Done()
			for range 2 {
				if err := st.Put(gctx, key, bytes.NewReader(values[w]), int64(len(values[w]))); err != nil {
					return fmt.Errorf("writer %d: %w", w, err)
				}
			}
			return nil
		})
	}
	for r := range 4 {
		g.Go(func() error {
			for i := 0; i == 0 || !stop.Load(); i++ {
				rc, err := st.Get(gctx, key, 0, -1)
				if errors.Is(err, storage.ErrNotFound) {
					continue // no Put has finished yet
				}
				if err != nil {
					return fmt.Errorf("reader %d: %w", r, err)
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil {
					return fmt.Errorf("reader %d: read: %w", r, err)
				}
				if want, ok := bySize[int64(len(got))]; !ok || !bytes.Equal(got, want) {
					return fmt.Errorf("reader %d: read %d bytes that are not one complete value", r, len(got))
				}
				if oi, err := st.Stat(gctx, key); err != nil {
					return fmt.Errorf("reader %d: Stat: %w", r, err)
				} else if _, ok := bySize[oi.Size]; !ok {
					return fmt.Errorf("reader %d: Stat size %d is not the size of any value", r, oi.Size)
				}
			}
			return nil
		})
	}
	go func() {
		writing.Wait()
		stop.Store(true)
	}()
	if err := g.Wait(); err != nil {
		stop.Store(true)
		t.Fatalf("concurrent puts of one key: %v", err)
	}
	got := get(t, st, key, 0, -1)
	if want, ok := bySize[int64(len(got))]; !ok || !bytes.Equal(got, want) {
		t.Errorf("after concurrent puts %s holds %d bytes that are not one complete value", key, len(got))
	}
	checkListed(t, st, "same/", map[string]int64{key: int64(len(got))})
}

func (s *suite) testPutCancelled(t *testing.T) {
	st := s.open(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	data := randomBytes(16, 4096)
	err := st.Put(ctx, "cancelled/new", bytes.NewReader(data), int64(len(data)))
	checkCancelErr(t, "Put(cancelled/new) with a cancelled context", err)
	checkAbsent(t, st, "cancelled/new")

	old := randomBytes(17, 100)
	put(t, st, "cancelled/old", old)
	err = st.Put(ctx, "cancelled/old", bytes.NewReader(data), int64(len(data)))
	checkCancelErr(t, "Put(cancelled/old) with a cancelled context", err)
	checkObject(t, st, "cancelled/old", old)
	checkListed(t, st, "", map[string]int64{"cancelled/old": 100})
}

func (s *suite) testPutBodyFails(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	data := randomBytes(18, 3<<20+17)
	body := func() io.ReadSeeker {
		return &hookReader{data: data, at: 3 << 19, sticky: true, hook: func() error { return errBodyFailed }}
	}
	err := st.Put(ctx, "failing/new", body(), int64(len(data)))
	if err == nil {
		t.Errorf("Put(failing/new) with a body failing midway: got nil error")
	}
	checkAbsent(t, st, "failing/new")

	old := randomBytes(19, 2000)
	put(t, st, "failing/old", old)
	if err := st.Put(ctx, "failing/old", body(), int64(len(data))); err == nil {
		t.Errorf("Put(failing/old) with a body failing midway: got nil error")
	}
	checkObject(t, st, "failing/old", old)
	checkListed(t, st, "", map[string]int64{"failing/old": 2000})
}

func (s *suite) testPutCancelledMidway(t *testing.T) {
	st := s.open(t)
	data := randomBytes(20, 3<<20+17)
	putCancelling := func(key string) error {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		body := &hookReader{data: data, at: 3 << 19, hook: func() error { cancel(); return nil }}
		return st.Put(ctx, key, body, int64(len(data)))
	}
	checkCancelErr(t, "Put(midway/new) cancelled midway", putCancelling("midway/new"))
	checkAbsent(t, st, "midway/new")

	old := randomBytes(21, 3000)
	put(t, st, "midway/old", old)
	checkCancelErr(t, "Put(midway/old) cancelled midway", putCancelling("midway/old"))
	checkObject(t, st, "midway/old", old)
	checkListed(t, st, "", map[string]int64{"midway/old": 3000})
}

func (s *suite) testCancelledCalls(t *testing.T) {
	st := s.open(t)
	put(t, st, "cc/obj", []byte("content"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()

	rc, err := st.Get(ctx, "cc/obj", 0, -1)
	if err == nil {
		// A backend may open lazily, but then reading must fail.
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	checkCancelErr(t, "Get with a cancelled context", err)
	_, err = st.Stat(ctx, "cc/obj")
	checkCancelErr(t, "Stat with a cancelled context", err)
	calls := 0
	err = st.List(ctx, "cc/", func(storage.ObjectInfo) error { calls++; return nil })
	checkCancelErr(t, "List with a cancelled context", err)
	err = st.Delete(ctx, "cc/obj")
	checkCancelErr(t, "Delete with a cancelled context", err)
	err = st.PutIfAbsent(ctx, "cc/new", bytes.NewReader([]byte("x")), 1)
	checkCancelErr(t, "PutIfAbsent with a cancelled context", err)
	n, err := st.CleanUploads(ctx, "", time.Now().Add(time.Hour))
	checkCancelErr(t, "CleanUploads with a cancelled context", err)
	if n != 0 {
		t.Errorf("CleanUploads with a cancelled context removed %d uploads", n)
	}
	version := statVersion(t, st, "cc/obj")
	_, err = st.PutIfMatch(ctx, "cc/obj", bytes.NewReader([]byte("x")), 1, version)
	checkCancelErr(t, "PutIfMatch with a cancelled context", err)
	rc, _, err = st.GetWithInfo(ctx, "cc/obj")
	if err == nil {
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	checkCancelErr(t, "GetWithInfo with a cancelled context", err)
	checkObject(t, st, "cc/obj", []byte("content"))
	if v := statVersion(t, st, "cc/obj"); v != version {
		t.Errorf("cc/obj changed version from %q to %q under calls with a cancelled context", version, v)
	}
	checkAbsent(t, st, "cc/new")
}

func (s *suite) testListCancelledMidway(t *testing.T) {
	st := s.open(t)
	for i := range 20 {
		put(t, st, fmt.Sprintf("lcm/%d/%d", i%4, i), []byte{byte(i)})
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	calls := 0
	err := st.List(ctx, "lcm/", func(storage.ObjectInfo) error {
		calls++
		cancel()
		return nil
	})
	checkCancelErr(t, "List cancelled in its first callback", err)
	if calls == 20 {
		t.Logf("List called fn for all 20 objects after the context was cancelled in the first call")
	}
}

// checkCancelErr checks that err reports a cancelled context: it wraps
// context.Canceled or at least says so.
func checkCancelErr(t *testing.T, what string, err error) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s: got nil error", what)
	case errors.Is(err, context.Canceled), strings.Contains(strings.ToLower(err.Error()), "cancel"):
	default:
		t.Errorf("%s: error %q neither wraps nor describes context.Canceled", what, err)
	}
}

func put(t *testing.T, st storage.Storage, key string, data []byte) {
	t.Helper()
	if err := st.Put(t.Context(), key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put(%s) of %d bytes: %v", key, len(data), err)
	}
}

func get(t *testing.T, st storage.Storage, key string, offset, length int64) []byte {
	t.Helper()
	rc, err := st.Get(t.Context(), key, offset, length)
	if err != nil {
		t.Fatalf("Get(%s, %d, %d): %v", key, offset, length, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("Get(%s, %d, %d): read: %v", key, offset, length, err)
	}
	if err := rc.Close(); err != nil {
		t.Errorf("Get(%s, %d, %d): Close: %v", key, offset, length, err)
	}
	return b
}

// checkObject checks that key holds exactly want, through Get and Stat.
func checkObject(t *testing.T, st storage.Storage, key string, want []byte) {
	t.Helper()
	equalBytes(t, fmt.Sprintf("Get(%s)", key), get(t, st, key, 0, -1), want)
	oi, err := st.Stat(t.Context(), key)
	if err != nil {
		t.Errorf("Stat(%s): %v", key, err)
		return
	}
	if oi.Size != int64(len(want)) || oi.Key != key {
		t.Errorf("Stat(%s) = key %q size %d; want key %q size %d", key, oi.Key, oi.Size, key, len(want))
	}
	if oi.Version == "" {
		t.Errorf("Stat(%s) gives no Version", key)
	}
}

// checkAbsent checks that key holds no object, through Get, Stat and List.
func checkAbsent(t *testing.T, st storage.Storage, key string) {
	t.Helper()
	ctx := t.Context()
	rc, err := st.Get(ctx, key, 0, -1)
	if err == nil {
		rc.Close()
	}
	if !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Get(%s): got error %v, want ErrNotFound", key, err)
	}
	if _, err := st.Stat(ctx, key); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat(%s): got error %v, want ErrNotFound", key, err)
	}
	for k := range listKeys(t, st, key) {
		if k == key {
			t.Errorf("List(%s) shows %s, which should not exist", key, key)
		}
	}
}

// checkListed checks that List(prefix) shows exactly want (key to size).
func checkListed(t *testing.T, st storage.Storage, prefix string, want map[string]int64) {
	t.Helper()
	got := listKeys(t, st, prefix)
	if mapsEqual(got, want) {
		return
	}
	var missing, extra, wrong []string
	for k, size := range want {
		if gs, ok := got[k]; !ok {
			missing = append(missing, k)
		} else if gs != size {
			wrong = append(wrong, fmt.Sprintf("%s: size %d, want %d", k, gs, size))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, k)
		}
	}
	t.Errorf("List(%q): %d objects, want %d; missing %s; unexpected %s; wrong size %s",
		prefix, len(got), len(want), trimList(missing), trimList(extra), trimList(wrong))
}

// listKeys lists prefix into a map of key to size, failing on duplicates.
func listKeys(t *testing.T, st storage.Storage, prefix string) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	err := st.List(t.Context(), prefix, func(oi storage.ObjectInfo) error {
		if _, dup := got[oi.Key]; dup {
			return fmt.Errorf("key %q listed twice", oi.Key)
		}
		if !strings.HasPrefix(oi.Key, prefix) {
			return fmt.Errorf("key %q listed does not start with the prefix", oi.Key)
		}
		if oi.Version == "" {
			return fmt.Errorf("key %q listed without a Version", oi.Key)
		}
		got[oi.Key] = oi.Size
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return got
}

func mapsEqual(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func trimList(l []string) string {
	if len(l) > 5 {
		return fmt.Sprintf("%q and %d more", l[:5], len(l)-5)
	}
	return fmt.Sprintf("%q", l)
}

// equalBytes reports where got and want differ without dumping them.
func equalBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	t.Errorf("%s: got %d bytes, want %d; first difference at offset %d", what, len(got), len(want), i)
}
