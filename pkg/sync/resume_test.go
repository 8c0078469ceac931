package sync

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 11))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestChangedFileResumesAfterItsUnchangedChunks: a changed file whose
// leading chunks are as before is cut from the end of the last of them,
// and its content is what cutting the whole file gives (a forced backup,
// which has no parent's chunks to go by), for an append, a change in the
// middle, one in the first chunk, a truncation and a file grown in place.
func TestChangedFileResumesAfterItsUnchangedChunks(t *testing.T) {
	base := randomBytes(1, 24<<20)
	for _, c := range []struct {
		name    string
		change  func([]byte) []byte
		resumes bool
	}{
		{"append", func(b []byte) []byte { return append(b, randomBytes(2, 5<<20)...) }, true},
		{"middle", func(b []byte) []byte { b[len(b)/2] ^= 0xff; return b }, true},
		{"first chunk", func(b []byte) []byte { b[100] ^= 0xff; return b }, false},
		{"truncated", func(b []byte) []byte { return b[:len(b)/3] }, true},
		{"tail rewritten", func(b []byte) []byte { copy(b[len(b)-1000:], randomBytes(3, 1000)); return b }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := t.TempDir()
			p := filepath.Join(src, "db")
			old := slices.Clone(base)
			must(t, os.WriteFile(p, old, 0o644))
			must(t, os.Chtimes(p, time.Unix(1e9, 0), time.Unix(1e9, 0)))
			r, _ := newMemRepo(t)
			first := doBackup(t, r, src)
			prev := rootNodes(t, r, first)["db"]
			if len(prev.Content) < 4 {
				t.Fatalf("the file has %d chunks, want several", len(prev.Content))
			}
			now := c.change(slices.Clone(base))
			must(t, os.WriteFile(p, now, 0o644))
			must(t, os.Truncate(p, int64(len(now))))
			res, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1"})
			must(t, err)
			got := rootNodes(t, r, res)["db"]
			forced, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1", Force: true})
			must(t, err)
			if forced.ResumedBytes != 0 {
				t.Fatalf("a forced backup resumed %d bytes", forced.ResumedBytes)
			}
			want := rootNodes(t, r, forced)["db"]
			if !slices.Equal(got.Content, want.Content) || got.Size != uint64(len(now)) {
				t.Fatalf("content after resuming: %d chunks, %d bytes; cutting the whole file: %d chunks, %d bytes", len(got.Content), got.Size, len(want.Content), want.Size)
			}
			if c.resumes != (res.ResumedBytes > 0) || res.ResumedBytes >= int64(len(now)) {
				t.Fatalf("resumed %d of %d bytes, want resuming %v", res.ResumedBytes, len(now), c.resumes)
			}
			if c.name == "append" {
				// Every chunk but the old last one was taken as it was.
				var lead int64
				for _, id := range prev.Content[:len(prev.Content)-1] {
					loc, _ := r.Index().Lookup(id)
					lead += int64(loc.RawLen)
				}
				if res.ResumedBytes != lead {
					t.Fatalf("append: resumed %d bytes, want the old leading chunks' %d", res.ResumedBytes, lead)
				}
			}
			dst := filepath.Join(t.TempDir(), "r")
			_, err = Restore(context.Background(), r, res.Snapshot, dst, RestoreOptions{})
			must(t, err)
			if b, err := os.ReadFile(filepath.Join(dst, "db")); err != nil || !bytes.Equal(b, now) {
				t.Fatalf("restored: %d bytes, %v; want the %d bytes written", len(b), err, len(now))
			}
		})
	}
}

// TestResumeNeverTrustsTheParent: a parent whose chunk list does not
// describe the file (here: another file's chunks under this name) is
// hashed against, not believed.
func TestResumeNeverTrustsTheParent(t *testing.T) {
	src := t.TempDir()
	a, b := randomBytes(4, 12<<20), randomBytes(5, 12<<20)
	must(t, os.WriteFile(filepath.Join(src, "f"), a, 0o644))
	r, _ := newMemRepo(t)
	doBackup(t, r, src)
	must(t, os.WriteFile(filepath.Join(src, "f"), b, 0o644))
	res, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1"})
	must(t, err)
	if res.ResumedBytes != 0 {
		t.Fatalf("resumed %d bytes of a file with none of its old content", res.ResumedBytes)
	}
	dst := filepath.Join(t.TempDir(), "r")
	_, err = Restore(context.Background(), r, res.Snapshot, dst, RestoreOptions{})
	must(t, err)
	if got, err := os.ReadFile(filepath.Join(dst, "f")); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("restored: %d bytes, %v", len(got), err)
	}
}
