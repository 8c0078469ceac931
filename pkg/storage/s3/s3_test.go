package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/backupd/backupd/internal/testservers"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/storagetest"
)

func TestMain(m *testing.M) { testservers.Main(m) }

// userConfig is the config of the restricted user (the minimal IAM policy
// only) for bucket on srv.
func userConfig(srv *testservers.MinIOServer, bucket string) Config {
	return Config{
		AccessKey:      srv.UserAccessKey,
		SecretKey:      srv.UserSecretKey,
		Region:         srv.Region,
		RegionEndpoint: srv.URL,
		Bucket:         bucket,
		ChunkSize:      MinChunkSize,
	}
}

// rootConfig is userConfig with the root user's credentials.
func rootConfig(srv *testservers.MinIOServer, bucket string) Config {
	c := userConfig(srv, bucket)
	c.AccessKey, c.SecretKey = srv.RootUser, srv.RootPassword
	return c
}

func open(t *testing.T, cfg Config) *Storage {
	t.Helper()
	s, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New(%v): %v", cfg, err)
	}
	s.uploadGrace = 0 // uploads of a test are seconds old
	t.Cleanup(func() { s.Close() })
	return s
}

// TestConformance runs the suite as the restricted user: the minimal
// policy of docs/STORAGE.md must be enough. Each subtest has its own root
// directory in one bucket; the 5 MiB chunk size sends the large objects
// up in several parts.
func TestConformance(t *testing.T) {
	srv := testservers.MinIO(t)
	bucket := srv.NewBucket(t)
	var n atomic.Int64
	const rootLen = len("conf-00")
	// 1200 objects still make two pages of 1000.
	opts := storagetest.Options{
		MaxKeyLength: maxKeyLength - rootLen - 1,
		ListCount:    1200,
		// Versions are ETags: identical bytes, identical version.
		ContentVersions: true,
	}
	storagetest.RunWithOptions(t, opts, func(t *testing.T) storage.Storage {
		cfg := userConfig(srv, bucket)
		cfg.RootDirectory = fmt.Sprintf("conf-%02d", n.Add(1))
		s, err := New(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestRootDirectoryLayout(t *testing.T) {
	srv := testservers.MinIO(t)
	bucket := srv.NewBucket(t)
	cfg := userConfig(srv, bucket)
	cfg.RootDirectory = "/owners/o1/"
	s := open(t, cfg)
	put(t, s, "data/ab/x", []byte("x"))
	bare := open(t, userConfig(srv, bucket))
	if got := listAll(t, bare, ""); len(got) != 1 || got[0] != "owners/o1/data/ab/x" {
		t.Errorf("bucket holds %q, want [owners/o1/data/ab/x]", got)
	}
	// Objects outside the root are not seen, nor are names that are not
	// keys (a console's "directory" marker).
	put(t, bare, "owners/o10/y", []byte("y"))
	if _, err := bare.client.PutObject(t.Context(), &awss3.PutObjectInput{
		Bucket: &bucket, Key: aws.String("owners/o1/dir/"), Body: strings.NewReader(""),
	}); err != nil {
		t.Fatal(err)
	}
	if got := listAll(t, s, ""); len(got) != 1 || got[0] != "data/ab/x" {
		t.Errorf("List under the root = %q, want [data/ab/x]", got)
	}
	// The root counts against S3's 1024-byte key limit.
	long := strings.Repeat("k", maxKeyLength-len("owners/o1/")+1)
	if err := s.Put(t.Context(), long, bytes.NewReader(nil), 0); !errors.Is(err, storage.ErrInvalidKey) {
		t.Errorf("Put of a key too long with the root: %v, want ErrInvalidKey", err)
	}
}

func TestListDotPrefixes(t *testing.T) {
	srv := testservers.MinIO(t)
	s := open(t, userConfig(srv, srv.NewBucket(t)))
	for _, k := range []string{".hidden", "..dots", "a/.x", "a/..y", "a/z", "b"} {
		put(t, s, k, []byte(k))
	}
	for prefix, want := range map[string]string{
		".":     "..dots .hidden",
		"..":    "..dots",
		"a/.":   "a/..y a/.x",
		"a/..":  "a/..y",
		"a/...": "",
	} {
		got := listAll(t, s, prefix)
		slices.Sort(got)
		if strings.Join(got, " ") != want {
			t.Errorf("List(%q) = %q, want %q", prefix, got, want)
		}
	}
}

func TestMissingBucket(t *testing.T) {
	srv := testservers.MinIO(t)
	ctx := t.Context()
	missing := "backupd-missing-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))

	// Not created without CreateBucket, whoever asks.
	if _, err := New(ctx, rootConfig(srv, missing)); !errors.Is(err, ErrNoBucket) {
		t.Errorf("New as root on a missing bucket: %v, want ErrNoBucket", err)
	}
	// The restricted user may not even look at a bucket outside its
	// policy, let alone create one.
	cfg := userConfig(srv, missing)
	cfg.CreateBucket = true
	if _, err := New(ctx, cfg); !errors.Is(err, storage.ErrPermission) {
		t.Errorf("New as the restricted user with CreateBucket: %v, want ErrPermission", err)
	}
	root := open(t, rootConfig(srv, srv.NewBucket(t)))
	if _, err := root.client.HeadBucket(ctx, &awss3.HeadBucketInput{Bucket: &missing}); !isNotFound(err) {
		t.Fatalf("bucket %s after failed attempts: HeadBucket = %v, want not found", missing, err)
	}

	// With CreateBucket, root creates it (private), once.
	cfg = rootConfig(srv, missing)
	cfg.CreateBucket = true
	s := open(t, cfg)
	put(t, s, "a", []byte("a"))
	open(t, cfg) // exists now: no error
	if _, err := New(ctx, rootConfig(srv, missing)); err != nil {
		t.Errorf("New after creation without CreateBucket: %v", err)
	}
	// Private: anonymous access is refused.
	resp, err := http.Get(srv.URL + "/" + missing + "/a")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("anonymous GET of an object in the created bucket: %s, want 403", resp.Status)
	}
}

func TestWrongCredentials(t *testing.T) {
	srv := testservers.MinIO(t)
	bucket := srv.NewBucket(t)
	cfg := userConfig(srv, bucket)
	cfg.SecretKey = "wrong-secret-0123456789"
	_, err := New(t.Context(), cfg)
	if !errors.Is(err, storage.ErrPermission) {
		t.Errorf("New with a wrong secret: %v, want ErrPermission", err)
	}
	if err != nil && strings.Contains(err.Error(), cfg.SecretKey) {
		t.Errorf("error shows the secret: %v", err)
	}
	// The restricted user on a bucket that exists but that its policy
	// does not name.
	cfg = rootConfig(srv, "backupd-not-granted")
	cfg.CreateBucket = true
	open(t, cfg)
	if _, err := New(t.Context(), userConfig(srv, "backupd-not-granted")); !errors.Is(err, storage.ErrPermission) {
		t.Errorf("New on a bucket outside the policy: %v, want ErrPermission", err)
	}
	s := open(t, userConfig(srv, bucket))
	s.bucket = "backupd-not-granted"
	if _, err := s.Stat(t.Context(), "k"); !errors.Is(err, storage.ErrPermission) {
		t.Errorf("Stat in a bucket outside the policy: %v, want ErrPermission", err)
	}
	if err := s.Put(t.Context(), "k", bytes.NewReader(nil), 0); !errors.Is(err, storage.ErrPermission) {
		t.Errorf("Put in a bucket outside the policy: %v, want ErrPermission", err)
	}
}

// failingBody fails every read at or past failAt (until a Seek back
// before it); it is a plain io.ReadSeeker, not an io.ReaderAt.
type failingBody struct {
	data   []byte
	pos    int64
	failAt int64
	onFail func() error
}

func (b *failingBody) Read(p []byte) (int, error) {
	if b.pos >= b.failAt {
		return 0, b.onFail()
	}
	n := copy(p[:min(int64(len(p)), b.failAt-b.pos)], b.data[b.pos:])
	b.pos += int64(n)
	return n, nil
}

func (b *failingBody) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		b.pos = off
	case io.SeekCurrent:
		b.pos += off
	case io.SeekEnd:
		b.pos = int64(len(b.data)) + off
	}
	return b.pos, nil
}

// pendingUploads lists, as root, the multipart uploads in progress for
// objectKey.
func pendingUploads(t *testing.T, root *Storage, objectKey string) int {
	t.Helper()
	out, err := root.client.ListMultipartUploads(t.Context(), &awss3.ListMultipartUploadsInput{
		Bucket: &root.bucket, Prefix: &objectKey,
	})
	if err != nil {
		t.Fatalf("ListMultipartUploads: %v", err)
	}
	return len(out.Uploads)
}

func TestFailedMultipartUploadIsAborted(t *testing.T) {
	srv := testservers.MinIO(t)
	bucket := srv.NewBucket(t)
	s := open(t, userConfig(srv, bucket)) // chunk size 5 MiB
	root := open(t, rootConfig(srv, bucket))
	ctx := t.Context()
	data := bytes.Repeat([]byte("0123456789abcdef"), 20<<20/16) // 20 MiB: 4 parts

	// The check below does see an upload in progress.
	out, err := root.client.CreateMultipartUpload(ctx, &awss3.CreateMultipartUploadInput{Bucket: &bucket, Key: aws.String("probe")})
	if err != nil {
		t.Fatal(err)
	}
	if n := pendingUploads(t, root, "probe"); n != 1 {
		t.Fatalf("an upload in progress is not listed (%d): the check below is worthless", n)
	}
	if err := root.abort(ctx, "probe", *out.UploadId); err != nil {
		t.Fatal(err)
	}

	errDisk := errors.New("disk on fire")
	for _, tc := range []struct {
		name string
		body func(cancel func()) io.ReadSeeker
		want error
	}{
		{"body fails", func(func()) io.ReadSeeker {
			return &failingBody{data: data, failAt: 12 << 20, onFail: func() error { return errDisk }}
		}, errDisk},
		{"cancelled", func(cancel func()) io.ReadSeeker {
			return &failingBody{data: data, failAt: 12 << 20, onFail: func() error { cancel(); return context.Canceled }}
		}, context.Canceled},
		{"short body", func(func()) io.ReadSeeker {
			return bytes.NewReader(data[:12<<20]) // an io.ReaderAt
		}, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "failed/" + strings.ReplaceAll(tc.name, " ", "-")
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			err := s.Put(cctx, key, tc.body(cancel), int64(len(data)))
			if !errors.Is(err, tc.want) {
				t.Errorf("Put: %v, want %v", err, tc.want)
			}
			if storage.IsTransient(err) {
				t.Errorf("Put failing because of its body or context is marked transient: %v", err)
			}
			if _, err := s.Stat(ctx, key); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("Stat after the failed Put: %v, want ErrNotFound", err)
			}
			if n := pendingUploads(t, root, key); n != 0 {
				t.Errorf("%d multipart uploads left pending", n)
			}
		})
	}
	// A multipart upload that works, from a plain io.ReadSeeker.
	body := &failingBody{data: data, failAt: int64(len(data)) + 1}
	if err := s.Put(ctx, "ok", body, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if got, err := storage.ReadAll(ctx, s, "ok", 0, -1); err != nil || !bytes.Equal(got, data) {
		t.Errorf("multipart object read back: %d bytes, %v", len(got), err)
	}
}

func TestServerDown(t *testing.T) {
	srv := testservers.StartMinIO(t)
	bucket := srv.NewBucket(t)
	s := open(t, userConfig(srv, bucket))
	ctx := t.Context()
	put(t, s, "a", []byte("a"))
	srv.Stop()
	err := s.Put(ctx, "b", bytes.NewReader([]byte("b")), 1)
	if !storage.IsTransient(err) {
		t.Errorf("Put with the server down: %v, want a transient error", err)
	}
	if _, err := s.Stat(ctx, "a"); !storage.IsTransient(err) {
		t.Errorf("Stat with the server down: %v, want a transient error", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	put(t, s, "b", []byte("b"))
	if got := listAll(t, s, ""); len(got) != 2 {
		t.Errorf("after restart: %q, want [a b]", got)
	}
}

// fakeS3 answers HeadBucket with 200 and everything else with handler.
func fakeS3(t *testing.T, handler http.HandlerFunc) *Storage {
	t.Helper()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead && strings.Count(strings.Trim(r.URL.Path, "/"), "/") == 0 {
			return // HeadBucket
		}
		handler(w, r)
	}))
	t.Cleanup(ts.Close)
	return open(t, Config{AccessKey: "AKIDFAKE", SecretKey: "fake-secret-key-123", RegionEndpoint: ts.URL, Bucket: "bucket"})
}

func s3Error(w http.ResponseWriter, r *http.Request, status int, code string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		fmt.Fprintf(w, "<Error><Code>%s</Code><Message>m</Message></Error>", code)
	}
}

func TestErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		status    int
		code      string
		notFound  bool
		perm      bool
		transient bool
	}{
		{404, "NoSuchKey", true, false, false},
		{403, "AccessDenied", false, true, false},
		{403, "InvalidAccessKeyId", false, true, false},
		{403, "SignatureDoesNotMatch", false, true, false},
		{500, "InternalError", false, false, true},
		{503, "SlowDown", false, false, true},
		{503, "ServiceUnavailable", false, false, true},
		{429, "TooManyRequests", false, false, true},
		{400, "RequestTimeout", false, false, true},
		{400, "InvalidArgument", false, false, false},
		{400, "RequestTimeTooSkewed", false, false, false},
	} {
		t.Run(fmt.Sprintf("%d-%s", tc.status, tc.code), func(t *testing.T) {
			s := fakeS3(t, func(w http.ResponseWriter, r *http.Request) { s3Error(w, r, tc.status, tc.code) })
			ctx := t.Context()
			check := func(op string, err error) {
				t.Helper()
				if err == nil {
					t.Fatalf("%s: no error", op)
				}
				if errors.Is(err, storage.ErrNotFound) != tc.notFound || errors.Is(err, storage.ErrPermission) != tc.perm ||
					storage.IsTransient(err) != tc.transient {
					t.Errorf("%s: %v: notFound %t, permission %t, transient %t; want %t, %t, %t", op, err,
						errors.Is(err, storage.ErrNotFound), errors.Is(err, storage.ErrPermission), storage.IsTransient(err),
						tc.notFound, tc.perm, tc.transient)
				}
				for _, want := range []string{"s3: ", op, "some/key", "bucket bucket"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("%s: error %q does not name %q", op, err, want)
					}
				}
				if strings.Contains(err.Error(), "fake-secret-key-123") || strings.Contains(err.Error(), "AKIDFAKE") {
					t.Errorf("%s: error shows a credential: %v", op, err)
				}
			}
			_, err := s.Get(ctx, "some/key", 0, -1)
			check("get", err)
			if tc.status != 400 { // HEAD answers carry no body: a 400 has no code to go by
				_, err = s.Stat(ctx, "some/key")
				check("stat", err)
			}
			check("put", s.Put(ctx, "some/key", bytes.NewReader([]byte("x")), 1))
			if !tc.notFound {
				check("delete", s.Delete(ctx, "some/key"))
			}
		})
	}
}

// TestPutHeaders checks that storage class and server-side encryption go
// with both a single PutObject and a multipart upload (MinIO without a
// KMS refuses SSE, so a fake server looks at the requests).
func TestPutHeaders(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    func(*Config)
		header map[string]string
	}{
		{"sse-s3", func(c *Config) { c.Encrypt = true; c.StorageClass = "STANDARD_IA" }, map[string]string{
			"X-Amz-Server-Side-Encryption": "AES256", "X-Amz-Storage-Class": "STANDARD_IA",
		}},
		{"sse-kms", func(c *Config) { c.Encrypt = true; c.KeyID = "arn:aws:kms:k1" }, map[string]string{
			"X-Amz-Server-Side-Encryption": "aws:kms", "X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id": "arn:aws:kms:k1",
			"X-Amz-Storage-Class": "",
		}},
		{"plain", func(*Config) {}, map[string]string{"X-Amz-Server-Side-Encryption": "", "X-Amz-Storage-Class": ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var creates, parts atomic.Int64
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				q := r.URL.Query()
				check := func() {
					for k, v := range tc.header {
						if got := r.Header.Get(k); got != v {
							t.Errorf("%s %s: header %s = %q, want %q", r.Method, r.URL, k, got, v)
						}
					}
				}
				switch {
				case r.Method == http.MethodHead:
				case r.Method == http.MethodPost && q.Has("uploads"):
					creates.Add(1)
					check()
					fmt.Fprint(w, "<InitiateMultipartUploadResult><Bucket>bucket</Bucket><Key>k</Key><UploadId>u1</UploadId></InitiateMultipartUploadResult>")
				case r.Method == http.MethodPut && q.Has("partNumber"):
					parts.Add(1)
					w.Header().Set("ETag", `"e"`)
				case r.Method == http.MethodPost && q.Has("uploadId"):
					fmt.Fprint(w, `<CompleteMultipartUploadResult><Bucket>bucket</Bucket><Key>k</Key><ETag>"e"</ETag></CompleteMultipartUploadResult>`)
				case r.Method == http.MethodPut:
					check()
				default:
					t.Errorf("unexpected %s %s", r.Method, r.URL)
					w.WriteHeader(http.StatusNotImplemented)
				}
			}))
			defer ts.Close()
			cfg := Config{AccessKey: "a", SecretKey: "s", RegionEndpoint: ts.URL, Bucket: "bucket", ChunkSize: MinChunkSize}
			tc.cfg(&cfg)
			s := open(t, cfg)
			put(t, s, "small", []byte("x"))
			put(t, s, "large", make([]byte, 2*MinChunkSize+1))
			if creates.Load() != 1 || parts.Load() != 3 {
				t.Errorf("large object: %d multipart uploads of %d parts, want 1 of 3", creates.Load(), parts.Load())
			}
		})
	}
}

func TestRangeIgnoredByServer(t *testing.T) {
	const content = "0123456789"
	s := fakeS3(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(content)))
		io.WriteString(w, content) // 200 and the whole object, whatever the Range
	})
	ctx := t.Context()
	if _, err := s.Get(ctx, "k", 2, 3); err == nil || !strings.Contains(err.Error(), "Content-Range") {
		t.Errorf("Get(k, 2, 3) from a server that ignores Range: %v, want an error", err)
	}
	// From offset 0 the whole object is the right start: cut to length.
	if got, err := storage.ReadAll(ctx, s, "k", 0, 3); err != nil || string(got) != "012" {
		t.Errorf("Get(k, 0, 3) = %q, %v; want 012", got, err)
	}
}

func TestConfigValidate(t *testing.T) {
	yes, no := true, false
	good := Config{Bucket: "my-bucket", Region: "eu-west-1"}
	if err := good.Validate(); err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		param string // the error must name it
	}{
		{"no bucket", func(c *Config) { c.Bucket = "" }, "bucket"},
		{"bucket upper case", func(c *Config) { c.Bucket = "MyBucket" }, "bucket"},
		{"bucket too short", func(c *Config) { c.Bucket = "ab" }, "bucket"},
		{"bucket ip", func(c *Config) { c.Bucket = "192.168.1.1" }, "bucket"},
		{"bucket dots", func(c *Config) { c.Bucket = "a..b" }, "bucket"},
		{"bucket dash end", func(c *Config) { c.Bucket = "abc-" }, "bucket"},
		{"only accesskey", func(c *Config) { c.AccessKey = "AK" }, "secretkey"},
		{"only secretkey", func(c *Config) { c.SecretKey = "SK" }, "accesskey"},
		{"region", func(c *Config) { c.Region = "EU West" }, "region"},
		{"endpoint scheme", func(c *Config) { c.RegionEndpoint = "ftp://host" }, "regionendpoint"},
		{"endpoint userinfo", func(c *Config) { c.RegionEndpoint = "http://ak:sk@host" }, "regionendpoint"},
		{"endpoint query", func(c *Config) { c.RegionEndpoint = "http://host/?x=1" }, "regionendpoint"},
		{"endpoint vs secure", func(c *Config) { c.RegionEndpoint = "http://host"; c.Secure = &yes }, "regionendpoint"},
		{"keyid without encrypt", func(c *Config) { c.KeyID = "arn:aws:kms:k" }, "keyid"},
		{"v4auth false", func(c *Config) { c.V4Auth = &no }, "v4auth"},
		{"chunksize small", func(c *Config) { c.ChunkSize = 5<<20 - 1 }, "chunksize"},
		{"chunksize negative", func(c *Config) { c.ChunkSize = -1 }, "chunksize"},
		{"chunksize huge", func(c *Config) { c.ChunkSize = 6 << 30 }, "chunksize"},
		{"rootdirectory dotdot", func(c *Config) { c.RootDirectory = "a/../b" }, "rootdirectory"},
		{"rootdirectory empty part", func(c *Config) { c.RootDirectory = "a//b" }, "rootdirectory"},
		{"storageclass", func(c *Config) { c.StorageClass = "GLACIER" }, "storageclass"},
		{"storageclass case", func(c *Config) { c.StorageClass = "standard" }, "storageclass"},
		{"uploadconcurrency", func(c *Config) { c.UploadConcurrency = -1 }, "uploadconcurrency"},
	} {
		c := good
		tc.edit(&c)
		err := c.Validate()
		if err == nil {
			t.Errorf("%s: validated", tc.name)
			continue
		}
		if !strings.Contains(err.Error(), tc.param) {
			t.Errorf("%s: error %q does not name %s", tc.name, err, tc.param)
		}
	}
	if err := (Config{Bucket: "b" + strings.Repeat("x", 3), V4Auth: &no}).Validate(); !strings.Contains(err.Error(), "Signature Version 4") {
		t.Errorf("v4auth false: %v, want a message saying the SDK signs with V4 only", err)
	}
	for _, c := range []Config{
		{Bucket: "b.c-d", Encrypt: true, KeyID: "k", V4Auth: &yes, ChunkSize: MinChunkSize, StorageClass: "GLACIER_IR"},
		{Bucket: "bbb", RegionEndpoint: "127.0.0.1:9000", Secure: &no},
		{Bucket: "bbb", RegionEndpoint: "https://s3.example.com", Secure: &yes, RootDirectory: "/a/b/"},
		{Bucket: "bbb", AccessKey: "a", SecretKey: "s", ChunkSize: MaxChunkSize},
	} {
		if err := c.Validate(); err != nil {
			t.Errorf("Validate(%v): %v", c, err)
		}
	}
}

func TestConfigFromURL(t *testing.T) {
	no, yes := false, true
	for _, tc := range []struct {
		url  string
		want Config
	}{
		{"s3://bucket", Config{Bucket: "bucket"}},
		{"s3://bucket/", Config{Bucket: "bucket"}},
		{"s3://bucket/a/prefix/?region=eu-west-1&endpoint=http://127.0.0.1:9000",
			Config{Bucket: "bucket", RootDirectory: "a/prefix", Region: "eu-west-1", RegionEndpoint: "http://127.0.0.1:9000"}},
		{"s3://bucket/p?secure=false&endpoint=minio:9000&pathstyle=true&chunksize=8388608&storageclass=STANDARD_IA&encrypt=true&keyid=arn:aws:kms:eu:1:key/x",
			Config{Bucket: "bucket", RootDirectory: "p", Secure: &no, RegionEndpoint: "minio:9000", PathStyle: &yes,
				ChunkSize: 8 << 20, StorageClass: "STANDARD_IA", Encrypt: true, KeyID: "arn:aws:kms:eu:1:key/x"}},
	} {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ConfigFromURL(u)
		if err != nil {
			t.Errorf("ConfigFromURL(%s): %v", tc.url, err)
			continue
		}
		if got.String() != tc.want.String() {
			t.Errorf("ConfigFromURL(%s) = %v, want %v", tc.url, got, tc.want)
		}
	}
	for _, tc := range []struct{ url, want string }{
		{"s3://ak:sk@bucket/p", "credentials"},
		{"s3://bucket/p?secretkey=x", "credentials"},
		{"s3://bucket/p?accesskey=x", "credentials"},
		{"s3://bucket/p?token=x", "credentials"},
		{"s3://bucket/p?colour=red", `unknown query parameter "colour"`},
		{"s3://bucket/p?region=a&region=b", "region"},
		{"s3://bucket/p?secure=maybe", "secure"},
		{"s3://bucket/p?chunksize=16MiB", "chunksize"},
		{"s3://bucket/p?chunksize=1024", "chunksize"},
		{"s3://bucket/a/../b", "rootdirectory"},
		{"s3://Bucket/p", "bucket"},
		{"s3:///p", "s3://BUCKET/PREFIX"},
		{"s3://bucket:9000/p", "port"},
		{"s3://bucket/p#frag", "fragment"},
		{"gs://bucket/p", "scheme"},
	} {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ConfigFromURL(u)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ConfigFromURL(%s): %v, want an error about %s", tc.url, err, tc.want)
		}
		if err != nil && (strings.Contains(err.Error(), ":sk@") || strings.Contains(err.Error(), "=x")) {
			t.Errorf("ConfigFromURL(%s): error shows a secret: %v", tc.url, err)
		}
	}
	// How parameters combine is left to Validate, once the config file's
	// settings are in: the file may say encrypt: true.
	u, _ := url.Parse("s3://bucket/p?keyid=k&endpoint=http://host:9000")
	c, err := ConfigFromURL(u)
	if err != nil {
		t.Fatalf("ConfigFromURL(%s): %v", u, err)
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "keyid") {
		t.Errorf("Validate of keyid without encrypt: %v", err)
	}
	c.Encrypt = true
	if err := c.Validate(); err != nil {
		t.Errorf("Validate with encrypt added: %v", err)
	}
	c.Secure = &yes
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "secure") {
		t.Errorf("Validate of an http endpoint with secure: true: %v", err)
	}
}

func TestConfigRedacted(t *testing.T) {
	c := Config{Bucket: "bucket", AccessKey: "AKIAEXAMPLEKEY", SecretKey: "s3cr3t-value", RegionEndpoint: "http://u:pw@host:9000"}
	for _, s := range []string{c.String(), fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), fmt.Sprintf("%v", &c),
		fmt.Sprintf("%+v", c.Redacted())} {
		for _, secret := range []string{"AKIAEXAMPLEKEY", "s3cr3t-value", "pw@"} {
			if strings.Contains(s, secret) {
				t.Errorf("%q shows %q", s, secret)
			}
		}
		if !strings.Contains(s, "bucket") {
			t.Errorf("%q does not name the bucket", s)
		}
	}
	if c.AccessKey != "AKIAEXAMPLEKEY" {
		t.Error("Redacted changed the original")
	}
}

func put(t *testing.T, s storage.Storage, key string, data []byte) {
	t.Helper()
	if err := s.Put(t.Context(), key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put(%s): %v", key, err)
	}
}

func listAll(t *testing.T, s storage.Storage, prefix string) []string {
	t.Helper()
	var keys []string
	if err := s.List(t.Context(), prefix, func(oi storage.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	}); err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return keys
}

// TestPutIfAbsentMinIO checks, as the restricted user (s3:PutObject is
// all If-None-Match needs), that MinIO refuses a second create-only write
// and lets exactly one of racing writers win.
func TestPutIfAbsentMinIO(t *testing.T) {
	srv := testservers.MinIO(t)
	s := open(t, userConfig(srv, srv.NewBucket(t)))
	ctx := t.Context()
	if err := s.PutIfAbsent(ctx, "config", strings.NewReader("first"), 5); err != nil {
		t.Fatalf("PutIfAbsent on a free key: %v", err)
	}
	err := s.PutIfAbsent(ctx, "config", strings.NewReader("second!"), 7)
	if !errors.Is(err, storage.ErrExists) || storage.IsTransient(err) {
		t.Errorf("second PutIfAbsent: %v, want ErrExists", err)
	}
	if b, err := storage.ReadAll(ctx, s, "config", 0, -1); err != nil || string(b) != "first" {
		t.Errorf("config = %q, %v; want first", b, err)
	}
	const writers = 8
	errs := make(chan error, writers)
	start := make(chan struct{})
	for w := range writers {
		go func() {
			<-start
			body := strings.Repeat("w", w+1)
			errs <- s.PutIfAbsent(ctx, "race", strings.NewReader(body), int64(len(body)))
		}()
	}
	close(start)
	won := 0
	for range writers {
		switch err := <-errs; {
		case err == nil:
			won++
		case !errors.Is(err, storage.ErrExists):
			t.Errorf("racing PutIfAbsent: %v, want nil or ErrExists", err)
		}
	}
	if won != 1 {
		t.Errorf("%d of %d racing PutIfAbsent calls succeeded, want 1", won, writers)
	}
	// Larger than one request: refused, nothing stored.
	big := make([]byte, MinChunkSize+1)
	if err := s.PutIfAbsent(ctx, "big", bytes.NewReader(big), int64(len(big))); err == nil || errors.Is(err, storage.ErrExists) {
		t.Errorf("PutIfAbsent of chunksize+1 bytes: %v, want a refusal", err)
	}
	if _, err := s.Stat(ctx, "big"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat(big) after the refusal: %v, want ErrNotFound", err)
	}
}

func TestPutIfAbsentRequests(t *testing.T) {
	for _, tc := range []struct {
		status    int
		code      string
		exists    bool
		transient bool
	}{
		{412, "PreconditionFailed", true, false},
		{409, "ConditionalRequestConflict", false, true},
		{409, "OperationAborted", false, false},
		{503, "SlowDown", false, true},
		{403, "AccessDenied", false, false},
	} {
		t.Run(fmt.Sprintf("%d-%s", tc.status, tc.code), func(t *testing.T) {
			var ifNoneMatch atomic.Value
			s := fakeS3(t, func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				ifNoneMatch.Store(r.Header.Get("If-None-Match"))
				s3Error(w, r, tc.status, tc.code)
			})
			err := s.PutIfAbsent(t.Context(), "some/key", strings.NewReader("x"), 1)
			if got, _ := ifNoneMatch.Load().(string); got != "*" {
				t.Errorf("If-None-Match sent: %q, want *", got)
			}
			if err == nil || errors.Is(err, storage.ErrExists) != tc.exists || storage.IsTransient(err) != tc.transient {
				t.Errorf("PutIfAbsent answered %d %s: %v; want exists %t, transient %t", tc.status, tc.code, err, tc.exists, tc.transient)
			}
			if err != nil && (!strings.Contains(err.Error(), "put-if-absent some/key") || strings.Contains(err.Error(), "fake-secret-key-123")) {
				t.Errorf("error %q does not name the operation and key, or shows the secret", err)
			}
		})
	}
	// Too large: refused before any request.
	var requests atomic.Int64
	s := fakeS3(t, func(w http.ResponseWriter, r *http.Request) { requests.Add(1) })
	size := s.chunkSize + 1
	if err := s.PutIfAbsent(t.Context(), "k", bytes.NewReader(make([]byte, size)), size); err == nil || storage.IsTransient(err) {
		t.Errorf("PutIfAbsent of chunksize+1 bytes: %v, want a permanent refusal", err)
	}
	if requests.Load() != 0 {
		t.Errorf("%d requests sent for a refused PutIfAbsent", requests.Load())
	}
}

// startUpload starts a multipart upload of the S3 key k and uploads one
// part, as a Put killed midway leaves it, and returns its upload ID and
// when the service says it was initiated.
func startUpload(t *testing.T, s *Storage, k string) (string, time.Time) {
	t.Helper()
	ctx := t.Context()
	out, err := s.client.CreateMultipartUpload(ctx, &awss3.CreateMultipartUploadInput{Bucket: &s.bucket, Key: &k})
	if err != nil {
		t.Fatalf("CreateMultipartUpload(%s): %v", k, err)
	}
	part := bytes.Repeat([]byte("p"), 1<<20)
	if _, err := s.client.UploadPart(ctx, &awss3.UploadPartInput{
		Bucket: &s.bucket, Key: &k, UploadId: out.UploadId, PartNumber: aws.Int32(1),
		Body: bytes.NewReader(part), ContentLength: aws.Int64(int64(len(part))),
	}); err != nil {
		t.Fatalf("UploadPart(%s): %v", k, err)
	}
	for _, u := range listUploads(t, s) {
		if aws.ToString(u.UploadId) == *out.UploadId {
			return *out.UploadId, aws.ToTime(u.Initiated)
		}
	}
	t.Fatalf("upload %s of %s is not listed", *out.UploadId, k)
	return "", time.Time{}
}

// listUploads lists the incomplete multipart uploads of s's bucket.
func listUploads(t *testing.T, s *Storage) []types.MultipartUpload {
	t.Helper()
	out, err := s.client.ListMultipartUploads(t.Context(), &awss3.ListMultipartUploadsInput{Bucket: &s.bucket})
	if err != nil {
		t.Fatalf("ListMultipartUploads: %v", err)
	}
	return out.Uploads
}

// TestCleanUploads aborts, as the restricted user, dead multipart uploads
// under its root directory and prefix, older than the cutoff, and nothing
// else.
func TestCleanUploads(t *testing.T) {
	srv := testservers.MinIO(t)
	bucket := srv.NewBucket(t)
	cfg := userConfig(srv, bucket)
	cfg.RootDirectory = "owner1"
	s := open(t, cfg)
	cfg.RootDirectory = "owner10"
	neighbour := open(t, cfg)
	ctx := t.Context()
	put(t, s, "data/ab/obj", []byte("complete"))

	dead, _ := startUpload(t, s, "owner1/data/ab/dead")
	otherDir, _ := startUpload(t, s, "owner1/index/dead")
	neighbours, _ := startUpload(t, s, "owner10/data/ab/dead")
	// One that starts later than the others, by the service's clock: the
	// cutoff. (Two uploads begun within a millisecond show the same time.)
	var live string
	var cutoff time.Time
	for {
		_, last := startUpload(t, s, "owner1/data/ab/dead-too")
		live, cutoff = startUpload(t, s, "owner1/data/ab/live")
		if cutoff.After(last) {
			break
		}
		for _, u := range listUploads(t, s) {
			if k := aws.ToString(u.Key); k == "owner1/data/ab/live" {
				if err := s.abort(ctx, k, aws.ToString(u.UploadId)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	pending := func() map[string]bool {
		m := map[string]bool{}
		for _, u := range listUploads(t, s) {
			m[aws.ToString(u.UploadId)] = true
		}
		return m
	}

	n, err := s.CleanUploads(ctx, "data/", cutoff)
	if err != nil || n < 2 {
		t.Fatalf("CleanUploads(data/) = %d, %v; want at least 2 (dead, dead-too), no error", n, err)
	}
	got := pending()
	if got[dead] || !got[live] || !got[otherDir] || !got[neighbours] {
		t.Errorf("after CleanUploads(data/): dead %t, live %t, index/dead %t, neighbour's %t pending; want false, true, true, true",
			got[dead], got[live], got[otherDir], got[neighbours])
	}
	for _, u := range listUploads(t, s) {
		if aws.ToString(u.Key) == "owner1/data/ab/dead-too" {
			t.Errorf("an upload initiated before the cutoff is still pending")
		}
	}
	// However eager: never what is outside the root directory.
	if n, err := s.CleanUploads(ctx, "", time.Now().Add(time.Hour)); err != nil || n != 2 {
		t.Errorf("CleanUploads(\"\") = %d, %v; want 2 (index/dead, live)", n, err)
	}
	if got := pending(); len(got) != 1 || !got[neighbours] {
		t.Errorf("pending after cleaning owner1: %v; want only the neighbour's %s", got, neighbours)
	}
	if n, err := neighbour.CleanUploads(ctx, "", time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Errorf("neighbour's CleanUploads = %d, %v; want 1", n, err)
	}
	if n, err := s.CleanUploads(ctx, "", time.Now().Add(time.Hour)); err != nil || n != 0 {
		t.Errorf("CleanUploads with nothing left = %d, %v; want 0", n, err)
	}
	if b, err := storage.ReadAll(ctx, s, "data/ab/obj", 0, -1); err != nil || string(b) != "complete" {
		t.Errorf("data/ab/obj = %q, %v", b, err)
	}
}

// TestCleanUploadsPages checks paging through a listing of uploads (MinIO
// returns its bucket-wide listing in one page) and that the prefix goes
// to a service that lists by prefix.
func TestCleanUploadsPages(t *testing.T) {
	old := time.Now().Add(-48 * time.Hour).UTC().Format(time.RFC3339)
	recent := time.Now().UTC().Format(time.RFC3339)
	var aborted []string
	var prefixes []string
	s := fakeS3(t, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		switch {
		case r.Method == http.MethodGet && q.Has("uploads"):
			prefixes = append(prefixes, q.Get("prefix"))
			if q.Get("key-marker") == "" {
				fmt.Fprintf(w, `<ListMultipartUploadsResult><IsTruncated>true</IsTruncated><NextKeyMarker>root/a/2</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>
<Upload><Key>root/a/1</Key><UploadId>u1</UploadId><Initiated>%s</Initiated></Upload>
<Upload><Key>root/a/2</Key><UploadId>u2</UploadId><Initiated>%s</Initiated></Upload></ListMultipartUploadsResult>`, old, recent)
				return
			}
			if q.Get("key-marker") != "root/a/2" || q.Get("upload-id-marker") != "u2" {
				t.Errorf("second page asked with markers %q %q", q.Get("key-marker"), q.Get("upload-id-marker"))
			}
			fmt.Fprintf(w, `<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>
<Upload><Key>root/a/3</Key><UploadId>u3</UploadId><Initiated>%s</Initiated></Upload>
<Upload><Key>root/b/4</Key><UploadId>u4</UploadId><Initiated>%s</Initiated></Upload>
<Upload><Key>other/a/5</Key><UploadId>u5</UploadId><Initiated>%s</Initiated></Upload></ListMultipartUploadsResult>`, old, old, old)
		case r.Method == http.MethodDelete && q.Has("uploadId"):
			aborted = append(aborted, q.Get("uploadId"))
			w.WriteHeader(http.StatusNoContent)
		default:
			t.Errorf("unexpected %s %s", r.Method, r.URL)
			w.WriteHeader(http.StatusNotImplemented)
		}
	})
	s.root = "root/"
	n, err := s.CleanUploads(t.Context(), "a/", time.Now().Add(-time.Hour))
	if err != nil || n != 2 || strings.Join(aborted, " ") != "u1 u3" {
		t.Errorf("CleanUploads(a/) = %d, %v, aborted %q; want 2, nil, [u1 u3]", n, err, aborted)
	}
	if strings.Join(prefixes, ",") != "," {
		t.Errorf("prefixes asked of a custom endpoint: %q, want none (MinIO lists by prefix one object only)", prefixes)
	}
	prefixes, aborted = nil, nil
	s.listUploadsByPrefix = true // as against AWS
	if n, err := s.CleanUploads(t.Context(), "a/", time.Now().Add(-time.Hour)); err != nil || n != 2 {
		t.Errorf("CleanUploads(a/) by prefix = %d, %v", n, err)
	}
	if strings.Join(prefixes, ",") != "root/a/,root/a/" {
		t.Errorf("prefixes asked of AWS: %q, want root/a/ for both pages", prefixes)
	}
}

// TestCleanUploadsLeavesYoungUploads: going by age alone, CleanUploads
// never aborts an upload younger than storage.UploadGrace, even asked to
// clean everything begun before now (it may be another node's, running).
func TestCleanUploadsLeavesYoungUploads(t *testing.T) {
	srv := testservers.MinIO(t)
	cfg := userConfig(srv, srv.NewBucket(t))
	s := open(t, cfg)
	s.uploadGrace = storage.UploadGrace
	id, _ := startUpload(t, s, "data/ab/running")
	if n, err := s.CleanUploads(t.Context(), "", time.Now().Add(time.Hour)); err != nil || n != 0 {
		t.Fatalf("CleanUploads = %d, %v; want 0, nil", n, err)
	}
	found := false
	for _, u := range listUploads(t, s) {
		found = found || aws.ToString(u.UploadId) == id
	}
	if !found {
		t.Fatal("a running upload seconds old was aborted")
	}
}

func TestPutIfMatchRequests(t *testing.T) {
	for _, tc := range []struct {
		status              int
		code                string
		mismatch, notFound  bool
		transient, noAccess bool
	}{
		{412, "PreconditionFailed", true, false, false, false},
		{404, "NoSuchKey", true, true, false, false},
		{409, "ConditionalRequestConflict", false, false, true, false},
		{503, "SlowDown", false, false, true, false},
		{403, "AccessDenied", false, false, false, true},
	} {
		t.Run(fmt.Sprintf("%d-%s", tc.status, tc.code), func(t *testing.T) {
			var ifMatch atomic.Value
			s := fakeS3(t, func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				ifMatch.Store(r.Header.Get("If-Match"))
				s3Error(w, r, tc.status, tc.code)
			})
			_, err := s.PutIfMatch(t.Context(), "some/key", strings.NewReader("x"), 1, "0123abcd-2")
			if got, _ := ifMatch.Load().(string); got != `"0123abcd-2"` {
				t.Errorf("If-Match sent: %q, want the version quoted", got)
			}
			if err == nil || errors.Is(err, storage.ErrVersionMismatch) != tc.mismatch || errors.Is(err, storage.ErrNotFound) != tc.notFound ||
				storage.IsTransient(err) != tc.transient || errors.Is(err, storage.ErrPermission) != tc.noAccess {
				t.Errorf("PutIfMatch answered %d %s: %v; want mismatch %t, not found %t, transient %t, permission %t",
					tc.status, tc.code, err, tc.mismatch, tc.notFound, tc.transient, tc.noAccess)
			}
			if err != nil && (!strings.Contains(err.Error(), "put-if-match some/key") || strings.Contains(err.Error(), "fake-secret-key-123")) {
				t.Errorf("error %q does not name the operation and key, or shows the secret", err)
			}
		})
	}
	// Success: the new version is the reply's ETag, unquoted.
	s := fakeS3(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("ETag", `"fedcba98"`)
	})
	if v, err := s.PutIfMatch(t.Context(), "k", strings.NewReader("x"), 1, "0123abcd"); err != nil || v != "fedcba98" {
		t.Errorf("PutIfMatch = %q, %v; want fedcba98", v, err)
	}
	// Too large, or a version no ETag can be (one that would match any
	// object among them): refused before any request.
	var requests atomic.Int64
	s = fakeS3(t, func(w http.ResponseWriter, r *http.Request) { requests.Add(1) })
	size := s.chunkSize + 1
	if _, err := s.PutIfMatch(t.Context(), "k", bytes.NewReader(make([]byte, size)), size, "0123abcd"); err == nil ||
		storage.IsTransient(err) || errors.Is(err, storage.ErrVersionMismatch) {
		t.Errorf("PutIfMatch of chunksize+1 bytes: %v, want a permanent refusal", err)
	}
	for _, v := range []string{"", "*", `"0123abcd"`, "a b", "a\\b"} {
		if _, err := s.PutIfMatch(t.Context(), "k", strings.NewReader("x"), 1, v); !errors.Is(err, storage.ErrVersionMismatch) {
			t.Errorf("PutIfMatch with version %q: %v, want ErrVersionMismatch", v, err)
		}
	}
	if requests.Load() != 0 {
		t.Errorf("%d requests sent for refused PutIfMatch calls", requests.Load())
	}
}

// TestNoDeleteIfMatchOnMinIO records why the storage has no
// DeleteIfMatch: MinIO takes DeleteObject with If-Match, but ignores the
// condition, and deletes an object whose ETag is not the one given. (Should
// this test start failing, MinIO has learnt conditional deletes.)
func TestNoDeleteIfMatchOnMinIO(t *testing.T) {
	srv := testservers.MinIO(t)
	bucket := srv.NewBucket(t)
	s := open(t, rootConfig(srv, bucket))
	ctx := t.Context()
	put(t, s, "k", []byte("one"))
	stale, err := s.Stat(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, "k", []byte("two"))
	k := "k"
	_, err = s.client.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: &bucket, Key: &k, IfMatch: aws.String(`"` + stale.Version + `"`)})
	if err != nil {
		t.Fatalf("DeleteObject with a stale If-Match: %v", err)
	}
	if _, err := s.Stat(ctx, "k"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("after DeleteObject with a stale If-Match: %v; MinIO used to delete the object anyway", err)
	}
}
