package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/backupd/backupd/pkg/storage"
)

// putIfAbsentWriters is how many goroutines race PutIfAbsent on one key.
const putIfAbsentWriters = 8

func (s *suite) testPutIfAbsent(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	for i, n := range []int{0, 1, 100, 64<<10 + 1, 1<<20 + 13} {
		key := fmt.Sprintf("pia/%d", n)
		first := randomBytes(uint64(300+i), n)
		if err := s.create(t, st, key, bytes.NewReader(first), first); err != nil {
			t.Fatalf("PutIfAbsent(%s) of %d bytes on a free key: %v", key, n, err)
		}
		checkObject(t, st, key, first)
		// A second one, with other bytes or the same, finds the first.
		for _, second := range [][]byte{randomBytes(uint64(400+i), n+7), first, nil} {
			err := st.PutIfAbsent(ctx, key, bytes.NewReader(second), int64(len(second)))
			checkExists(t, fmt.Sprintf("second PutIfAbsent(%s)", key), err)
			checkObject(t, st, key, first)
		}
	}

	// An object stored by Put, an empty one included, is there too.
	put(t, st, "pia/by-put", []byte("put"))
	put(t, st, "pia/empty", nil)
	for _, key := range []string{"pia/by-put", "pia/empty"} {
		err := st.PutIfAbsent(ctx, key, bytes.NewReader([]byte("new")), 3)
		checkExists(t, fmt.Sprintf("PutIfAbsent(%s) over a Put object", key), err)
	}
	checkObject(t, st, "pia/by-put", []byte("put"))
	checkObject(t, st, "pia/empty", nil)

	// A Put over a PutIfAbsent object replaces it as usual.
	put(t, st, "pia/1", []byte("replaced"))
	checkObject(t, st, "pia/1", []byte("replaced"))

	// Once deleted, the key is free again.
	if err := st.Delete(ctx, "pia/100"); err != nil {
		t.Fatalf("Delete(pia/100): %v", err)
	}
	again := randomBytes(500, 33)
	if err := s.create(t, st, "pia/100", bytes.NewReader(again), again); err != nil {
		t.Errorf("PutIfAbsent(pia/100) after Delete: %v", err)
	}
	checkObject(t, st, "pia/100", again)

	// Neighbours of an object are free: keys that extend it, or that it
	// extends, are other keys (where the backend can store both).
	if err := s.create(t, st, "pia/1000", bytes.NewReader([]byte("x")), []byte("x")); err != nil {
		t.Errorf("PutIfAbsent(pia/1000) next to pia/100: %v", err)
	}
	checkListed(t, st, "pia/", map[string]int64{
		"pia/0": 0, "pia/1": 8, "pia/100": 33, "pia/1000": 1, "pia/65537": 64<<10 + 1, "pia/1048589": 1<<20 + 13,
		"pia/by-put": 3, "pia/empty": 0,
	})
}

// checkExists checks that err is a PutIfAbsent's report of an existing
// object: it wraps storage.ErrExists, and is neither ErrNotFound nor
// transient (a retry would not help).
func checkExists(t *testing.T, what string, err error) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s: got nil error, want ErrExists", what)
	case !errors.Is(err, storage.ErrExists):
		t.Errorf("%s: got error %v, want ErrExists", what, err)
	case errors.Is(err, storage.ErrNotFound), storage.IsTransient(err):
		t.Errorf("%s: ErrExists that is also ErrNotFound or transient: %v", what, err)
	}
}

func (s *suite) testPutIfAbsentRace(t *testing.T) {
	st := s.open(t)
	// Each writer's value has its own size, so a reader can tell which
	// one it saw.
	values := make([][]byte, putIfAbsentWriters)
	bySize := map[int64]int{}
	for w := range values {
		values[w] = randomBytes(uint64(600+w), 10_000+w*1013)
		bySize[int64(len(values[w]))] = w
	}
	want := map[string]int64{}
	for round := range 3 {
		key := fmt.Sprintf("race/%d", round)
		winner, seen := s.racePutIfAbsent(t, st, key, values, bySize)
		if winner < 0 {
			return
		}
		checkObject(t, st, key, values[winner])
		for w := range seen {
			if w != winner {
				t.Errorf("round %d: a reader saw writer %d's value; writer %d won", round, w, winner)
			}
		}
		want[key] = int64(len(values[winner]))
	}
	checkListed(t, st, "race/", want)
}

// racePutIfAbsent starts one PutIfAbsent per value on key at once, with
// readers polling the key meanwhile, and checks that the object holds one
// writer's value, that writer succeeded and every other one failed with
// ErrExists. It returns the winner (-1 after reporting an error) and the
// writers whose values readers saw.
func (s *suite) racePutIfAbsent(t *testing.T, st storage.Storage, key string, values [][]byte, bySize map[int64]int) (int, map[int]bool) {
	t.Helper()
	ctx := t.Context()
	start := make(chan struct{})
	errs := make([]error, len(values))
	var writers, readers sync.WaitGroup
	for w := range values {
		writers.Add(1)
		go func() {
			defer writers.Done()
			<-start
			errs[w] = st.PutIfAbsent(ctx, key, bytes.NewReader(values[w]), int64(len(values[w])))
		}()
	}
	var stop atomic.Bool
	var mu sync.Mutex
	seen := map[int]bool{}
	var readErr error
	for range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			<-start
			for !stop.Load() {
				rc, err := st.Get(ctx, key, 0, -1)
				if errors.Is(err, storage.ErrNotFound) {
					continue
				}
				var got []byte
				if err == nil {
					got, err = io.ReadAll(rc)
					rc.Close()
				}
				mu.Lock()
				w, ok := bySize[int64(len(got))]
				switch {
				case err != nil:
					readErr = fmt.Errorf("Get(%s) during the race: %w", key, err)
				case !ok || !bytes.Equal(got, values[w]):
					readErr = fmt.Errorf("Get(%s) during the race: %d bytes that are no writer's value", key, len(got))
				default:
					seen[w] = true
				}
				mu.Unlock()
				if err != nil || !ok {
					return
				}
			}
		}()
	}
	close(start)
	writers.Wait()
	stop.Store(true)
	readers.Wait()
	if readErr != nil {
		t.Error(readErr)
	}
	got := get(t, st, key, 0, -1)
	winner, ok := bySize[int64(len(got))]
	if !ok || !bytes.Equal(got, values[winner]) {
		t.Errorf("after %d racing PutIfAbsent(%s): %d bytes that are no writer's value", len(values), key, len(got))
		return -1, nil
	}
	for w, err := range errs {
		switch {
		case w != winner:
			checkExists(t, fmt.Sprintf("PutIfAbsent(%s) by writer %d of %d racing, who lost to writer %d", key, w, len(values), winner), err)
		case err == nil:
		case s.opts.LostReplies && errors.Is(err, storage.ErrExists):
			// Its own write, whose reply was lost.
		default:
			t.Errorf("PutIfAbsent(%s) by writer %d, whose value the object holds: %v", key, w, err)
		}
	}
	return winner, seen
}

// create calls PutIfAbsent on a key that should be free and returns its
// error; with Options.LostReplies, an ErrExists is nil if the object holds
// want, the bytes of body that it stores.
func (s *suite) create(t *testing.T, st storage.Storage, key string, body io.ReadSeeker, want []byte) error {
	t.Helper()
	err := st.PutIfAbsent(t.Context(), key, body, int64(len(want)))
	if s.opts.LostReplies && errors.Is(err, storage.ErrExists) {
		if got, gerr := storage.ReadAll(t.Context(), st, key, 0, -1); gerr == nil && bytes.Equal(got, want) {
			return nil
		}
	}
	return err
}

func (s *suite) testPutIfAbsentBody(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()

	// It reads exactly size bytes.
	data := randomBytes(700, 2000)
	if err := s.create(t, st, "piab/exact", &strictReader{data: data, limit: 1500}, data[:1500]); err != nil {
		t.Errorf("PutIfAbsent(piab/exact) of 1500 bytes from a longer body: %v", err)
	} else {
		checkObject(t, st, "piab/exact", data[:1500])
	}

	// A plain io.ReadSeeker and a file do as well as a bytes.Reader.
	if err := s.create(t, st, "piab/plain", &seekReader{data: data}, data); err != nil {
		t.Errorf("PutIfAbsent(piab/plain): %v", err)
	} else {
		checkObject(t, st, "piab/plain", data)
	}

	// A body shorter than size, or failing midway, stores nothing and
	// leaves the key free.
	big := randomBytes(701, 3<<20+17)
	failing := &hookReader{data: big, at: 3 << 19, sticky: true, hook: func() error { return errBodyFailed }}
	for _, tc := range []struct {
		key  string
		body io.ReadSeeker
		size int64
	}{
		{"piab/short", bytes.NewReader(data), int64(len(data)) + 1},
		{"piab/failing", failing, int64(len(big))},
	} {
		if err := st.PutIfAbsent(ctx, tc.key, tc.body, tc.size); err == nil {
			t.Errorf("PutIfAbsent(%s) with a bad body: got nil error", tc.key)
		} else if errors.Is(err, storage.ErrExists) {
			t.Errorf("PutIfAbsent(%s) with a bad body: %v; want an error that is not ErrExists", tc.key, err)
		}
		checkAbsent(t, st, tc.key)
		if err := s.create(t, st, tc.key, bytes.NewReader([]byte("ok")), []byte("ok")); err != nil {
			t.Errorf("PutIfAbsent(%s) after a failed one: %v", tc.key, err)
		}
		checkObject(t, st, tc.key, []byte("ok"))
	}

	// Cancelled before it starts, or midway: nothing stored, the key
	// free, an existing object unchanged.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err := st.PutIfAbsent(cctx, "piab/cancelled", bytes.NewReader(data), int64(len(data)))
	checkCancelErr(t, "PutIfAbsent(piab/cancelled) with a cancelled context", err)
	checkAbsent(t, st, "piab/cancelled")
	err = st.PutIfAbsent(cctx, "piab/plain", bytes.NewReader(big), int64(len(big)))
	checkCancelErr(t, "PutIfAbsent(piab/plain) of an existing key with a cancelled context", err)
	checkObject(t, st, "piab/plain", data)

	mctx, mcancel := context.WithCancel(ctx)
	defer mcancel()
	body := &hookReader{data: big, at: 3 << 19, hook: func() error { mcancel(); return nil }}
	err = st.PutIfAbsent(mctx, "piab/midway", body, int64(len(big)))
	checkCancelErr(t, "PutIfAbsent(piab/midway) cancelled midway", err)
	checkAbsent(t, st, "piab/midway")
	if err := s.create(t, st, "piab/midway", bytes.NewReader([]byte("ok")), []byte("ok")); err != nil {
		t.Errorf("PutIfAbsent(piab/midway) after a cancelled one: %v", err)
	}
	checkListed(t, st, "piab/", map[string]int64{
		"piab/exact": 1500, "piab/plain": int64(len(data)), "piab/short": 2, "piab/failing": 2, "piab/midway": 2,
	})
}

// testPutIfAbsentLarge puts a large object create-only. A backend may
// refuse it (above its single-request limit), but then it must store
// nothing: never a plain Put instead.
func (s *suite) testPutIfAbsentLarge(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	n := s.opts.LargeSize
	data := randomBytes(800, n)
	err := s.create(t, st, "pial/object", bytes.NewReader(data), data)
	if err != nil {
		t.Logf("PutIfAbsent of %d bytes refused: %v", n, err)
		if errors.Is(err, storage.ErrExists) || storage.IsTransient(err) {
			t.Errorf("PutIfAbsent of %d bytes on a free key: %v; a refusal must be neither ErrExists nor transient", n, err)
		}
		checkAbsent(t, st, "pial/object")
		checkListed(t, st, "", map[string]int64{})
		return
	}
	checkObject(t, st, "pial/object", data)
	other := randomBytes(801, n)
	err = st.PutIfAbsent(ctx, "pial/object", bytes.NewReader(other), int64(n))
	checkExists(t, fmt.Sprintf("second PutIfAbsent of %d bytes", n), err)
	checkObject(t, st, "pial/object", data)
	err = st.PutIfAbsent(ctx, "pial/object", bytes.NewReader([]byte("small")), 5)
	checkExists(t, "small PutIfAbsent over a large object", err)
	checkObject(t, st, "pial/object", data)
}
