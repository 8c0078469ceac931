package bandwidth

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/mem"
	"github.com/backupd/backupd/pkg/storage/storagetest"
)

// fast limits both directions, but hardly slows the suite down.
var fast = Options{UploadBytesPerSecond: 1 << 30, DownloadBytesPerSecond: 1 << 30}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage { return New(mem.New(), fast) })
}

func TestValidate(t *testing.T) {
	if err := (Options{UploadBytesPerSecond: -1}).Validate(); err == nil {
		t.Fatal("negative upload rate accepted")
	}
	if err := (Options{DownloadBytesPerSecond: -1}).Validate(); err == nil {
		t.Fatal("negative download rate accepted")
	}
	if err := (Options{}).Validate(); err != nil {
		t.Fatal(err)
	}
	for _, rate := range []int64{1, 1000, 1 << 20, 1 << 40} {
		b := newBucket(rate)
		if b.chunk < minChunk || b.chunk > maxChunk || b.lim.Burst() != b.chunk {
			t.Fatalf("rate %d: chunk %d, burst %d", rate, b.chunk, b.lim.Burst())
		}
	}
}

// atLeast fails t if transferring n bytes through a bucket of perSecond
// took less than the budget allows: (n - burst) / perSecond. There is no
// upper bound: a slow machine may take any time.
func atLeast(t *testing.T, what string, elapsed time.Duration, n, perSecond int64) {
	t.Helper()
	burst := int64(newBucket(perSecond).chunk)
	want := time.Duration(float64(n-burst) / float64(perSecond) * float64(time.Second))
	if elapsed < want*95/100 {
		t.Fatalf("%s of %d bytes at %d B/s took %v, want at least %v", what, n, perSecond, elapsed, want)
	}
}

func TestThrottlesTransfers(t *testing.T) {
	const rate, n = 8 << 20, 1 << 20
	ctx := context.Background()
	m := mem.New()
	s := New(m, Options{UploadBytesPerSecond: rate, DownloadBytesPerSecond: rate})
	data := make([]byte, n)

	start := time.Now()
	if err := s.Put(ctx, "k", bytes.NewReader(data), n); err != nil {
		t.Fatal(err)
	}
	atLeast(t, "Put", time.Since(start), n, rate)

	// A create-only write pays like a Put.
	start = time.Now()
	if err := s.PutIfAbsent(ctx, "k2", bytes.NewReader(data), n); err != nil {
		t.Fatal(err)
	}
	atLeast(t, "PutIfAbsent", time.Since(start), n, rate)
	if got, err := storage.ReadAll(ctx, m, "k2", 0, -1); err != nil || len(got) != n {
		t.Fatalf("PutIfAbsent stored %d bytes, %v", len(got), err)
	}

	// So does a conditional one.
	oi, err := m.Stat(ctx, "k2")
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if _, err := s.PutIfMatch(ctx, "k2", bytes.NewReader(data[1:]), n-1, oi.Version); err != nil {
		t.Fatal(err)
	}
	atLeast(t, "PutIfMatch", time.Since(start), n-1, rate)
	if got, err := storage.ReadAll(ctx, m, "k2", 0, -1); err != nil || len(got) != n-1 {
		t.Fatalf("PutIfMatch stored %d bytes, %v", len(got), err)
	}

	start = time.Now()
	got, err := storage.ReadAll(ctx, s, "k", 0, -1)
	if err != nil || len(got) != n {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	atLeast(t, "Get", time.Since(start), n, rate)

	// A versioned read pays like a Get.
	start = time.Now()
	got, _, err = storage.ReadVersioned(ctx, s, "k", n)
	if err != nil || len(got) != n {
		t.Fatalf("ReadVersioned read %d bytes, %v", len(got), err)
	}
	atLeast(t, "GetWithInfo", time.Since(start), n, rate)

	// Metadata calls do not pay.
	if _, err := s.Stat(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CleanUploads(ctx, "", time.Now()); err != nil {
		t.Fatal(err)
	}
}

// One Limiter is one budget, whatever storages and goroutines use it.
func TestBudgetIsShared(t *testing.T) {
	const rate, n = 8 << 20, 512 << 10
	l := NewLimiter(Options{UploadBytesPerSecond: rate})
	stores := []storage.Storage{l.Wrap(mem.New()), l.Wrap(mem.New())}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = stores[i%2].Put(context.Background(), "k", bytes.NewReader(make([]byte, n)), n)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	atLeast(t, "4 concurrent Puts", time.Since(start), 4*n, rate)
}

// signalReader tells reads about each Read.
type signalReader struct {
	r     io.Reader
	reads chan<- struct{}
}

func (s *signalReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	select {
	case s.reads <- struct{}{}:
	default:
	}
	return n, err
}

// signalGets makes the readers of its Gets tell reads about each Read.
type signalGets struct {
	storage.Storage
	reads chan<- struct{}
}

func (s *signalGets) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	rc, err := s.Storage.Get(ctx, key, offset, length)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{&signalReader{r: rc, reads: s.reads}, rc}, nil
}

// await returns what arrives on done, failing t if nothing does for long:
// the throttled call would otherwise wait about 1000 s for its budget.
func await(t *testing.T, what string, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return after its context was cancelled", what)
		return nil
	}
}

// At 1 B/s, the first chunk (1 KiB) is the burst and the second waits
// about 1000 s, unless the context is cancelled.
func TestCancelInterruptsThrottledPut(t *testing.T) {
	s := New(mem.New(), Options{UploadBytesPerSecond: 1})
	reads := make(chan struct{}, 16)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		br := bytes.NewReader(make([]byte, 64<<10))
		body := struct {
			io.Reader
			io.Seeker
		}{&signalReader{r: br, reads: reads}, br}
		done <- s.Put(ctx, "k", body, 64<<10)
	}()
	<-reads // the burst
	<-reads // the chunk that must wait
	cancel()
	if err := await(t, "Put", done); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestCancelInterruptsThrottledGet(t *testing.T) {
	m := mem.New()
	if err := m.Put(context.Background(), "k", bytes.NewReader(make([]byte, 64<<10)), 64<<10); err != nil {
		t.Fatal(err)
	}
	reads := make(chan struct{}, 16)
	s := New(&signalGets{Storage: m, reads: reads}, Options{DownloadBytesPerSecond: 1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rc, err := s.Get(ctx, "k", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, rc)
		done <- err
	}()
	<-reads // the burst
	<-reads // the chunk that must wait
	cancel()
	if err := await(t, "Get's reader", done); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

// recording keeps the last Put body and Get reader it saw.
type recording struct {
	storage.Storage
	body io.ReadSeeker
	rc   io.ReadCloser
}

func (r *recording) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	r.body = body
	return r.Storage.Put(ctx, key, body, size)
}

func (r *recording) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	rc, err := r.Storage.Get(ctx, key, offset, length)
	r.rc = rc
	return rc, err
}

func TestUnlimitedAddsNoLimiter(t *testing.T) {
	ctx := context.Background()
	m := mem.New()
	if got := NewLimiter(Options{}).Wrap(m); got != storage.Storage(m) {
		t.Fatalf("unlimited Wrap returned %T, want the storage itself", got)
	}

	// Unlimited uploads: the body passes untouched.
	rec := &recording{Storage: m}
	body := bytes.NewReader([]byte("abc"))
	if err := New(rec, Options{DownloadBytesPerSecond: 1 << 20}).Put(ctx, "k", body, 3); err != nil {
		t.Fatal(err)
	}
	if rec.body != body {
		t.Fatalf("unlimited uploads: body wrapped in %T", rec.body)
	}

	// Unlimited downloads: the reader passes untouched.
	rc, err := New(rec, Options{UploadBytesPerSecond: 1 << 20}).Get(ctx, "k", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if rc != rec.rc {
		t.Fatalf("unlimited downloads: reader wrapped in %T", rc)
	}
}

// checkingPut checks the body it is given behaves like the caller's.
type checkingPut struct {
	storage.Storage
	t          *testing.T
	wantReadAt bool
}

func (c *checkingPut) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	ra, ok := body.(io.ReaderAt)
	if ok != c.wantReadAt {
		c.t.Errorf("body %T: io.ReaderAt %v, want %v", body, ok, c.wantReadAt)
	}
	if ok {
		p := make([]byte, 4)
		if n, err := ra.ReadAt(p, 3); n != 4 || err != nil || string(p) != "3456" {
			c.t.Errorf("ReadAt(4 at 3) = %d %q %v", n, p, err)
		}
		if n, err := ra.ReadAt(p, 8); n != 2 || err != io.EOF {
			c.t.Errorf("ReadAt(4 at 8) = %d, %v; want 2, EOF", n, err)
		}
	}
	if _, err := io.ReadFull(body, make([]byte, 5)); err != nil {
		c.t.Errorf("read: %v", err)
	}
	if pos, err := body.Seek(0, io.SeekStart); pos != 0 || err != nil {
		c.t.Errorf("Seek(0) = %d, %v", pos, err)
	}
	return c.Storage.Put(ctx, key, body, size)
}

func TestBodySeeksAndReadsAt(t *testing.T) {
	ctx := context.Background()
	data := []byte("0123456789")
	for _, tc := range []struct {
		name string
		body io.ReadSeeker
		at   bool
	}{
		{"ReaderAt", bytes.NewReader(data), true},
		{"ReadSeeker", struct{ io.ReadSeeker }{bytes.NewReader(data)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := mem.New()
			s := New(&checkingPut{Storage: m, t: t, wantReadAt: tc.at}, Options{UploadBytesPerSecond: 1 << 20})
			if err := s.Put(ctx, "k", tc.body, int64(len(data))); err != nil {
				t.Fatal(err)
			}
			if got, err := storage.ReadAll(ctx, m, "k", 0, -1); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("stored %q, %v", got, err)
			}
		})
	}
}

func TestNewPanicsOnNegativeRate(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("NewLimiter with a negative rate did not panic")
		}
	}()
	NewLimiter(Options{UploadBytesPerSecond: -1})
}
