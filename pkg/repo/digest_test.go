package repo

import (
	"context"
	"crypto/sha256"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/mem"
)

// digestRecorder records, for each Put, whether its context carried a
// SHA-256 (storage.WithContentSHA256) and whether it was the body's.
type digestRecorder struct {
	storage.Storage
	mu   sync.Mutex
	puts map[string]string // key -> "none", "right" or "wrong"
}

func (d *digestRecorder) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	b, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return err
	}
	got := "none"
	if sum, ok := storage.ContentSHA256(ctx); ok {
		got = "wrong"
		if sum == sha256.Sum256(b) {
			got = "right"
		}
	}
	d.mu.Lock()
	d.puts[key] = got
	d.mu.Unlock()
	return d.Storage.Put(ctx, key, body, size)
}

// TestSaveGivesContentSHA256: packs and index objects go to the storage
// with their id as the body's SHA-256, so that a backend can sign it
// rather than hash them again; nothing else claims one.
func TestSaveGivesContentSHA256(t *testing.T) {
	ctx := context.Background()
	st := &digestRecorder{Storage: mem.New(), puts: map[string]string{}}
	cfg, err := NewConfig(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Init(ctx, st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, index := storePack(t, r, "blob", true)
	kinds := map[string]int{}
	for key, got := range st.puts {
		want := "none"
		if strings.HasPrefix(key, dataPrefix) || strings.HasPrefix(key, indexPrefix) {
			want = "right"
			kinds[key[:strings.IndexByte(key, '/')]]++
		}
		if got != want {
			t.Errorf("Put %s: SHA-256 %s, want %s", key, got, want)
		}
	}
	if kinds["data"] != 1 || kinds["index"] != 1 || st.puts[index] != "right" {
		t.Errorf("puts %v: want one pack and one index object with their SHA-256", st.puts)
	}
}
