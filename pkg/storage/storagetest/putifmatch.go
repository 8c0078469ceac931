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
	"time"

	"github.com/backupd/backupd/pkg/storage"
)

// putIfMatchWriters is how many goroutines race PutIfMatch with one
// version.
const putIfMatchWriters = 8

// raceRounds is how many times each race is run.
const raceRounds = 3

func (s *suite) testPutIfMatch(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	want := map[string]int64{}
	for i, n := range []int{0, 1, 100, 64<<10 + 1, 1<<20 + 13} {
		key := fmt.Sprintf("pim/%d", n)
		first := randomBytes(uint64(3000+i), n)
		put(t, st, key, first)
		v1 := checkVersioned(t, st, key, first)

		second := randomBytes(uint64(3100+i), n+3)
		v2, err := s.replace(t, st, key, bytes.NewReader(second), second, v1)
		if err != nil {
			t.Fatalf("PutIfMatch(%s) of %d bytes with the version just read: %v", key, len(second), err)
		}
		if got := checkVersioned(t, st, key, second); got != v2 {
			t.Errorf("PutIfMatch(%s) returned version %q; Stat and GetWithInfo give %q", key, v2, got)
		}
		if v2 == v1 {
			t.Errorf("PutIfMatch(%s) with other bytes left the version %q unchanged", key, v1)
		}

		// The first version is stale now: refused, whatever the bytes.
		for _, body := range [][]byte{randomBytes(uint64(3200+i), n+5), second, first, nil} {
			_, err := st.PutIfMatch(ctx, key, bytes.NewReader(body), int64(len(body)), v1)
			checkMismatch(t, fmt.Sprintf("PutIfMatch(%s) with a stale version", key), err, false)
			checkObject(t, st, key, second)
		}
		// The current one goes on working, for a chain of replacements.
		third := randomBytes(uint64(3300+i), n+7)
		v3, err := s.replace(t, st, key, bytes.NewReader(third), third, v2)
		if err != nil {
			t.Fatalf("PutIfMatch(%s) with the version PutIfMatch returned: %v", key, err)
		}
		if v3 == v2 || v3 == v1 {
			t.Errorf("PutIfMatch(%s): version %q after %q and %q, for three different contents", key, v3, v1, v2)
		}
		checkVersioned(t, st, key, third)
		want[key] = int64(len(third))
	}

	// An object created by PutIfAbsent has a version like any other.
	created := []byte("created")
	if err := s.create(t, st, "pim/created", bytes.NewReader(created), created); err != nil {
		t.Fatalf("PutIfAbsent(pim/created): %v", err)
	}
	v := checkVersioned(t, st, "pim/created", created)
	replaced := []byte("replaced")
	if _, err := s.replace(t, st, "pim/created", bytes.NewReader(replaced), replaced, v); err != nil {
		t.Errorf("PutIfMatch(pim/created) over a PutIfAbsent object: %v", err)
	}
	checkObject(t, st, "pim/created", replaced)
	want["pim/created"] = int64(len(replaced))

	// A version that is no version of this object's: another object's,
	// a mangled one, or none.
	other := statVersion(t, st, "pim/100")
	current := statVersion(t, st, "pim/created")
	for _, bad := range []string{other, "", "*", `"` + current + `"`, current + "x", "0", "-1", "nonsense", "\x00"} {
		_, err := st.PutIfMatch(ctx, "pim/created", bytes.NewReader([]byte("bad")), 3, bad)
		checkMismatch(t, fmt.Sprintf("PutIfMatch(pim/created) with version %q", bad), err, false)
	}
	checkObject(t, st, "pim/created", replaced)
	if v := statVersion(t, st, "pim/created"); v != current {
		t.Errorf("refused PutIfMatch calls changed the version of pim/created from %q to %q", current, v)
	}
	checkListed(t, st, "pim/", want)
}

func (s *suite) testPutIfMatchMissing(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	put(t, st, "pimm/dir/obj", []byte("an object below"))
	put(t, st, "pimm/file", []byte("a file"))
	version := statVersion(t, st, "pimm/file")
	// No object: ErrVersionMismatch and ErrNotFound, and nothing created
	// (where the backend can store the key at all).
	for _, key := range []string{"pimm/missing", "pimm/dir", "pimm/dir/ob", "nothing/at/all", "pimm/file/below"} {
		_, err := st.PutIfMatch(ctx, key, bytes.NewReader([]byte("x")), 1, version)
		checkMismatch(t, fmt.Sprintf("PutIfMatch(%s) of a missing object", key), err, true)
		checkAbsent(t, st, key)
	}

	// Once deleted, an object's version matches nothing, also when the
	// key holds an object again (of other bytes).
	if err := st.Delete(ctx, "pimm/file"); err != nil {
		t.Fatal(err)
	}
	_, err := st.PutIfMatch(ctx, "pimm/file", bytes.NewReader([]byte("x")), 1, version)
	checkMismatch(t, "PutIfMatch(pimm/file) after Delete", err, true)
	checkAbsent(t, st, "pimm/file")
	again := []byte("a new file")
	put(t, st, "pimm/file", again)
	if v := statVersion(t, st, "pimm/file"); v == version {
		t.Errorf("pimm/file put again with other bytes after Delete has its old version %q", v)
	}
	_, err = st.PutIfMatch(ctx, "pimm/file", bytes.NewReader([]byte("x")), 1, version)
	checkMismatch(t, "PutIfMatch(pimm/file) with the version of a deleted object, over a new one", err, false)
	checkObject(t, st, "pimm/file", again)
	checkListed(t, st, "", map[string]int64{"pimm/dir/obj": 15, "pimm/file": int64(len(again))})
}

// testVersions checks that Stat, List and GetWithInfo agree on the
// Version of objects of all sizes, large ones put in parts included, and
// that a PutIfMatch over each works with it.
func (s *suite) testVersions(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	sizes := []int{0, 1, 1000, 1<<20 + 1, 6<<20 + 3}
	versions := map[string]string{}
	for i, n := range sizes {
		key := fmt.Sprintf("ver/%d", n)
		data := randomBytes(uint64(3400+i), n)
		put(t, st, key, data)
		versions[key] = checkVersioned(t, st, key, data)
	}
	// One listing of them all gives the same versions.
	err := st.List(ctx, "ver/", func(oi storage.ObjectInfo) error {
		if oi.Version != versions[oi.Key] {
			t.Errorf("List(ver/) gives %s version %q; Stat gives %q", oi.Key, oi.Version, versions[oi.Key])
		}
		return nil
	})
	if err != nil {
		t.Fatalf("List(ver/): %v", err)
	}
	seen := map[string]string{}
	for key, v := range versions {
		if k, dup := seen[v]; dup {
			t.Errorf("%s and %s, of different bytes, have one version %q", k, key, v)
		}
		seen[v] = key
	}
	// A small replacement of each, the large ones included.
	for i, n := range sizes {
		key := fmt.Sprintf("ver/%d", n)
		small := randomBytes(uint64(3500+i), 10+i)
		if _, err := s.replace(t, st, key, bytes.NewReader(small), small, versions[key]); err != nil {
			t.Errorf("PutIfMatch(%s) over an object of %d bytes: %v", key, n, err)
			continue
		}
		checkVersioned(t, st, key, small)
	}
}

// testVersionsOfIdenticalBytes replaces objects with the bytes they hold
// already, by Put and by PutIfMatch, and deletes and puts them again.
// Without Options.ContentVersions each replacement must give a new
// version, which makes the one before stale; with it, a version may stay,
// and then it must still work. Either way no version may stand for two
// different contents.
func (s *suite) testVersionsOfIdenticalBytes(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	a, b := randomBytes(3600, 3000), randomBytes(3601, 3000)
	byVersion := map[string][]byte{} // every version seen, and its bytes
	note := func(what string, v string, data []byte) {
		t.Helper()
		if old, ok := byVersion[v]; ok && !bytes.Equal(old, data) {
			t.Errorf("%s: version %q, given before to other bytes", what, v)
		}
		byVersion[v] = data
	}
	const key = "same/key"
	put(t, st, key, a)
	prev, prevData := checkVersioned(t, st, key, a), a
	note("Put(a)", prev, a)
	for step, tc := range []struct {
		what   string
		data   []byte
		byPut  bool
		delete bool
	}{
		{"Put of the same bytes", a, true, false},
		{"PutIfMatch of the same bytes", a, false, false},
		{"Put of other bytes", b, true, false},
		{"PutIfMatch of the same bytes again", b, false, false},
		{"Delete, then Put of the same bytes", b, true, true},
		{"PutIfMatch of the first bytes", a, false, false},
		{"PutIfMatch of no bytes", nil, false, false},
		{"PutIfMatch of no bytes again", nil, false, false},
	} {
		what := fmt.Sprintf("step %d, %s", step, tc.what)
		var v string
		switch {
		case tc.delete:
			if err := st.Delete(ctx, key); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			fallthrough
		case tc.byPut:
			put(t, st, key, tc.data)
			v = checkVersioned(t, st, key, tc.data)
		default:
			var err error
			if v, err = s.replace(t, st, key, bytes.NewReader(tc.data), tc.data, prev); err != nil {
				t.Fatalf("%s: PutIfMatch with the current version: %v", what, err)
			}
			if got := checkVersioned(t, st, key, tc.data); got != v {
				t.Errorf("%s: PutIfMatch returned version %q, the object has %q", what, v, got)
			}
		}
		note(what, v, tc.data)
		switch {
		case v != prev:
			// The version before is stale now.
			_, err := st.PutIfMatch(ctx, key, bytes.NewReader([]byte("stale")), 5, prev)
			checkMismatch(t, what+": PutIfMatch with the version before", err, false)
			checkObject(t, st, key, tc.data)
		case !s.opts.ContentVersions:
			t.Errorf("%s: the version %q stayed; every replacement must change it", what, v)
		case !bytes.Equal(prevData, tc.data):
			t.Errorf("%s: the version %q stayed for other bytes", what, v)
		}
		// A version that stayed goes on working: the next step uses it.
		prev, prevData = v, tc.data
	}
}

func (s *suite) testPutIfMatchRace(t *testing.T) {
	st := s.open(t)
	const key = "pimr/key"
	base := randomBytes(3700, 5000)
	put(t, st, key, base)
	version := statVersion(t, st, key)
	want := int64(len(base))
	for round := range raceRounds {
		// Values of their own in each round (the same bytes as the
		// object's would not change a content-derived version), of sizes
		// of their own, so that a reader can tell whose it saw.
		values := make([][]byte, putIfMatchWriters)
		for w := range values {
			values[w] = randomBytes(uint64(3800+round*100+w), 10_000+round*97+w*1013)
		}
		winner, v := s.racePutIfMatch(t, st, key, values, version, base)
		if winner < 0 {
			return
		}
		version, base, want = v, values[winner], int64(len(values[winner]))
	}
	checkListed(t, st, "pimr/", map[string]int64{key: want})
}

// racePutIfMatch starts one PutIfMatch per value on key at once, all with
// version, the version of base, while readers read the object with its
// version. It checks that one writer won and stored its value, that every
// other failed with ErrVersionMismatch, that the winner's version is the
// object's, and that readers saw base with version and the winner's value
// with the winner's version, nothing else. It returns the winner and its
// version (-1 after reporting an error).
func (s *suite) racePutIfMatch(t *testing.T, st storage.Storage, key string, values [][]byte, version string, base []byte) (int, string) {
	t.Helper()
	ctx := t.Context()
	start := make(chan struct{})
	errs := make([]error, len(values))
	got := make([]string, len(values))
	var writers, readers sync.WaitGroup
	for w := range values {
		writers.Add(1)
		go func() {
			defer writers.Done()
			<-start
			got[w], errs[w] = st.PutIfMatch(ctx, key, bytes.NewReader(values[w]), int64(len(values[w])), version)
		}()
	}
	var stop atomic.Bool
	var mu sync.Mutex
	seen := map[string][]byte{} // version -> bytes, as readers saw them
	var readErr error
	for range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			<-start
			for !stop.Load() {
				data, oi, err := storage.ReadVersioned(ctx, st, key, 1<<20)
				mu.Lock()
				switch old, ok := seen[oi.Version]; {
				case err != nil:
					readErr = fmt.Errorf("ReadVersioned(%s) during the race: %w", key, err)
				case ok && !bytes.Equal(old, data):
					readErr = fmt.Errorf("ReadVersioned(%s) during the race: version %q with two contents", key, oi.Version)
				default:
					seen[oi.Version] = data
				}
				failed := readErr != nil
				mu.Unlock()
				if failed {
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

	data, oi, err := storage.ReadVersioned(ctx, st, key, 1<<20)
	if err != nil {
		t.Fatalf("ReadVersioned(%s) after the race: %v", key, err)
	}
	winner := -1
	for w := range values {
		if bytes.Equal(data, values[w]) {
			winner = w
		}
	}
	if winner < 0 {
		t.Errorf("after %d racing PutIfMatch(%s): %d bytes that are no writer's value", len(values), key, len(data))
		return -1, ""
	}
	won := 0
	for w, err := range errs {
		switch {
		case err == nil:
			won++
			if w != winner {
				t.Errorf("PutIfMatch(%s) by writer %d succeeded, but the object holds writer %d's value", key, w, winner)
			}
		case w == winner && s.opts.LostReplies && errors.Is(err, storage.ErrVersionMismatch):
			// Its own write, whose reply was lost.
			got[w] = oi.Version
		case w == winner:
			t.Errorf("PutIfMatch(%s) by writer %d, whose value the object holds: %v", key, w, err)
		default:
			checkMismatch(t, fmt.Sprintf("PutIfMatch(%s) by writer %d of %d racing, who lost to writer %d", key, w, len(values), winner), err, false)
		}
	}
	if won > 1 {
		t.Errorf("%d of %d racing PutIfMatch(%s) calls with one version succeeded", won, len(values), key)
	}
	if got[winner] != oi.Version {
		t.Errorf("the winning PutIfMatch(%s) returned version %q; the object has %q", key, got[winner], oi.Version)
	}
	for v, data := range seen {
		switch {
		case v == version && bytes.Equal(data, base):
		case v == oi.Version && bytes.Equal(data, values[winner]):
		default:
			t.Errorf("a reader saw %d bytes with version %q during the race: neither the object before (%q) nor the winner's (%q)",
				len(data), v, version, oi.Version)
		}
	}
	return winner, oi.Version
}

// testPutIfMatchRaceOthers races PutIfMatch calls with one version
// against one Delete, one Put, and (on the deleted key) one PutIfAbsent:
// each outcome must be one that some order of the calls gives.
func (s *suite) testPutIfMatchRaceOthers(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	for round := range raceRounds {
		key := fmt.Sprintf("pimo/%d", round)
		values := make([][]byte, putIfMatchWriters)
		for w := range values {
			values[w] = randomBytes(uint64(3900+round*100+w), 1000+w)
		}
		base := randomBytes(uint64(3950+round), 999)
		other := randomBytes(uint64(3990+round), 2000)

		// Against Delete: whoever goes first, the object ends deleted,
		// and at most one PutIfMatch succeeds.
		put(t, st, key, base)
		won := s.raceWith(t, st, key, values, statVersion(t, st, key), func() error { return st.Delete(ctx, key) })
		if won > 1 {
			t.Errorf("round %d: %d PutIfMatch calls with one version succeeded, racing a Delete", round, won)
		}
		checkAbsent(t, st, key)

		// Against Put: the Put's bytes end up there (a PutIfMatch after
		// it finds another version).
		put(t, st, key, base)
		won = s.raceWith(t, st, key, values, statVersion(t, st, key), func() error {
			return st.Put(ctx, key, bytes.NewReader(other), int64(len(other)))
		})
		if won > 1 {
			t.Errorf("round %d: %d PutIfMatch calls with one version succeeded, racing a Put", round, won)
		}
		checkObject(t, st, key, other)

		// Against PutIfAbsent on the deleted key: it creates the object;
		// a PutIfMatch with the deleted object's version never succeeds.
		version := statVersion(t, st, key)
		if err := st.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		won = s.raceWith(t, st, key, values, version, func() error {
			return s.create(t, st, key, bytes.NewReader(base), base)
		})
		if won > 0 {
			t.Errorf("round %d: %d PutIfMatch calls with a deleted object's version succeeded, racing a PutIfAbsent", round, won)
		}
		checkObject(t, st, key, base)
	}
}

// raceWith runs one PutIfMatch per value on key, all with version,
// together with other, and returns how many of them succeeded. Every
// PutIfMatch that failed must have failed with ErrVersionMismatch; other
// must succeed.
func (s *suite) raceWith(t *testing.T, st storage.Storage, key string, values [][]byte, version string, other func() error) int {
	t.Helper()
	ctx := t.Context()
	start := make(chan struct{})
	errs := make([]error, len(values))
	var otherErr error
	var wg sync.WaitGroup
	for w := range values {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[w] = st.PutIfMatch(ctx, key, bytes.NewReader(values[w]), int64(len(values[w])), version)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-start
		otherErr = other()
	}()
	close(start)
	wg.Wait()
	if otherErr != nil {
		t.Errorf("the call racing PutIfMatch(%s): %v", key, otherErr)
	}
	won := 0
	for w, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, storage.ErrVersionMismatch), storage.IsTransient(err):
			t.Errorf("PutIfMatch(%s) by writer %d of %d racing: %v; want nil or ErrVersionMismatch", key, w, len(values), err)
		}
	}
	return won
}

func (s *suite) testPutIfMatchBody(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	data := randomBytes(4000, 2000)
	const key = "pimb/key"
	put(t, st, key, []byte("base"))

	// It reads exactly size bytes, from any io.ReadSeeker.
	v := statVersion(t, st, key)
	v, err := s.replace(t, st, key, &strictReader{data: data, limit: 1500}, data[:1500], v)
	if err != nil {
		t.Fatalf("PutIfMatch(%s) of 1500 bytes from a longer body: %v", key, err)
	}
	checkObject(t, st, key, data[:1500])
	if v, err = s.replace(t, st, key, &seekReader{data: data}, data, v); err != nil {
		t.Fatalf("PutIfMatch(%s) from a plain io.ReadSeeker: %v", key, err)
	}
	checkObject(t, st, key, data)

	// A body shorter than size, or failing midway, a context cancelled
	// before or midway: an error that is not ErrVersionMismatch, and the
	// object and its version as they were.
	big := randomBytes(4001, 3<<20+17)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	mctx, mcancel := context.WithCancel(ctx)
	defer mcancel()
	for _, tc := range []struct {
		what string
		ctx  context.Context
		body io.ReadSeeker
		size int64
	}{
		{"a short body", ctx, bytes.NewReader(data), int64(len(data)) + 1},
		{"a body failing midway", ctx, &hookReader{data: big, at: 3 << 19, sticky: true, hook: func() error { return errBodyFailed }}, int64(len(big))},
		{"a cancelled context", cctx, bytes.NewReader(data), int64(len(data))},
		{"a context cancelled midway", mctx, &hookReader{data: big, at: 3 << 19, hook: func() error { mcancel(); return nil }}, int64(len(big))},
	} {
		_, err := st.PutIfMatch(tc.ctx, key, tc.body, tc.size, v)
		switch {
		case err == nil:
			t.Errorf("PutIfMatch(%s) with %s: got nil error", key, tc.what)
		case errors.Is(err, storage.ErrVersionMismatch):
			t.Errorf("PutIfMatch(%s) with %s: %v; want an error that is not ErrVersionMismatch", key, tc.what, err)
		}
		if tc.ctx != ctx {
			checkCancelErr(t, fmt.Sprintf("PutIfMatch(%s) with %s", key, tc.what), err)
		}
		checkObject(t, st, key, data)
		if got := statVersion(t, st, key); got != v {
			t.Errorf("PutIfMatch(%s) with %s changed the version from %q to %q", key, tc.what, v, got)
		}
	}
	// The version still works.
	if _, err := s.replace(t, st, key, bytes.NewReader([]byte("ok")), []byte("ok"), v); err != nil {
		t.Errorf("PutIfMatch(%s) after failed ones: %v", key, err)
	}
	checkListed(t, st, "pimb/", map[string]int64{key: 2})
}

// testPutIfMatchLarge replaces an object, conditionally, with a large
// one. A backend may refuse it (above its single-request limit), but then
// it must leave the object as it was: never a plain Put instead.
func (s *suite) testPutIfMatchLarge(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	const key = "piml/object"
	small := []byte("small")
	put(t, st, key, small)
	v := statVersion(t, st, key)
	n := s.opts.LargeSize
	data := randomBytes(4100, n)
	v2, err := s.replace(t, st, key, bytes.NewReader(data), data, v)
	if err != nil {
		t.Logf("PutIfMatch of %d bytes refused: %v", n, err)
		if errors.Is(err, storage.ErrVersionMismatch) || storage.IsTransient(err) {
			t.Errorf("PutIfMatch of %d bytes with the current version: %v; a refusal must be neither ErrVersionMismatch nor transient", n, err)
		}
		checkObject(t, st, key, small)
		if got := statVersion(t, st, key); got != v {
			t.Errorf("a refused PutIfMatch of %d bytes changed the version from %q to %q", n, v, got)
		}
		return
	}
	checkObject(t, st, key, data)
	_, err = st.PutIfMatch(ctx, key, bytes.NewReader(small), int64(len(small)), v)
	checkMismatch(t, "PutIfMatch with the version before a large replacement", err, false)
	if _, err := s.replace(t, st, key, bytes.NewReader(small), small, v2); err != nil {
		t.Errorf("PutIfMatch of a small object over the large one: %v", err)
	}
	checkObject(t, st, key, small)
}

func (s *suite) testGetWithInfo(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	before := time.Now()
	objects := map[string][]byte{
		"gwi/empty": nil,
		"gwi/small": randomBytes(4200, 1000),
		"gwi/large": randomBytes(4201, 6<<20+3),
	}
	for key, data := range objects {
		put(t, st, key, data)
		checkVersioned(t, st, key, data)
		_, oi, err := storage.ReadVersioned(ctx, st, key, int64(len(data)))
		if err != nil {
			t.Errorf("ReadVersioned(%s) of %d bytes, at most %d: %v", key, len(data), len(data), err)
		} else if !oi.ModTime.IsZero() && (oi.ModTime.Before(before.Add(-time.Hour)) || oi.ModTime.After(time.Now().Add(time.Hour))) {
			t.Errorf("GetWithInfo(%s).ModTime = %v; want about %v", key, oi.ModTime, before)
		}
		if len(data) > 0 {
			if _, _, err := storage.ReadVersioned(ctx, st, key, int64(len(data))-1); err == nil {
				t.Errorf("ReadVersioned(%s) of %d bytes, at most %d: got nil error", key, len(data), len(data)-1)
			}
		}
	}
	for _, key := range []string{"gwi/missing", "gwi", "gwi/small/below", "gwi/smal"} {
		rc, _, err := st.GetWithInfo(ctx, key)
		if err == nil {
			rc.Close()
		}
		if !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("GetWithInfo(%s): got error %v, want ErrNotFound", key, err)
		}
	}

}

// replace calls PutIfMatch, which should succeed, and returns the version
// it gives and its error; with Options.LostReplies, an
// ErrVersionMismatch counts as success if the object holds want, the
// bytes of body that it stores, and the version is then the object's.
// An empty version is an error: every backend reports one.
func (s *suite) replace(t *testing.T, st storage.Storage, key string, body io.ReadSeeker, want []byte, version string) (string, error) {
	t.Helper()
	ctx := t.Context()
	v, err := st.PutIfMatch(ctx, key, body, int64(len(want)), version)
	if s.opts.LostReplies && errors.Is(err, storage.ErrVersionMismatch) {
		if got, oi, gerr := storage.ReadVersioned(ctx, st, key, int64(len(want))); gerr == nil && bytes.Equal(got, want) {
			return oi.Version, nil
		}
	}
	if err == nil && v == "" {
		return "", fmt.Errorf("PutIfMatch(%s) succeeded but returned no version", key)
	}
	return v, err
}

// checkMismatch checks that err is a PutIfMatch's report of another
// version: it wraps storage.ErrVersionMismatch, and ErrNotFound exactly
// if notFound (the object is missing); it is neither ErrExists nor
// transient.
func checkMismatch(t *testing.T, what string, err error, notFound bool) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s: got nil error, want ErrVersionMismatch", what)
	case !errors.Is(err, storage.ErrVersionMismatch):
		t.Errorf("%s: got error %v, want ErrVersionMismatch", what, err)
	case errors.Is(err, storage.ErrNotFound) != notFound:
		t.Errorf("%s: ErrVersionMismatch that is ErrNotFound %t, want %t: %v", what, !notFound, notFound, err)
	case errors.Is(err, storage.ErrExists), storage.IsTransient(err):
		t.Errorf("%s: ErrVersionMismatch that is also ErrExists or transient: %v", what, err)
	}
}

// statVersion returns the Version Stat gives for key.
func statVersion(t *testing.T, st storage.Storage, key string) string {
	t.Helper()
	oi, err := st.Stat(t.Context(), key)
	if err != nil {
		t.Fatalf("Stat(%s): %v", key, err)
	}
	if oi.Version == "" {
		t.Fatalf("Stat(%s) gives no Version", key)
	}
	return oi.Version
}

// checkVersioned checks that key holds want, through Get, Stat and
// GetWithInfo, and that Stat, List and GetWithInfo give one Version, which
// it returns.
func checkVersioned(t *testing.T, st storage.Storage, key string, want []byte) string {
	t.Helper()
	ctx := t.Context()
	checkObject(t, st, key, want)
	v := statVersion(t, st, key)
	rc, oi, err := st.GetWithInfo(ctx, key)
	if err != nil {
		t.Fatalf("GetWithInfo(%s): %v", key, err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatalf("GetWithInfo(%s): read: %v", key, err)
	}
	equalBytes(t, fmt.Sprintf("GetWithInfo(%s)", key), got, want)
	if oi.Key != key || oi.Size != int64(len(want)) || oi.Version != v {
		t.Errorf("GetWithInfo(%s) = key %q size %d version %q; want key %q size %d and Stat's version %q",
			key, oi.Key, oi.Size, oi.Version, key, len(want), v)
	}
	listed := false
	err = st.List(ctx, key, func(oi storage.ObjectInfo) error {
		if oi.Key == key {
			listed = true
			if oi.Version != v {
				t.Errorf("List(%s) gives version %q; Stat gives %q", key, oi.Version, v)
			}
		}
		return nil
	})
	if err != nil || !listed {
		t.Errorf("List(%s): %v, listed %t", key, err, listed)
	}
	return v
}
