package s3

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/backupd/backupd/internal/testservers"
	"github.com/backupd/backupd/pkg/storage"
)

// TestContentSHA256MinIO checks that a single-request upload signs the
// SHA-256 given by storage.WithContentSHA256 in place of its own, and
// that the service holds the bytes to it: a wrong sum fails every kind of
// write, for good and storing nothing; the right one stores the object.
// A multipart upload, whose parts each have their own digest, ignores it.
func TestContentSHA256MinIO(t *testing.T) {
	srv := testservers.MinIO(t)
	s := open(t, userConfig(srv, srv.NewBucket(t)))
	data := bytes.Repeat([]byte("backupd pack bytes "), 1<<15) // 608 KiB
	sum := sha256.Sum256(data)
	wrong := sum
	wrong[0] ^= 1
	ctx := t.Context()
	bad := storage.WithContentSHA256(ctx, wrong)

	if err := s.Put(bad, "put", bytes.NewReader(data), int64(len(data))); err == nil || storage.IsTransient(err) {
		t.Errorf("Put with a wrong SHA-256: %v, want a permanent error", err)
	}
	if err := s.PutIfAbsent(bad, "absent", bytes.NewReader(data), int64(len(data))); err == nil || storage.IsTransient(err) || errors.Is(err, storage.ErrExists) {
		t.Errorf("PutIfAbsent with a wrong SHA-256: %v, want a permanent error", err)
	}
	for _, key := range []string{"put", "absent"} {
		if _, err := s.Stat(ctx, key); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Stat(%s) after a write with a wrong SHA-256: %v, want ErrNotFound", key, err)
		}
	}
	put(t, s, "match", []byte("old"))
	info, err := s.Stat(ctx, "match")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutIfMatch(bad, "match", bytes.NewReader(data), int64(len(data)), info.Version); err == nil || storage.IsTransient(err) || errors.Is(err, storage.ErrVersionMismatch) {
		t.Errorf("PutIfMatch with a wrong SHA-256: %v, want a permanent error", err)
	}

	good := storage.WithContentSHA256(ctx, sum)
	if err := s.Put(good, "put", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put with its SHA-256: %v", err)
	}
	if err := s.PutIfAbsent(good, "absent", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("PutIfAbsent with its SHA-256: %v", err)
	}
	if _, err := s.PutIfMatch(good, "match", bytes.NewReader(data), int64(len(data)), info.Version); err != nil {
		t.Fatalf("PutIfMatch with its SHA-256: %v", err)
	}
	for _, key := range []string{"put", "absent", "match"} {
		if got, err := storage.ReadAll(ctx, s, key, 0, -1); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: %d bytes, %v; want the %d put", key, len(got), err, len(data))
		}
	}

	big := bytes.Repeat(data, MinChunkSize/len(data)+1) // two parts
	if err := s.Put(storage.WithContentSHA256(ctx, wrong), "big", bytes.NewReader(big), int64(len(big))); err != nil {
		t.Fatalf("multipart Put with an unrelated SHA-256: %v", err)
	}
	if got, err := storage.ReadAll(ctx, s, "big", 0, -1); err != nil || !bytes.Equal(got, big) {
		t.Errorf("big: %d bytes, %v; want the %d put", len(got), err, len(big))
	}
}

// TestContentSHA256Header checks what goes over the wire: the given sum
// as x-amz-content-sha256, and without one the SDK's own digest.
func TestContentSHA256Header(t *testing.T) {
	var got []string
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.Method == http.MethodPut {
			got = append(got, r.Header.Get("X-Amz-Content-Sha256"))
		}
	}))
	defer ts.Close()
	s := open(t, Config{AccessKey: "a", SecretKey: "s", RegionEndpoint: ts.URL, Bucket: "bucket", ChunkSize: MinChunkSize})
	data := []byte("pack")
	sum := sha256.Sum256(data)
	claimed := sha256.Sum256([]byte("what the caller says"))
	if err := s.Put(storage.WithContentSHA256(t.Context(), claimed), "k", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	put(t, s, "k", data)
	want := []string{hex.EncodeToString(claimed[:]), hex.EncodeToString(sum[:])}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("x-amz-content-sha256 sent: %q, want %q", got, want)
	}
}

// BenchmarkPutPack puts a 16 MiB pack into MinIO on loopback, with the
// SDK hashing it first (sdk-sha256) and with its SHA-256 given
// (given-sha256), as pkg/repo gives a pack's id. The server's work is the
// same; the difference is the client's pass of SHA-256 over the body.
func BenchmarkPutPack(b *testing.B) {
	srv := testservers.MinIO(b)
	cfg := userConfig(srv, srv.NewBucket(b))
	cfg.ChunkSize = 32 << 20 // one request, as a pack under the default chunksize
	s, err := New(b.Context(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	data := make([]byte, 16<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>13)
	}
	sum := sha256.Sum256(data)
	for _, given := range []bool{false, true} {
		name := "sdk-sha256"
		ctx := b.Context()
		if given {
			name, ctx = "given-sha256", storage.WithContentSHA256(ctx, sum)
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if err := s.Put(ctx, "pack", bytes.NewReader(data), int64(len(data))); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
