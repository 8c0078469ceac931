// Package minio is a storage.Storage in a bucket of MinIO, or of any
// S3-compatible service, through minio-go. The object at key K is the
// object prefix + "/" + K.
//
// Objects up to partsize go up in one PutObject; larger ones (packs) in
// parallel parts of partsize, read straight from the caller's body. When
// a multipart upload fails or is cancelled, minio-go aborts it (with a
// context of its own, so also after cancellation) before Put returns.
//
// PutIfAbsent is one PutObject with If-None-Match: * (minio-go's
// SetMatchETagExcept("*")), which MinIO and S3 refuse with 412
// PreconditionFailed when the key holds an object: that is
// storage.ErrExists. It never becomes a multipart upload (which S3
// conditions only at its completion), so it is limited to partsize
// bytes. 409 ConditionalRequestConflict (a conflicting write in flight)
// is transient: a retry decides.
//
// An object's Version is its ETag without the quotes, as for the s3
// backend (of the same bucket, both give the same Version): the MD5 of a
// single PUT's bytes, so identical bytes keep it. PutIfMatch is one
// PutObject with If-Match: "ETag" (SetMatchETag), limited to partsize
// bytes like PutIfAbsent: 412 PreconditionFailed is
// storage.ErrVersionMismatch, 404 NoSuchKey that and storage.ErrNotFound.
// There is no DeleteIfMatch: minio-go's RemoveObject sends no If-Match,
// and MinIO ignores it on DeleteObject anyway.
//
// CleanUploads lists the incomplete multipart uploads (minio-go's core
// ListMultipartUploads, page by page) and aborts those under the prefix
// initiated before the given time. MinIO lists by prefix only the uploads
// of an object named exactly so, so except against Amazon S3 the whole
// bucket is listed and filtered here; MinIO's bucket-wide listing covers
// the uploads begun since the server started, and it removes older ones
// itself after its stale-uploads expiry (24 hours by default).
// minio-go's RemoveIncompleteUpload is not used: it aborts every upload
// of a key, also a running one.
//
// minio-go's own retries are turned off (MaxRetries 1): retrying is the
// job of pkg/storage/retry. Errors worth retrying (5xx, throttling,
// request timeouts, connection resets and timeouts) are marked with
// storage.Transient.
package minio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	miniogo "github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/backupd/backupd/pkg/storage"
	putbody "github.com/backupd/backupd/pkg/storage/internal/body"
	"github.com/backupd/backupd/pkg/storage/internal/errkind"
	"github.com/backupd/backupd/pkg/storage/internal/etag"
	"github.com/backupd/backupd/pkg/storage/internal/httprange"
)

// maxKeyLength is the longest object key S3 accepts, in bytes.
const maxKeyLength = 1024

// ErrNoBucket means the configured bucket does not exist (and
// Config.CreateBucket is not set); it is storage.ErrNoBucket.
var ErrNoBucket = storage.ErrNoBucket

// Storage is a storage.Storage in a bucket reached through minio-go. It is
// safe for concurrent use.
type Storage struct {
	// uploadGrace: CleanUploads leaves uploads younger than this
	// (storage.UploadGrace; tests lower it).
	uploadGrace time.Duration
	client      *miniogo.Client
	core        miniogo.Core
	transport   *http.Transport
	bucket      string
	prefix      string // "" or the prefix plus "/"
	partSize    int64
	concurrency int
	secrets     []string // scrubbed from error texts
	region      string
	create      bool
	// listUploadsByPrefix: the service lists multipart uploads by key
	// prefix (Amazon S3); else CleanUploads lists the whole bucket and
	// filters.
	listUploadsByPrefix bool
}

var _ storage.Storage = (*Storage)(nil)

// New opens the bucket of cfg under its prefix. It checks that the bucket
// exists (HeadBucket, which needs only s3:ListBucket). A missing bucket is
// an error wrapping ErrNoBucket, unless cfg.CreateBucket is set: then it
// is created, private.
func New(ctx context.Context, cfg Config) (*Storage, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	accessKey, secretKey, token, err := cfg.credentials()
	if err != nil {
		return nil, err
	}
	s := &Storage{
		uploadGrace: storage.UploadGrace,
		bucket:      cfg.Bucket,
		partSize:    cfg.PartSize,
		concurrency: cfg.UploadConcurrency,
		region:      cfg.Region,
		create:      cfg.CreateBucket,
	}
	s.prefix, _ = keyPrefix(cfg.Prefix) // checked by Validate
	if s.partSize == 0 {
		s.partSize = DefaultPartSize
	}
	if s.concurrency == 0 {
		s.concurrency = DefaultUploadConcurrency
	}
	s.secrets = []string{accessKey, secretKey, token}
	secure := cfg.Secure == nil || *cfg.Secure
	s.transport, err = miniogo.DefaultTransport(secure)
	if err != nil {
		return nil, fmt.Errorf("minio: open bucket %s: %w", cfg.Bucket, err)
	}
	s.transport.MaxIdleConnsPerHost = 64
	s.client, err = miniogo.New(cfg.Endpoint, &miniogo.Options{
		Creds:      credentials.NewStaticV4(accessKey, secretKey, token),
		Secure:     secure,
		Region:     cfg.Region,
		Transport:  s.transport,
		MaxRetries: 1,
	})
	if err != nil {
		return nil, s.scrub(fmt.Errorf("minio: open bucket %s: %w", cfg.Bucket, err))
	}
	s.core = miniogo.Core{Client: s.client}
	s.listUploadsByPrefix = s3utils.IsAmazonEndpoint(*s.client.EndpointURL())
	if err := s.openBucket(ctx); err != nil {
		s.transport.CloseIdleConnections()
		return nil, err
	}
	return s, nil
}

// openBucket checks that the bucket exists, creating it if it does not
// and the config says so.
func (s *Storage) openBucket(ctx context.Context) error {
	exists, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) && strings.Contains(ue.Err.Error(), "HTTP response to HTTPS client") {
			return fmt.Errorf("minio: open bucket %s: %s speaks http, not https: add ?secure=false to the URL (or secure: false in the minio section)", s.bucket, s.client.EndpointURL().Host)
		}
		code := miniogo.ToErrorResponse(err).Code
		err = classify(ctx, err)
		if errors.Is(err, storage.ErrPermission) {
			return errkind.Errorf([]error{storage.ErrPermission}, "minio: open bucket %s: access denied (HTTP 403 %s): the credentials are wrong, or may not list this bucket (s3:ListBucket)",
				s.bucket, code)
		}
		return s.scrub(fmt.Errorf("minio: open bucket %s: %w", s.bucket, err))
	}
	if exists {
		return nil
	}
	if !s.create {
		return errkind.Errorf([]error{ErrNoBucket}, "minio: bucket %s does not exist: create it, or set createbucket: true in the minio section for the first backup to create it", s.bucket)
	}
	// New buckets are private: minio-go sets no policy or ACL.
	err = s.client.MakeBucket(ctx, s.bucket, miniogo.MakeBucketOptions{Region: s.region})
	if err != nil {
		switch miniogo.ToErrorResponse(err).Code {
		case "BucketAlreadyOwnedByYou":
			return nil
		case "BucketAlreadyExists":
			return fmt.Errorf("minio: create bucket %s: the name is taken by another account", s.bucket)
		}
		return s.scrub(fmt.Errorf("minio: create bucket %s: %w", s.bucket, classify(ctx, err)))
	}
	return nil
}

// objectKey validates key and returns the object name that holds it.
func (s *Storage) objectKey(key string) (string, error) {
	if err := storage.ValidateKey(key); err != nil {
		return "", err
	}
	k := s.prefix + key
	if len(k) > maxKeyLength {
		return "", fmt.Errorf("%w: %q: %d bytes with the prefix, S3 allows %d",
			storage.ErrInvalidKey, key, len(k), maxKeyLength)
	}
	return k, nil
}

// Put stores size bytes read from body under key: in one PutObject up to
// partsize, else as a multipart upload of partsize parts.
func (s *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	k, err := s.objectKey(key)
	if err != nil {
		return fmt.Errorf("minio: put: %w", err)
	}
	if size < 0 {
		return fmt.Errorf("minio: put %s: negative size %d", key, size)
	}
	if err := ctx.Err(); err != nil {
		return s.opError(ctx, "put", key, err)
	}
	br := putbody.NewReader(ctx, body, size)
	_, err = s.client.PutObject(ctx, s.bucket, k, br, size, miniogo.PutObjectOptions{
		PartSize:   uint64(s.partSize),
		NumThreads: uint(s.concurrency),
	})
	if err != nil {
		if berr := br.Err(); berr != nil {
			err = berr // minio-go rewrites errors that mention EOF
		}
		return s.opError(ctx, "put", key, err)
	}
	return nil
}

// PutIfAbsent stores size bytes read from body under key if no object is
// there, in one PutObject with If-None-Match: *. An object at key is
// storage.ErrExists. More than partsize bytes are refused.
func (s *Storage) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	k, err := s.objectKey(key)
	if err != nil {
		return fmt.Errorf("minio: put-if-absent: %w", err)
	}
	if size < 0 {
		return fmt.Errorf("minio: put-if-absent %s: negative size %d", key, size)
	}
	if size > s.partSize {
		return fmt.Errorf("minio: put-if-absent %s: %d bytes: a create-only write goes up in one request, of at most partsize (%d bytes)",
			key, size, s.partSize)
	}
	if err := ctx.Err(); err != nil {
		return s.opError(ctx, "put-if-absent", key, err)
	}
	opts := miniogo.PutObjectOptions{DisableMultipart: true}
	opts.SetMatchETagExcept("*")
	br := putbody.NewReader(ctx, body, size)
	_, err = s.client.PutObject(ctx, s.bucket, k, br, size, opts)
	if err == nil {
		return nil
	}
	if berr := br.Err(); berr != nil {
		err = berr // minio-go rewrites errors that mention EOF
	} else if resp := miniogo.ToErrorResponse(err); ctx.Err() == nil &&
		(resp.StatusCode == http.StatusPreconditionFailed || resp.Code == "PreconditionFailed") {
		return s.scrub(fmt.Errorf("minio: put-if-absent %s: %w: %s (HTTP %d): %w", key, storage.ErrExists, resp.Code, resp.StatusCode, err))
	}
	return s.opError(ctx, "put-if-absent", key, err)
}

// PutIfMatch stores size bytes read from body under key if the object
// there has Version version (its ETag), in one PutObject with If-Match,
// and returns the new Version. More than partsize bytes are refused.
func (s *Storage) PutIfMatch(ctx context.Context, key string, body io.ReadSeeker, size int64, version string) (string, error) {
	k, err := s.objectKey(key)
	if err != nil {
		return "", fmt.Errorf("minio: put-if-match: %w", err)
	}
	if size < 0 {
		return "", fmt.Errorf("minio: put-if-match %s: negative size %d", key, size)
	}
	if size > s.partSize {
		return "", fmt.Errorf("minio: put-if-match %s: %d bytes: a conditional write goes up in one request, of at most partsize (%d bytes)",
			key, size, s.partSize)
	}
	// "*" would match any object: SetMatchETag sends it unquoted.
	if !etag.Valid(version) {
		return "", fmt.Errorf("minio: put-if-match %s: %w: %q is no ETag", key, storage.ErrVersionMismatch, version)
	}
	if err := ctx.Err(); err != nil {
		return "", s.opError(ctx, "put-if-match", key, err)
	}
	opts := miniogo.PutObjectOptions{DisableMultipart: true}
	opts.SetMatchETag(version)
	br := putbody.NewReader(ctx, body, size)
	info, err := s.client.PutObject(ctx, s.bucket, k, br, size, opts)
	if err == nil {
		return etag.Version(info.ETag), nil
	}
	if berr := br.Err(); berr != nil {
		err = berr // minio-go rewrites errors that mention EOF
	} else if resp := miniogo.ToErrorResponse(err); ctx.Err() == nil &&
		(resp.StatusCode == http.StatusPreconditionFailed || resp.Code == "PreconditionFailed") {
		return "", s.scrub(fmt.Errorf("minio: put-if-match %s: %w: %s (HTTP %d): %w", key, storage.ErrVersionMismatch, resp.Code, resp.StatusCode, err))
	}
	err = s.opError(ctx, "put-if-match", key, err)
	if errors.Is(err, storage.ErrNotFound) {
		err = fmt.Errorf("%w: %w", storage.ErrVersionMismatch, err)
	}
	return "", err
}

// CleanUploads aborts the incomplete multipart uploads under prefix
// initiated (by the service's clock) before before, and returns how many
// it aborted. The service cannot tell a live upload from a dead one: see
// storage.Storage on choosing before.
func (s *Storage) CleanUploads(ctx context.Context, prefix string, before time.Time) (int, error) {
	if lim := time.Now().Add(-s.uploadGrace); before.After(lim) {
		before = lim // age is all there is to go by: leave what may be live
	}
	if !listable(prefix) {
		return 0, nil // no valid key starts with prefix
	}
	if err := ctx.Err(); err != nil {
		return 0, s.opError(ctx, "clean uploads", prefix, err)
	}
	listPrefix := ""
	if s.listUploadsByPrefix {
		listPrefix = s.prefix + prefix
	}
	removed := 0
	keyMarker, idMarker := "", ""
	for {
		res, err := s.core.ListMultipartUploads(ctx, s.bucket, listPrefix, keyMarker, idMarker, "", 1000)
		if err != nil {
			return removed, s.opError(ctx, "clean uploads", prefix, err)
		}
		for _, u := range res.Uploads {
			key, ok := strings.CutPrefix(u.Key, s.prefix)
			if !ok || !strings.HasPrefix(key, prefix) || u.UploadID == "" || !u.Initiated.Before(before) {
				continue
			}
			err := s.core.AbortMultipartUpload(ctx, s.bucket, u.Key, u.UploadID)
			switch code := miniogo.ToErrorResponse(err).Code; {
			case err == nil:
				removed++
			case code == "NoSuchUpload", code == "NoSuchKey":
				// aborted or completed meanwhile
			default:
				return removed, s.opError(ctx, "clean uploads", key, err)
			}
		}
		if !res.IsTruncated {
			return removed, nil
		}
		if res.NextKeyMarker == "" || res.NextKeyMarker == keyMarker && res.NextUploadIDMarker == idMarker {
			return removed, fmt.Errorf("minio: clean uploads %s: the service's listing does not advance (key marker %q)", prefix, res.NextKeyMarker)
		}
		keyMarker, idMarker = res.NextKeyMarker, res.NextUploadIDMarker
	}
}

// Get opens the byte range [offset, offset+length) of the object at key
// with a ranged GetObject.
func (s *Storage) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	k, err := s.objectKey(key)
	if err != nil {
		return nil, fmt.Errorf("minio: get: %w", err)
	}
	if offset < 0 {
		return nil, fmt.Errorf("minio: get %s: offset %d: %w", key, offset, storage.ErrInvalidRange)
	}
	if err := ctx.Err(); err != nil {
		return nil, s.opError(ctx, "get", key, err)
	}
	if length == 0 {
		// HTTP cannot ask for zero bytes; check that the range is valid.
		oi, err := s.Stat(ctx, key)
		if err != nil {
			return nil, err
		}
		if offset > oi.Size {
			return nil, fmt.Errorf("minio: get %s: offset %d of %d bytes: %w", key, offset, oi.Size, storage.ErrInvalidRange)
		}
		return io.NopCloser(strings.NewReader("")), nil
	}
	var opts miniogo.GetObjectOptions
	ranged := offset > 0 || length > 0
	if ranged {
		// SetRange(offset, 0) with offset > 0 reads to the end; with
		// offset 0, length is > 0 here.
		end := int64(0)
		if length > 0 && length <= math.MaxInt64-offset {
			end = offset + length - 1
		}
		if err := opts.SetRange(offset, end); err != nil {
			return nil, fmt.Errorf("minio: get %s: %w", key, err)
		}
	}
	body, _, header, err := s.core.GetObject(ctx, s.bucket, k, opts)
	if err != nil {
		if miniogo.ToErrorResponse(err).StatusCode != http.StatusRequestedRangeNotSatisfiable {
			return nil, s.opError(ctx, "get", key, err)
		}
		// The range starts at or past the end: an empty read when it
		// starts exactly at the end, else an invalid range.
		oi, serr := s.Stat(ctx, key)
		if serr != nil {
			return nil, serr
		}
		if offset == oi.Size {
			return io.NopCloser(strings.NewReader("")), nil
		}
		return nil, fmt.Errorf("minio: get %s: offset %d of %d bytes: %w", key, offset, oi.Size, storage.ErrInvalidRange)
	}
	var r io.Reader = body
	if ranged {
		cr := header.Get("Content-Range")
		start, ok := httprange.ContentRangeStart(cr)
		switch {
		case ok && start == offset:
		case !ok && offset == 0:
			// The whole object came back: cut it to the range.
			if length > 0 {
				r = io.LimitReader(body, length)
			}
		default:
			body.Close()
			return nil, fmt.Errorf("minio: get %s: asked for bytes from %d, the server sent Content-Range %q", key, offset, cr)
		}
	}
	return &httprange.Reader{R: r, C: body, Err: func(err error) error { return s.opError(ctx, "read", key, err) }}, nil
}

// GetWithInfo opens the whole object at key with one GetObject, whose
// reply describes the bytes it carries.
func (s *Storage) GetWithInfo(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	k, err := s.objectKey(key)
	if err != nil {
		return nil, storage.ObjectInfo{}, fmt.Errorf("minio: get: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, storage.ObjectInfo{}, s.opError(ctx, "get", key, err)
	}
	body, info, _, err := s.core.GetObject(ctx, s.bucket, k, miniogo.GetObjectOptions{})
	if err != nil {
		return nil, storage.ObjectInfo{}, s.opError(ctx, "get", key, err)
	}
	if info.Size < 0 {
		body.Close()
		return nil, storage.ObjectInfo{}, fmt.Errorf("minio: get %s: the reply gives no length", key)
	}
	oi := storage.ObjectInfo{Key: key, Size: info.Size, ModTime: info.LastModified, Version: etag.Version(info.ETag)}
	return &httprange.Reader{R: body, C: body, Err: func(err error) error { return s.opError(ctx, "read", key, err) }}, oi, nil
}

// Stat describes the object at key (HeadObject).
func (s *Storage) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	k, err := s.objectKey(key)
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("minio: stat: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, s.opError(ctx, "stat", key, err)
	}
	oi, err := s.client.StatObject(ctx, s.bucket, k, miniogo.StatObjectOptions{})
	if err != nil {
		return storage.ObjectInfo{}, s.opError(ctx, "stat", key, err)
	}
	return storage.ObjectInfo{Key: key, Size: oi.Size, ModTime: oi.LastModified, Version: etag.Version(oi.ETag)}, nil
}

// List calls fn for every object whose key starts with prefix, listing
// the bucket by prefix, recursively and page by page. Objects under the
// prefix whose names are not valid keys (such as "dir/" markers made by
// consoles) are skipped.
func (s *Storage) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if !listable(prefix) {
		return nil // no valid key starts with prefix
	}
	if err := ctx.Err(); err != nil {
		return s.opError(ctx, "list", prefix, err)
	}
	// MinIO refuses a prefix whose last component is "." or ".." (though
	// keys such as "..x" are fine): list the parent and filter here.
	listPrefix := prefix
	if base := prefix[strings.LastIndexByte(prefix, '/')+1:]; base == "." || base == ".." {
		listPrefix = prefix[:len(prefix)-len(base)]
	}
	lctx, stop := context.WithCancel(ctx)
	defer stop() // ends minio-go's listing goroutine
	for obj := range s.client.ListObjects(lctx, s.bucket, miniogo.ListObjectsOptions{
		Prefix:    s.prefix + listPrefix,
		Recursive: true,
	}) {
		if obj.Err != nil {
			return s.opError(ctx, "list", prefix, obj.Err)
		}
		key, ok := strings.CutPrefix(obj.Key, s.prefix)
		if !ok || !strings.HasPrefix(key, prefix) || storage.ValidateKey(key) != nil {
			continue
		}
		if err := fn(storage.ObjectInfo{Key: key, Size: obj.Size, ModTime: obj.LastModified, Version: etag.Version(obj.ETag)}); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return s.opError(ctx, "list", prefix, err)
		}
	}
	// The channel also closes when ctx is cancelled.
	if err := ctx.Err(); err != nil {
		return s.opError(ctx, "list", prefix, err)
	}
	return nil
}

// listable reports whether a valid key can start with prefix.
func listable(prefix string) bool {
	for _, r := range prefix {
		if r < 0x20 || r == 0x7f || r == '\\' {
			return false
		}
	}
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		return storage.ValidateKey(prefix[:i]) == nil
	}
	return true
}

// Delete removes the object at key; a missing object is not an error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	k, err := s.objectKey(key)
	if err != nil {
		return fmt.Errorf("minio: delete: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return s.opError(ctx, "delete", key, err)
	}
	err = s.client.RemoveObject(ctx, s.bucket, k, miniogo.RemoveObjectOptions{})
	if err != nil && miniogo.ToErrorResponse(err).Code != "NoSuchKey" {
		return s.opError(ctx, "delete", key, err)
	}
	return nil
}

// Close releases idle connections.
func (s *Storage) Close() error {
	s.transport.CloseIdleConnections()
	return nil
}

// opError returns the error of operation op on key: classified (see
// classify), naming the backend, the operation, the key and the bucket,
// and with any credential scrubbed from its text.
func (s *Storage) opError(ctx context.Context, op, key string, err error) error {
	return s.scrub(fmt.Errorf("minio: %s %s in bucket %s: %w", op, key, s.bucket, classify(ctx, err)))
}

// scrub guards against credentials in error texts: minio-go's messages do
// not hold them, but a server's might.
func (s *Storage) scrub(err error) error { return storage.ScrubSecrets(err, s.secrets...) }

// classify maps a minio-go error to the storage package's errors: 404 to
// storage.ErrNotFound, 403 and refused credentials to
// storage.ErrPermission, server errors, throttling, request timeouts,
// connection resets and timeouts to storage.Transient. Cancellation and
// failures of the caller's body stay as they are. When ctx is done, its
// error is what is returned.
func classify(ctx context.Context, err error) error {
	if ctx != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	var be *putbody.Error
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &be) {
		return err
	}
	var resp miniogo.ErrorResponse
	if !errors.As(err, &resp) {
		// minio-go replaces a connection closed midway (an EOF) with an
		// error of its own that only its text identifies.
		if isNetworkError(err) || strings.Contains(err.Error(), "Connection closed by foreign host") {
			return storage.Transient(err)
		}
		return err
	}
	// minio-go's message alone does not say what happened; add the code.
	if resp.Code != "" && resp.Code != err.Error() {
		err = fmt.Errorf("%s (HTTP %d): %w", resp.Code, resp.StatusCode, err)
	} else {
		err = fmt.Errorf("HTTP %d: %w", resp.StatusCode, err)
	}
	switch code, status := resp.Code, resp.StatusCode; {
	case code == "NoSuchBucket":
		return fmt.Errorf("%w: %w", ErrNoBucket, err)
	case code == "NoSuchKey", code == "NotFound", status == http.StatusNotFound:
		return fmt.Errorf("%w: %w", storage.ErrNotFound, err)
	case status == http.StatusForbidden, code == "AccessDenied", code == "InvalidAccessKeyId",
		code == "SignatureDoesNotMatch", code == "AllAccessDisabled", code == "AccountProblem":
		return fmt.Errorf("%w: %w", storage.ErrPermission, err)
	case status >= 500, status == http.StatusTooManyRequests, code == "SlowDown", code == "Throttling",
		code == "ThrottlingException", code == "RequestLimitExceeded", code == "RequestTimeout",
		code == "InternalError", code == "ServiceUnavailable", code == "XMinioServerNotInitialized",
		code == "ConditionalRequestConflict": // a conditional write raced another; a retry decides
		return storage.Transient(err)
	}
	return err
}

// isNetworkError reports whether err is a connection-level failure that a
// later attempt may not meet.
func isNetworkError(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, net.ErrClosed)
}
