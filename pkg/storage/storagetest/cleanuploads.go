package storagetest

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/storage"
)

func (s *suite) testCleanUploadsEmpty(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	for _, before := range []time.Time{{}, time.Now(), time.Now().Add(time.Hour)} {
		for _, prefix := range []string{"", "a/", "a", "data/ab/"} {
			n, err := st.CleanUploads(ctx, prefix, before)
			if n != 0 || err != nil {
				t.Errorf("CleanUploads(%q, %v) on an empty storage = %d, %v; want 0, nil", prefix, before, n, err)
			}
		}
	}
	checkListed(t, st, "", map[string]int64{})
}

// testCleanUploadsKeepsObjects cleans, as eagerly as it can be asked to
// (everything started before an hour from now), a storage that holds only
// complete objects, some of them under names that look temporary.
func (s *suite) testCleanUploadsKeepsObjects(t *testing.T) {
	st := s.open(t)
	ctx := t.Context()
	objects := map[string][]byte{
		"data/ab/obj":       randomBytes(900, 1000),
		"data/ab/empty":     nil,
		"data/cd/large":     randomBytes(901, 1<<20+13),
		"index/1":           randomBytes(902, 10),
		"tmp/x.tmp-1":       []byte("not temporary"),
		"tmp/.tmp":          []byte("nor this"),
		".tmp-dir/obj":      []byte("a directory name"),
		"uploads/multipart": []byte("m"),
		"top":               []byte("t"),
	}
	want := map[string]int64{}
	for key, data := range objects {
		put(t, st, key, data)
		want[key] = int64(len(data))
	}
	created := []byte("create-only")
	if err := s.create(t, st, "config", bytes.NewReader(created), created); err != nil {
		t.Fatalf("PutIfAbsent(config): %v", err)
	}
	objects["config"] = created
	want["config"] = int64(len(created))

	later := time.Now().Add(time.Hour)
	for _, prefix := range []string{"", "data/", "data/ab/", "d", "tmp/", "tmp/.tmp", ".tmp-dir/", "config", "nothing/", "zzz"} {
		n, err := st.CleanUploads(ctx, prefix, later)
		if n != 0 || err != nil {
			t.Errorf("CleanUploads(%q) of a storage of complete objects = %d, %v; want 0, nil", prefix, n, err)
		}
	}
	// No valid key starts with these: nothing to do, or ErrInvalidKey.
	for _, prefix := range []string{"/", "../", "..", "./data", "data//", "a\x00"} {
		n, err := st.CleanUploads(ctx, prefix, later)
		if n != 0 || (err != nil && !errors.Is(err, storage.ErrInvalidKey)) {
			t.Errorf("CleanUploads(%q) = %d, %v; want 0 and no error or ErrInvalidKey", prefix, n, err)
		}
	}
	checkListed(t, st, "", want)
	for key, data := range objects {
		checkObject(t, st, key, data)
	}
}
