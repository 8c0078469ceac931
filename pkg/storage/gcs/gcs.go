// Package gcs is a storage.Storage in a Google Cloud Storage bucket, through
// cloud.google.com/go/storage (JSON API for metadata and uploads, XML API
// for reads, as the client library does). The object of key K is named
// PREFIX/K in the bucket.
//
// Put first reads the body once to compute its CRC32C, then uploads it with
// that checksum declared, so that the service refuses (and does not store)
// an upload whose bytes differ from the body's. An object of at most
// Config.ChunkSize bytes goes up in one streaming request; a larger one in
// a resumable upload of ChunkSize chunks, finalized only by its last chunk.
// A failed or cancelled Put aborts its request, so no object appears.
//
// PutIfAbsent is Put with the precondition ifGenerationMatch=0
// (gs.Conditions{DoesNotExist: true}): the service stores the object only
// if the name has no live generation, and answers 412 otherwise, which is
// storage.ErrExists. It holds for a resumable upload too (the condition
// is checked when the upload is finalized), so its size is not limited.
//
// An object's Version is its generation, in decimal: the service gives
// every write a new one (also of identical bytes) and never reuses it for
// the name. Stat, List and the reader of GetWithInfo report it.
// PutIfMatch is Put with the precondition ifGenerationMatch=N
// (gs.Conditions{GenerationMatch: N}); a 412 is storage.ErrVersionMismatch
// (and storage.ErrNotFound if the object is then found missing:
// fake-gcs-server answers 412 either way). Like PutIfAbsent it holds for
// resumable uploads, so its size is not limited. It needs what a Put that
// replaces an object needs (storage.objects.create and .delete), and
// storage.objects.get to tell a missing object. There is no
// DeleteIfMatch: fake-gcs-server, the emulator tests run against, ignores
// ifGenerationMatch on delete, and MinIO If-Match on DeleteObject.
//
// CleanUploads removes nothing and returns 0: an interrupted upload leaves
// only a resumable upload session, which is not an object, cannot be
// listed, and expires by itself after a week; Put writes no temporary
// objects (no compose), so a dead writer leaves nothing else.
//
// The client library's own retries are switched off, including the
// per-chunk retries of resumable uploads: every call is attempted once and
// transient failures are marked with storage.Transient, so that
// pkg/storage/retry is the one retry policy.
//
// Credentials: Config.CredentialsFile (a service-account key) if set,
// otherwise application default credentials. No credentials are sent to an
// http:// Config.Endpoint, nor to the emulator that the environment
// variable STORAGE_EMULATOR_HOST names (the client library honours it when
// Config.Endpoint is empty).
package gcs

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	gs "cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/internal/errkind"
)

const (
	// pieceSize is how much Put copies between two checks of its context.
	pieceSize = 1 << 20
	// copyBufferSize is the buffer Put copies the body through.
	copyBufferSize = 256 << 10
	// contentType is the type of every object Put stores.
	contentType = "application/octet-stream"
	// listPageSize is how many objects List asks for per page.
	listPageSize = 1000
)

// castagnoli is the CRC32C table.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Storage is a storage.Storage in a Google Cloud Storage bucket. It is safe
// for concurrent use.
type Storage struct {
	client    *gs.Client
	bucket    *gs.BucketHandle
	name      string // the bucket's name
	prefix    string // "" or "a/b/"
	chunkSize int
}

var _ storage.Storage = (*Storage)(nil)

// New opens the bucket cfg names, under cfg's prefix. It checks that the
// bucket exists (listing at most one object of the prefix, which needs
// only storage.objects.list). It never creates a bucket unless
// cfg.CreateBucket is set; then a missing bucket is created in
// cfg.Project, with uniform bucket-level access and public access
// prevention enforced.
func New(ctx context.Context, cfg Config) (*Storage, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("gcs: open bucket %s: %w", cfg.Bucket, err)
	}
	opts, err := clientOptions(cfg)
	if err != nil {
		return nil, fmt.Errorf("gcs: open bucket %s: %w", cfg.Bucket, err)
	}
	// The client keeps what it is given at creation (token sources), which
	// must outlive a cancellable ctx.
	client, err := gs.NewClient(context.WithoutCancel(ctx), opts...)
	if err != nil {
		if strings.Contains(err.Error(), "could not find default credentials") {
			err = errNoCredentials
		}
		return nil, fmt.Errorf("gcs: open bucket %s: %w", cfg.Bucket, err)
	}
	// One retry policy, pkg/storage/retry: every call is attempted once.
	// RetryNever would not do, as it leaves the per-chunk retries of
	// resumable uploads on; a policy that always asks and an error
	// function that always says no switches those off too.
	client.SetRetry(gs.WithPolicy(gs.RetryAlways), gs.WithErrorFunc(func(error) bool { return false }))
	s := &Storage{
		client:    client,
		bucket:    client.Bucket(cfg.Bucket),
		name:      cfg.Bucket,
		prefix:    cfg.normalPrefix(),
		chunkSize: cfg.chunkSize(),
	}
	if err := s.open(ctx, cfg); err != nil {
		_ = client.Close() // the open error says more
		if errors.Is(err, errNoBucket) {
			return nil, errkind.Errorf([]error{storage.ErrNoBucket, storage.ErrNotFound},
				"gcs: bucket %s does not exist: create it, or set createbucket: true in the gcs section for the first backup to create it", cfg.Bucket)
		}
		return nil, fmt.Errorf("gcs: open bucket %s: %w", cfg.Bucket, err)
	}
	return s, nil
}

// clientOptions returns the client options for cfg: endpoint and
// credentials.
func clientOptions(cfg Config) ([]option.ClientOption, error) {
	opts := []option.ClientOption{
		option.WithUserAgent("backupd"),
		gs.WithDisabledClientMetrics(),
	}
	noAuth := os.Getenv("STORAGE_EMULATOR_HOST") != "" // the client then adds WithoutAuthentication
	if cfg.Endpoint != "" {
		u, err := endpointURL(cfg.Endpoint)
		if err != nil {
			return nil, fmt.Errorf("endpoint: %w", err)
		}
		opts = append(opts, option.WithEndpoint(u.String()))
		if u.Scheme == "http" {
			noAuth = true
			opts = append(opts, option.WithoutAuthentication())
		}
	}
	switch {
	case noAuth:
	case cfg.CredentialsFile != "":
		if err := checkCredentialsFile("credentialsfile", cfg.CredentialsFile, true); err != nil {
			return nil, err
		}
		opts = append(opts, option.WithAuthCredentialsFile(option.ServiceAccount, cfg.CredentialsFile))
	case os.Getenv("GOOGLE_APPLICATION_CREDENTIALS") != "":
		if err := checkCredentialsFile("$GOOGLE_APPLICATION_CREDENTIALS", os.Getenv("GOOGLE_APPLICATION_CREDENTIALS"), false); err != nil {
			return nil, err
		}
	}
	return opts, nil
}

// open checks that the bucket exists, creating it if cfg says so.
func (s *Storage) open(ctx context.Context, cfg Config) error {
	if cfg.CreateBucket {
		_, err := s.bucket.Attrs(ctx)
		if errors.Is(err, gs.ErrBucketNotExist) {
			err = s.createBucket(ctx, cfg)
		}
		if err != nil {
			return mapErr(ctx, err)
		}
	}
	it := s.bucket.Objects(ctx, &gs.Query{Prefix: s.prefix})
	it.PageInfo().MaxSize = 1
	_, err := it.Next()
	switch {
	case err == nil, errors.Is(err, iterator.Done):
		return nil
	case errors.Is(err, gs.ErrBucketNotExist):
		return errNoBucket
	}
	return mapErr(ctx, err)
}

// errNoBucket is open's error for a missing bucket.
var errNoBucket = errors.New("bucket does not exist")

// createBucket creates the bucket, private. A bucket that another process
// created meanwhile is fine.
func (s *Storage) createBucket(ctx context.Context, cfg Config) error {
	attrs := &gs.BucketAttrs{
		Location:                 cfg.Location,
		UniformBucketLevelAccess: gs.UniformBucketLevelAccess{Enabled: true},
		PublicAccessPrevention:   gs.PublicAccessPreventionEnforced,
	}
	err := s.bucket.Create(ctx, cfg.Project, attrs)
	var gerr *googleapi.Error
	if errors.As(err, &gerr) && gerr.Code == http.StatusConflict {
		// Someone created it first: ours if we can see it, else taken
		// by someone else (the names are global).
		if _, aerr := s.bucket.Attrs(ctx); aerr == nil {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	return nil
}

// Bucket returns the name of the bucket.
func (s *Storage) Bucket() string { return s.name }

// Prefix returns the prefix of the objects' names: "" or ending in '/'.
func (s *Storage) Prefix() string { return s.prefix }

// objectName returns the name of the object that holds key, or an error
// wrapping storage.ErrInvalidKey.
func (s *Storage) objectName(key string) (string, error) {
	if err := storage.ValidateKey(key); err != nil {
		return "", err
	}
	name := s.prefix + key
	switch {
	case !utf8.ValidString(key):
		return "", fmt.Errorf("%w: %q: not valid UTF-8", storage.ErrInvalidKey, key)
	case len(name) > maxNameLength:
		return "", fmt.Errorf("%w: %q: longer than %d bytes with the prefix", storage.ErrInvalidKey, key, maxNameLength)
	case strings.HasPrefix(name, ".well-known/acme-challenge/"):
		return "", fmt.Errorf("%w: %q: name reserved by Google Cloud Storage", storage.ErrInvalidKey, key)
	}
	return name, nil
}

// Put stores size bytes read from body under key. It reads the body twice:
// once for its CRC32C, then to upload it with that checksum, which the
// service verifies before it commits the object.
func (s *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	name, err := s.objectName(key)
	if err != nil {
		return fmt.Errorf("gcs: put: %w", err)
	}
	if size < 0 {
		return fmt.Errorf("gcs: put %s: negative size %d", key, size)
	}
	if _, err := s.put(ctx, name, body, size, nil); err != nil {
		return fmt.Errorf("gcs: put %s: %w", key, mapErr(ctx, err))
	}
	return nil
}

// PutIfAbsent stores size bytes read from body under key if no object is
// there, as Put does but with the precondition that the name has no live
// generation (ifGenerationMatch=0). An object at key is
// storage.ErrExists.
func (s *Storage) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	name, err := s.objectName(key)
	if err != nil {
		return fmt.Errorf("gcs: put-if-absent: %w", err)
	}
	if size < 0 {
		return fmt.Errorf("gcs: put-if-absent %s: negative size %d", key, size)
	}
	_, err = s.put(ctx, name, body, size, &gs.Conditions{DoesNotExist: true})
	if failedPrecondition(ctx, err) {
		return fmt.Errorf("gcs: put-if-absent %s: %w: %w", key, storage.ErrExists, err)
	}
	if err != nil {
		return fmt.Errorf("gcs: put-if-absent %s: %w", key, mapErr(ctx, err))
	}
	return nil
}

// PutIfMatch stores size bytes read from body under key if the object has
// Version version (its generation), as Put does but with the precondition
// ifGenerationMatch, and returns the new generation.
func (s *Storage) PutIfMatch(ctx context.Context, key string, body io.ReadSeeker, size int64, version string) (string, error) {
	name, err := s.objectName(key)
	if err != nil {
		return "", fmt.Errorf("gcs: put-if-match: %w", err)
	}
	if size < 0 {
		return "", fmt.Errorf("gcs: put-if-match %s: negative size %d", key, size)
	}
	// Generation 0 would mean "no condition" to the client library.
	gen, perr := strconv.ParseInt(version, 10, 64)
	if perr != nil || gen <= 0 {
		return "", fmt.Errorf("gcs: put-if-match %s: %w: %q is no generation", key, storage.ErrVersionMismatch, version)
	}
	attrs, err := s.put(ctx, name, body, size, &gs.Conditions{GenerationMatch: gen})
	if failedPrecondition(ctx, err) {
		err = fmt.Errorf("%w: %w", storage.ErrVersionMismatch, err)
		// The service does not say whether the object is missing.
		if _, serr := s.bucket.Object(name).Attrs(ctx); errors.Is(serr, gs.ErrObjectNotExist) {
			err = fmt.Errorf("%w: %w", err, storage.ErrNotFound)
		}
		return "", fmt.Errorf("gcs: put-if-match %s: %w", key, err)
	}
	if err != nil {
		return "", fmt.Errorf("gcs: put-if-match %s: %w", key, mapErr(ctx, err))
	}
	return strconv.FormatInt(attrs.Generation, 10), nil
}

// failedPrecondition reports whether err is the service's 412 to a write
// under a precondition (and ctx is not done).
func failedPrecondition(ctx context.Context, err error) bool {
	var gerr *googleapi.Error
	return err != nil && ctx.Err() == nil && errors.As(err, &gerr) && gerr.Code == http.StatusPreconditionFailed
}

// put uploads the object, under the preconditions cond if not nil, and
// returns its attributes. Its errors are the client library's, unmapped.
func (s *Storage) put(ctx context.Context, name string, body io.ReadSeeker, size int64, cond *gs.Conditions) (*gs.ObjectAttrs, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	buf := make([]byte, min(copyBufferSize, max(size, 1)))
	h := crc32.New(castagnoli)
	if err := copyBody(ctx, h, body, size, buf); err != nil {
		return nil, err
	}
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("rewind body: %w", err)
	}

	// Cancelling wctx aborts the upload: its request never completes, so
	// the service stores nothing.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	obj := s.bucket.Object(name)
	if cond != nil {
		obj = obj.If(*cond)
	}
	w := obj.NewWriter(wctx)
	w.ContentType = contentType
	w.CRC32C = h.Sum32()
	w.SendCRC32C = true
	w.DisableAutoChecksum = true // we send our own
	if size > int64(s.chunkSize) {
		w.ChunkSize = s.chunkSize
	} else {
		// One request, streamed without a buffer (a non-zero ChunkSize
		// would allocate a buffer of that size even for a tiny object).
		w.ChunkSize = 0
	}
	if err := copyBody(ctx, w, body, size, buf); err != nil {
		cancel()
		werr := w.Close() // waits for the upload to end
		// A failed upload fails Write, and Close may have its cause. But
		// the cancel above races the client's own record of that cause:
		// its watcher of wctx may overwrite it with context.Canceled
		// (TestPutChunkFails, once in 60 runs), which ctx being live says
		// is only that cancel, and must not hide a 503 from the retries.
		var bodyErr bodyError
		if !errors.As(err, &bodyErr) && ctx.Err() == nil && werr != nil && !errors.Is(werr, context.Canceled) {
			err = werr
		}
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	// The declared checksum makes the service refuse other bytes; should
	// one not check it (an emulator), never report success, and let a
	// retry put the object again.
	attrs := w.Attrs()
	if attrs.Size != size || attrs.CRC32C != w.CRC32C {
		return nil, storage.Transient(fmt.Errorf("service stored %d bytes with CRC32C %08x, not the %d bytes with CRC32C %08x read",
			attrs.Size, attrs.CRC32C, size, w.CRC32C))
	}
	return attrs, nil
}

// CleanUploads removes nothing: what an interrupted upload leaves (a
// resumable upload session) cannot be listed and expires by itself after
// a week. It returns 0.
func (s *Storage) CleanUploads(ctx context.Context, prefix string, before time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("gcs: clean uploads %s: %w", prefix, err)
	}
	return 0, nil
}

// bodyError is an error from reading Put's body.
type bodyError struct{ err error }

func (e bodyError) Error() string { return "read body: " + e.err.Error() }
func (e bodyError) Unwrap() error { return e.err }

// copyBody copies exactly size bytes from body to w through buf, checking
// ctx between pieces. An error reading the body is a bodyError; a body that
// ends early is one wrapping io.ErrUnexpectedEOF.
func copyBody(ctx context.Context, w io.Writer, body io.Reader, size int64, buf []byte) error {
	for written := int64(0); written < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		want := min(size-written, pieceSize)
		// Neither side shows io.CopyBuffer more than Read and Write, so it
		// copies through buf, and write errors come back marked.
		n, err := io.CopyBuffer(markedWriter{w}, onlyReader{io.LimitReader(body, want)}, buf)
		written += n
		var werr writeError
		switch {
		case errors.As(err, &werr):
			return werr.err
		case err != nil:
			return bodyError{err}
		case n < want:
			return bodyError{fmt.Errorf("body ended after %d of %d bytes: %w", written, size, io.ErrUnexpectedEOF)}
		}
	}
	return ctx.Err()
}

// onlyReader hides every method of a reader but Read.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// markedWriter hides every method of a writer but Write, and marks its
// errors as writeError.
type markedWriter struct{ w io.Writer }

func (m markedWriter) Write(p []byte) (int, error) {
	n, err := m.w.Write(p)
	if err != nil {
		err = writeError{err}
	}
	return n, err
}

// writeError marks an error from the writer in copyBody.
type writeError struct{ err error }

func (e writeError) Error() string { return e.err.Error() }
func (e writeError) Unwrap() error { return e.err }

// Get opens the byte range [offset, offset+length) of the object at key;
// length < 0 reads to the end.
func (s *Storage) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	name, err := s.objectName(key)
	if err != nil {
		return nil, fmt.Errorf("gcs: get: %w", err)
	}
	if offset < 0 {
		return nil, fmt.Errorf("gcs: get %s: %w: offset %d", key, storage.ErrInvalidRange, offset)
	}
	rc, err := s.get(ctx, name, offset, length)
	if err != nil {
		return nil, fmt.Errorf("gcs: get %s: %w", key, err)
	}
	return rc, nil
}

func (s *Storage) get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	obj := s.bucket.Object(name)
	if length == 0 {
		attrs, err := obj.Attrs(ctx)
		if err != nil {
			return nil, mapErr(ctx, err)
		}
		if offset > attrs.Size {
			return nil, fmt.Errorf("%w: offset %d is past the end (%d bytes)", storage.ErrInvalidRange, offset, attrs.Size)
		}
		return io.NopCloser(strings.NewReader("")), nil
	}
	if length < 0 || length > math.MaxInt64-offset {
		length = -1 // to the end
	}
	r, err := obj.NewRangeReader(ctx, offset, length)
	var gerr *googleapi.Error
	if errors.As(err, &gerr) && gerr.Code == http.StatusRequestedRangeNotSatisfiable {
		// offset is at or past the end: find the size, from the
		// response ("bytes */SIZE") or else the object's attributes.
		size, ok := unsatisfiedSize(gerr.Header.Get("Content-Range"))
		if !ok {
			attrs, err := obj.Attrs(ctx)
			if err != nil {
				return nil, mapErr(ctx, err)
			}
			size = attrs.Size
		}
		return rangeAtEnd(offset, size)
	}
	if err != nil {
		return nil, mapErr(ctx, err)
	}
	if r.Attrs.Size >= 0 && offset > r.Attrs.Size {
		r.Close()
		return nil, fmt.Errorf("%w: offset %d is past the end (%d bytes)", storage.ErrInvalidRange, offset, r.Attrs.Size)
	}
	return &reader{r: r, ctx: ctx, name: name}, nil
}

// rangeAtEnd handles an unsatisfiable range of an object of size bytes:
// an empty reader if offset is the end of the object, ErrInvalidRange if it
// is past it.
func rangeAtEnd(offset, size int64) (io.ReadCloser, error) {
	if offset > size {
		return nil, fmt.Errorf("%w: offset %d is past the end (%d bytes)", storage.ErrInvalidRange, offset, size)
	}
	if offset < size {
		// Only a range at or past the end is unsatisfiable: the object
		// changed between two requests.
		return nil, storage.Transient(fmt.Errorf("object changed while reading (%d bytes, offset %d)", size, offset))
	}
	return io.NopCloser(strings.NewReader("")), nil
}

// unsatisfiedSize parses the Content-Range of a 416 response, "bytes */SIZE".
func unsatisfiedSize(contentRange string) (int64, bool) {
	v, ok := strings.CutPrefix(contentRange, "bytes */")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil && n >= 0
}

// reader maps the errors of a gs.Reader.
type reader struct {
	r    *gs.Reader
	ctx  context.Context
	name string
}

func (r *reader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("gcs: read %s: %w", r.name, mapErr(r.ctx, err))
	}
	return n, err
}

func (r *reader) Close() error { return r.r.Close() }

// GetWithInfo opens the whole object at key; the reply that carries the
// bytes gives their generation.
func (s *Storage) GetWithInfo(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	name, err := s.objectName(key)
	if err != nil {
		return nil, storage.ObjectInfo{}, fmt.Errorf("gcs: get: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, storage.ObjectInfo{}, fmt.Errorf("gcs: get %s: %w", key, err)
	}
	r, err := s.bucket.Object(name).NewReader(ctx)
	if err != nil {
		return nil, storage.ObjectInfo{}, fmt.Errorf("gcs: get %s: %w", key, mapErr(ctx, err))
	}
	if r.Attrs.Generation <= 0 || r.Attrs.Size < 0 {
		r.Close()
		return nil, storage.ObjectInfo{}, fmt.Errorf("gcs: get %s: the reply gives no generation or size", key)
	}
	oi := storage.ObjectInfo{Key: key, Size: r.Attrs.Size, ModTime: r.Attrs.LastModified, Version: strconv.FormatInt(r.Attrs.Generation, 10)}
	return &reader{r: r, ctx: ctx, name: name}, oi, nil
}

// Stat describes the object at key.
func (s *Storage) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	name, err := s.objectName(key)
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("gcs: stat: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("gcs: stat %s: %w", key, err)
	}
	attrs, err := s.bucket.Object(name).Attrs(ctx)
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("gcs: stat %s: %w", key, mapErr(ctx, err))
	}
	return objectInfo(key, attrs), nil
}

// List calls fn for every object whose key starts with prefix, listing the
// bucket by name prefix, page by page. Objects whose names are not valid
// keys (such as the "folder/" placeholders of the Cloud Console) are
// skipped.
func (s *Storage) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("gcs: list %s: %w", prefix, err)
	}
	if strings.ContainsFunc(prefix, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\\' }) ||
		len(s.prefix)+len(prefix) > maxNameLength {
		return nil // no valid key starts with prefix
	}
	q := &gs.Query{Prefix: s.prefix + prefix}
	if err := q.SetAttrSelection([]string{"Name", "Size", "Updated", "Generation"}); err != nil {
		return fmt.Errorf("gcs: list %s: %w", prefix, err)
	}
	it := s.bucket.Objects(ctx, q)
	// The service's default and maximum; explicit, so that an emulator
	// that returns everything at once by default pages too.
	it.PageInfo().MaxSize = listPageSize
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("gcs: list %s: %w", prefix, err)
		}
		attrs, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("gcs: list %s: %w", prefix, mapErr(ctx, err))
		}
		key, ok := strings.CutPrefix(attrs.Name, s.prefix)
		if !ok || !strings.HasPrefix(key, prefix) || storage.ValidateKey(key) != nil {
			continue
		}
		if err := fn(objectInfo(key, attrs)); err != nil {
			return err
		}
	}
}

// objectInfo describes the object of key whose attributes are attrs.
func objectInfo(key string, attrs *gs.ObjectAttrs) storage.ObjectInfo {
	return storage.ObjectInfo{Key: key, Size: attrs.Size, ModTime: attrs.Updated, Version: strconv.FormatInt(attrs.Generation, 10)}
}

// Delete removes the object at key; a missing object is not an error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	name, err := s.objectName(key)
	if err != nil {
		return fmt.Errorf("gcs: delete: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("gcs: delete %s: %w", key, err)
	}
	err = s.bucket.Object(name).Delete(ctx)
	if err != nil && !errors.Is(err, gs.ErrObjectNotExist) {
		return fmt.Errorf("gcs: delete %s: %w", key, mapErr(ctx, err))
	}
	return nil
}

// Close releases the client.
func (s *Storage) Close() error {
	if err := s.client.Close(); err != nil {
		return fmt.Errorf("gcs: close: %w", err)
	}
	return nil
}

// mapErr maps an error of the client library to the storage package's
// errors: a missing object to ErrNotFound, 401 and 403 to ErrPermission,
// 408, 429, 5xx, timeouts and broken connections to Transient. An error
// after ctx ended wraps ctx's error and is never transient.
func mapErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	if errors.Is(err, gs.ErrObjectNotExist) {
		return fmt.Errorf("%w: %w", storage.ErrNotFound, err)
	}
	var gerr *googleapi.Error
	if errors.As(err, &gerr) {
		switch c := gerr.Code; {
		case c == http.StatusNotFound:
			return fmt.Errorf("%w: %w", storage.ErrNotFound, err)
		case c == http.StatusUnauthorized, c == http.StatusForbidden:
			return fmt.Errorf("%w: %w", storage.ErrPermission, err)
		case c == http.StatusRequestTimeout, c == http.StatusTooManyRequests, c >= 500 && c <= 599:
			return storage.Transient(err)
		}
		return err
	}
	var nerr net.Error
	if gs.ShouldRetry(err) || errors.As(err, &nerr) && nerr.Timeout() {
		return storage.Transient(err)
	}
	return err
}
