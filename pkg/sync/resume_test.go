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

// What cutTailFirst's tail became, as testHookTail saw it.
const (
	noTail   = iota // not cut first: the file did not grow enough
	tailNone        // cut first, none of it used (cut again to the end)
	tailSome        // cut first, used from where a new cut met it
	tailAll         // cut first, used whole
	tailAny         // cut first, whatever was used of it
)

// TestChangedFileResumesAfterItsUnchangedChunks: a changed file whose
// leading chunks are as before is cut from the end of the last of them,
// and its content is what cutting the whole file gives (a forced backup,
// which has no parent's chunks to go by), for an append, a change in the
// middle, one in the first chunk, a truncation and a file grown in place.
// A file grown by more than tailFirstMin has its tail cut first; then
// also with a change before the tail (the old chunks stop matching, and
// cutting again from there meets the tail's cuts), in the first chunk,
// an insertion, and a file grown with none of its old bytes. (A tail none
// of whose cuts a new cut meets needs data with no content-defined cuts
// at all after where the old last chunk began; it is cut to the end
// again, as without the tail.)
func TestChangedFileResumesAfterItsUnchangedChunks(t *testing.T) {
	base := randomBytes(1, 24<<20)
	grow := func(b []byte) []byte { return append(b, randomBytes(2, 5<<20)...) }
	for _, c := range []struct {
		name    string
		change  func([]byte) []byte
		resumes bool
		tail    int
	}{
		{"append", grow, true, tailAll},
		{"middle", func(b []byte) []byte { b[len(b)/2] ^= 0xff; return b }, true, noTail},
		{"first chunk", func(b []byte) []byte { b[100] ^= 0xff; return b }, false, noTail},
		{"truncated", func(b []byte) []byte { return b[:len(b)/3] }, true, noTail},
		{"tail rewritten", func(b []byte) []byte { copy(b[len(b)-1000:], randomBytes(3, 1000)); return b }, true, noTail},
		// Cut first only if the old last chunk was within 1000 bytes of
		// tailFirstMin or longer (chunks go up to 8 MiB).
		{"short append", func(b []byte) []byte { return append(b, randomBytes(2, 1000)...) }, true, tailAll},
		{"middle and append", func(b []byte) []byte { b[len(b)/2] ^= 0xff; return grow(b) }, true, tailAll},
		{"first chunk and append", func(b []byte) []byte { b[100] ^= 0xff; return grow(b) }, false, tailAll},
		// The tail was cut from where the old last chunk began, which is
		// no cut of the new bytes there: cutting again meets the tail's
		// cuts a chunk or two later, as a rule (each repository draws its
		// own chunker polynomial).
		{"insertion", func(b []byte) []byte { return slices.Insert(b, len(b)/2, randomBytes(7, 5<<20)...) }, true, tailAny},
		{"grown anew", func(b []byte) []byte { return randomBytes(6, 30<<20) }, false, tailAny},
	} {
		t.Run(c.name, func(t *testing.T) {
			tail := noTail
			testHookTail = func(used, chunks int) {
				switch {
				case used == 0:
					tail = tailNone
				case used < chunks:
					tail = tailSome
				default:
					tail = tailAll
				}
			}
			defer func() { testHookTail = nil }()
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
			var lead int64 // where the old last chunk began
			for _, id := range prev.Content[:len(prev.Content)-1] {
				loc, _ := r.Index().Lookup(id)
				lead += int64(loc.RawLen)
			}
			wantTail := c.tail
			if len(now) <= len(old) || int64(len(now))-lead < tailFirstMin {
				wantTail = noTail
			}
			if tail != wantTail && (wantTail != tailAny || tail == noTail) {
				t.Fatalf("the tail cut first: %d, want %d (0 not cut first, 1 none used, 2 some, 3 all, 4 any)", tail, wantTail)
			}
			if c.name == "append" {
				// Every chunk but the old last one was taken as it was.
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
