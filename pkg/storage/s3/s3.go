// Package s3 is a storage.Storage in an Amazon S3 bucket, or in any
// S3-compatible service, through aws-sdk-go-v2. The object at key K is the
// S3 object rootdirectory + "/" + K.
//
// Objects up to chunksize go up in one PutObject; larger ones (packs) in
// parallel parts of chunksize through the SDK's upload manager, read
// straight from the caller's body without buffering. A failed or cancelled
// multipart upload is aborted before Put returns, so it leaves neither an
// object nor stored parts behind; S3 commits an object only when the
// upload completes, so a reader never sees part of one.
//
// PutIfAbsent is one PutObject with If-None-Match: *, which S3 (since
// August 2024) and MinIO refuse with 412 PreconditionFailed when the key
// holds an object: that is storage.ErrExists. It is limited to chunksize
// bytes, what Put sends in one request; S3 conditions a multipart upload
// only at its completion, after every part went up, so a larger
// PutIfAbsent is refused rather than sent that way. S3 answers 409
// ConditionalRequestConflict when a conflicting write of the key is in
// flight; that is marked transient: whether the key ends up taken is not
// known yet, so a retry decides (ErrExists or success).
//
// An object's Version is its ETag, without the quotes: for an object of
// one PutObject the MD5 of its bytes (so replacing it with identical bytes
// keeps it), for one of a multipart upload a digest of its parts' MD5s
// and their count, with SSE-KMS an opaque value; any other content gives
// another. HeadObject, ListObjectsV2 and GetObject all report it.
// PutIfMatch is one PutObject with If-Match: "ETag" (Amazon S3 since
// November 2024, and MinIO): 412 PreconditionFailed is
// storage.ErrVersionMismatch, 404 NoSuchKey that and storage.ErrNotFound;
// it is limited to chunksize bytes as PutIfAbsent is, and 409
// ConditionalRequestConflict is transient likewise. Like If-None-Match it
// needs only s3:PutObject. There is no DeleteIfMatch: MinIO ignores
// If-Match on DeleteObject (a stale ETag deletes the object).
//
// CleanUploads lists the incomplete multipart uploads of the bucket
// (ListMultipartUploads, page by page) and aborts those under the root
// directory and prefix initiated before the given time. Against AWS
// (no regionendpoint) it lists by prefix; against other endpoints it
// lists the whole bucket and filters, because MinIO lists by prefix only
// the uploads of an object named exactly so (its bucket-wide listing
// covers the uploads begun since the server started; MinIO removes older
// ones itself after its stale-uploads expiry, 24 hours by default).
//
// The backend needs only the minimal IAM policy of docs/STORAGE.md
// (s3:ListBucket, s3:GetBucketLocation, s3:ListBucketMultipartUploads on
// the bucket; s3:PutObject, s3:GetObject, s3:DeleteObject,
// s3:ListMultipartUploadParts, s3:AbortMultipartUpload on its objects),
// and s3:CreateBucket only with Config.CreateBucket.
//
// The SDK's own retries are turned off (aws.NopRetryer): retrying is the
// job of pkg/storage/retry, which wraps the storage, so that one policy
// decides and attempts do not multiply. Errors worth retrying (5xx,
// throttling, request timeouts, connection resets and timeouts) are
// marked with storage.Transient.
package s3

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/backupd/backupd/pkg/storage"
	putbody "github.com/backupd/backupd/pkg/storage/internal/body"
	"github.com/backupd/backupd/pkg/storage/internal/errkind"
	"github.com/backupd/backupd/pkg/storage/internal/etag"
	"github.com/backupd/backupd/pkg/storage/internal/httprange"
)

// maxKeyLength is the longest object key S3 accepts, in bytes.
const maxKeyLength = 1024

// abortTimeout bounds the abort of a failed multipart upload, which runs
// even when the Put's context is cancelled.
const abortTimeout = 30 * time.Second

// ErrNoBucket means the configured bucket does not exist (and
// Config.CreateBucket is not set); it is storage.ErrNoBucket.
var ErrNoBucket = storage.ErrNoBucket

// Storage is a storage.Storage in an S3 bucket. It is safe for concurrent
// use.
type Storage struct {
	// uploadGrace: CleanUploads leaves uploads younger than this
	// (storage.UploadGrace; tests lower it).
	uploadGrace time.Duration
	client      *awss3.Client
	uploader    *manager.Uploader
	transports  transports
	bucket      string
	endpoint    string // "" for Amazon S3, for errors
	root        string // "" or the root directory plus "/"
	chunkSize   int64
	cfg         Config
	// listUploadsByPrefix: the service lists multipart uploads by key
	// prefix (AWS); else CleanUploads lists the whole bucket and filters.
	listUploadsByPrefix bool
}

var _ storage.Storage = (*Storage)(nil)

// New opens the bucket of cfg under its root directory. It checks that
// the bucket exists and is reachable (HeadBucket, which needs only
// s3:ListBucket). A missing bucket is an error wrapping ErrNoBucket,
// unless cfg.CreateBucket is set: then it is created, private.
func New(ctx context.Context, cfg Config) (*Storage, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Storage{bucket: cfg.Bucket, cfg: cfg, chunkSize: cfg.ChunkSize, listUploadsByPrefix: cfg.RegionEndpoint == "", uploadGrace: storage.UploadGrace}
	s.root, _ = rootPrefix(cfg.RootDirectory) // checked by Validate
	if s.chunkSize == 0 {
		s.chunkSize = DefaultChunkSize
	}
	concurrency := cfg.UploadConcurrency
	if concurrency == 0 {
		concurrency = DefaultUploadConcurrency
	}
	secure := cfg.Secure == nil || *cfg.Secure
	endpoint := ""
	if cfg.RegionEndpoint != "" {
		endpoint, _ = endpointURL(cfg.RegionEndpoint, cfg.Secure) // checked by Validate
		secure = strings.HasPrefix(endpoint, "https:")
	}
	pathStyle := endpoint != ""
	if cfg.PathStyle != nil {
		pathStyle = *cfg.PathStyle
	}

	// A buildable client, so that the SDK can add the CA bundle of
	// AWS_CA_BUNDLE to it.
	httpClient := awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.MaxIdleConnsPerHost = 64
		s.transports.add(tr)
	})
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		config.WithLogger(logging.Nop{}), // errors are returned, never printed
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.AccessKey != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, s.scrub(fmt.Errorf("s3: open bucket %s: loading the AWS configuration: %w", cfg.Bucket, err))
	}
	if awsCfg.Region == "" {
		if endpoint == "" {
			return nil, fmt.Errorf("s3: open bucket %s: no region: add ?region=REGION to the URL, or set region in the s3 section or $AWS_REGION", cfg.Bucket)
		}
		awsCfg.Region = "us-east-1" // what S3-compatible services expect by default
	}
	// The credentials first, so that none found is said as such (the SDK
	// reports it as a failed request, after a warning on stderr).
	if _, err := awsCfg.Credentials.Retrieve(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("s3: open bucket %s: %w", cfg.Bucket, ctx.Err())
		}
		return nil, errkind.Errorf([]error{storage.ErrPermission}, "s3: open bucket %s: no credentials found: looked for %s", cfg.Bucket, lookedFor)
	}
	s.endpoint = endpoint
	s.client = awss3.NewFromConfig(awsCfg, func(o *awss3.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
		o.UsePathStyle = pathStyle
		o.EndpointOptions.DisableHTTPS = !secure
		// Ranged reads carry no checksum; saying so on every read is noise.
		o.DisableLogOutputChecksumValidationSkipped = true
	})
	s.uploader = manager.NewUploader(s.client, func(u *manager.Uploader) {
		u.PartSize = s.chunkSize
		u.Concurrency = concurrency
		u.LeavePartsOnError = false
	})
	if err := s.openBucket(ctx); err != nil {
		s.transports.closeIdle()
		return nil, err
	}
	return s, nil
}

// openBucket checks that the bucket exists, creating it if it does not
// and the config says so.
func (s *Storage) openBucket(ctx context.Context) error {
	_, err := s.client.HeadBucket(ctx, &awss3.HeadBucketInput{Bucket: &s.bucket})
	if err == nil {
		return nil
	}
	if !isNotFound(err) {
		if code, region := httpStatus(err), bucketRegion(err); code == http.StatusMovedPermanently && region != "" {
			return fmt.Errorf("s3: open bucket %s: the bucket is in region %s, not %s", s.bucket, region, s.client.Options().Region)
		}
		return s.scrub(openError(ctx, s.bucket, s.endpoint, err))
	}
	if !s.cfg.CreateBucket {
		return errkind.Errorf([]error{ErrNoBucket}, "s3: bucket %s does not exist: create it, or set createbucket: true in the s3 section for the first backup to create it", s.bucket)
	}
	in := &awss3.CreateBucketInput{Bucket: &s.bucket}
	if region := s.client.Options().Region; region != "us-east-1" {
		in.CreateBucketConfiguration = &types.CreateBucketConfiguration{
			LocationConstraint: types.BucketLocationConstraint(region),
		}
	}
	// New buckets are private: no ACL grants, and Amazon S3 blocks public
	// access to them by default.
	_, err = s.client.CreateBucket(ctx, in)
	var owned *types.BucketAlreadyOwnedByYou
	var taken *types.BucketAlreadyExists
	switch {
	case err == nil, errors.As(err, &owned):
		return nil
	case errors.As(err, &taken):
		return fmt.Errorf("s3: create bucket %s: the name is taken by another account", s.bucket)
	default:
		return s.scrub(fmt.Errorf("s3: create bucket %s: %w", s.bucket, classify(ctx, err)))
	}
}

// lookedFor lists where the AWS SDK's default chain looks for
// credentials, after the s3 section.
const lookedFor = "accesskey and secretkey in the s3 section, $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY, " +
	"the shared files (~/.aws/credentials, ~/.aws/config, $AWS_PROFILE), web identity ($AWS_ROLE_ARN with $AWS_WEB_IDENTITY_TOKEN_FILE: IRSA) and the EC2 instance role"

// openError explains why HeadBucket failed, in one line without request
// ids: refused credentials, an unreachable service, or the SDK's error.
func openError(ctx context.Context, bucket, endpoint string, err error) error {
	err = classify(ctx, err)
	where := endpoint
	if where == "" {
		where = "Amazon S3"
	}
	var oe *net.OpError
	switch {
	case errors.Is(err, storage.ErrPermission):
		return errkind.Errorf([]error{storage.ErrPermission}, "s3: open bucket %s: access denied (HTTP 403): the credentials are wrong, or may not list this bucket (s3:ListBucket)", bucket)
	case errors.As(err, &oe):
		return fmt.Errorf("s3: open bucket %s: cannot reach %s: %w", bucket, where, oe.Err)
	}
	return fmt.Errorf("s3: open bucket %s: %w", bucket, err)
}

// objectKey validates key and returns the S3 key that holds it.
func (s *Storage) objectKey(key string) (string, error) {
	if err := storage.ValidateKey(key); err != nil {
		return "", err
	}
	k := s.root + key
	if len(k) > maxKeyLength {
		return "", fmt.Errorf("%w: %q: %d bytes with the root directory, S3 allows %d",
			storage.ErrInvalidKey, key, len(k), maxKeyLength)
	}
	return k, nil
}

// Put stores size bytes read from body under key: in one PutObject up to
// chunksize, else as a multipart upload of chunksize parts, aborted when
// it fails.
func (s *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	k, err := s.objectKey(key)
	if err != nil {
		return fmt.Errorf("s3: put: %w", err)
	}
	if size < 0 {
		return fmt.Errorf("s3: put %s: negative size %d", key, size)
	}
	if err := ctx.Err(); err != nil {
		return s.opError(ctx, "put", key, err)
	}
	br := putbody.NewReader(ctx, body, size)
	in := s.putInput(k, br, size)
	if size <= s.chunkSize {
		_, err = s.client.PutObject(ctx, in, payloadHash(ctx))
	} else {
		_, err = s.uploader.Upload(ctx, in)
		var failed manager.MultiUploadFailure
		if err != nil && errors.As(err, &failed) && failed.UploadID() != "" {
			// The upload manager aborts with the Put's context, which
			// fails when that is cancelled; abort again, regardless.
			if aerr := s.abort(ctx, k, failed.UploadID()); aerr != nil {
				err = fmt.Errorf("%w (aborting the multipart upload also failed: %v)", err, aerr)
			}
		}
	}
	if err != nil {
		if berr := br.Err(); berr != nil && !errors.Is(err, berr) {
			err = fmt.Errorf("%w (%v)", berr, err)
		}
		return s.opError(ctx, "put", key, err)
	}
	return nil
}

// putInput returns the PutObjectInput of an upload of body to the S3 key
// k, with the storage class and encryption of the config.
func (s *Storage) putInput(k string, body io.Reader, size int64) *awss3.PutObjectInput {
	in := &awss3.PutObjectInput{
		Bucket:        &s.bucket,
		Key:           &k,
		Body:          body,
		ContentLength: aws.Int64(size),
	}
	if s.cfg.StorageClass != "" {
		in.StorageClass = types.StorageClass(s.cfg.StorageClass)
	}
	if s.cfg.Encrypt {
		in.ServerSideEncryption = types.ServerSideEncryptionAes256
		if s.cfg.KeyID != "" {
			in.ServerSideEncryption = types.ServerSideEncryptionAwsKms
			in.SSEKMSKeyId = &s.cfg.KeyID
		}
	}
	return in
}

// payloadHash returns the PutObject option that signs the body's
// SHA-256 given by storage.WithContentSHA256 in ctx, if any, as its
// x-amz-content-sha256, in place of the SDK's own pass over the body to
// compute it (over plain HTTP; over HTTPS the SDK sends the payload
// unsigned with a trailing checksum, and this changes nothing). The
// service checks the bytes against it: a wrong sum is a 400
// XAmzContentSHA256Mismatch, never another object.
func payloadHash(ctx context.Context) func(*awss3.Options) {
	sum, ok := storage.ContentSHA256(ctx)
	if !ok {
		return func(*awss3.Options) {}
	}
	hash := hex.EncodeToString(sum[:])
	return func(o *awss3.Options) {
		o.APIOptions = append(o.APIOptions, func(stack *middleware.Stack) error {
			// First in the finalize step: before the checksum middleware,
			// which would compute the hash with its CRC32, and the
			// signer's, which would compute it alone.
			return stack.Finalize.Add(middleware.FinalizeMiddlewareFunc("backupdContentSHA256",
				func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
					return next.HandleFinalize(v4.SetPayloadHash(ctx, hash), in)
				}), middleware.Before)
		})
	}
}

// PutIfAbsent stores size bytes read from body under key if no object is
// there, in one PutObject with If-None-Match: *. An object at key is
// storage.ErrExists. More than chunksize bytes are refused.
func (s *Storage) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	k, err := s.objectKey(key)
	if err != nil {
		return fmt.Errorf("s3: put-if-absent: %w", err)
	}
	if size < 0 {
		return fmt.Errorf("s3: put-if-absent %s: negative size %d", key, size)
	}
	if size > s.chunkSize {
		return fmt.Errorf("s3: put-if-absent %s: %d bytes: a create-only write goes up in one request, of at most chunksize (%d bytes)",
			key, size, s.chunkSize)
	}
	if err := ctx.Err(); err != nil {
		return s.opError(ctx, "put-if-absent", key, err)
	}
	br := putbody.NewReader(ctx, body, size)
	in := s.putInput(k, br, size)
	in.IfNoneMatch = aws.String("*")
	_, err = s.client.PutObject(ctx, in, payloadHash(ctx))
	if err == nil {
		return nil
	}
	if berr := br.Err(); berr != nil && !errors.Is(err, berr) {
		err = fmt.Errorf("%w (%v)", berr, err)
	}
	var apiErr smithy.APIError
	if ctx.Err() == nil && (httpStatus(err) == http.StatusPreconditionFailed ||
		errors.As(err, &apiErr) && apiErr.ErrorCode() == "PreconditionFailed") {
		return s.scrub(fmt.Errorf("s3: put-if-absent %s: %w: %w", key, storage.ErrExists, err))
	}
	return s.opError(ctx, "put-if-absent", key, err)
}

// PutIfMatch stores size bytes read from body under key if the object
// there has Version version (its ETag), in one PutObject with If-Match,
// and returns the new Version. More than chunksize bytes are refused.
func (s *Storage) PutIfMatch(ctx context.Context, key string, body io.ReadSeeker, size int64, version string) (string, error) {
	k, err := s.objectKey(key)
	if err != nil {
		return "", fmt.Errorf("s3: put-if-match: %w", err)
	}
	if size < 0 {
		return "", fmt.Errorf("s3: put-if-match %s: negative size %d", key, size)
	}
	if size > s.chunkSize {
		return "", fmt.Errorf("s3: put-if-match %s: %d bytes: a conditional write goes up in one request, of at most chunksize (%d bytes)",
			key, size, s.chunkSize)
	}
	if !etag.Valid(version) {
		return "", fmt.Errorf("s3: put-if-match %s: %w: %q is no ETag", key, storage.ErrVersionMismatch, version)
	}
	if err := ctx.Err(); err != nil {
		return "", s.opError(ctx, "put-if-match", key, err)
	}
	br := putbody.NewReader(ctx, body, size)
	in := s.putInput(k, br, size)
	in.IfMatch = aws.String(etag.Header(version))
	out, err := s.client.PutObject(ctx, in, payloadHash(ctx))
	if err == nil {
		return etagVersion(out.ETag), nil
	}
	if berr := br.Err(); berr != nil && !errors.Is(err, berr) {
		err = fmt.Errorf("%w (%v)", berr, err)
	}
	var apiErr smithy.APIError
	if ctx.Err() == nil && (httpStatus(err) == http.StatusPreconditionFailed ||
		errors.As(err, &apiErr) && apiErr.ErrorCode() == "PreconditionFailed") {
		return "", s.scrub(fmt.Errorf("s3: put-if-match %s: %w: %w", key, storage.ErrVersionMismatch, err))
	}
	err = s.opError(ctx, "put-if-match", key, err)
	if errors.Is(err, storage.ErrNotFound) {
		err = fmt.Errorf("%w: %w", storage.ErrVersionMismatch, err)
	}
	return "", err
}

// etagVersion returns the Version of an ETag of the SDK.
func etagVersion(tag *string) string { return etag.Version(aws.ToString(tag)) }

// abort aborts a multipart upload, even when ctx is cancelled. An upload
// that is already gone is not an error.
func (s *Storage) abort(ctx context.Context, objectKey, uploadID string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	_, err := s.abortUpload(ctx, objectKey, uploadID)
	return err
}

// abortUpload aborts a multipart upload and reports whether it was there
// to abort; one that is already gone is not an error.
func (s *Storage) abortUpload(ctx context.Context, objectKey, uploadID string) (bool, error) {
	_, err := s.client.AbortMultipartUpload(ctx, &awss3.AbortMultipartUploadInput{
		Bucket:   &s.bucket,
		Key:      &objectKey,
		UploadId: &uploadID,
	})
	var gone *types.NoSuchUpload
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &gone), isNotFound(err):
		return false, nil
	}
	return false, err
}

// CleanUploads aborts the incomplete multipart uploads under prefix
// initiated (by the service's clock) before before, and returns how many
// it aborted. S3 cannot tell a live upload from a dead one: see
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
	in := &awss3.ListMultipartUploadsInput{Bucket: &s.bucket}
	if p := s.root + prefix; s.listUploadsByPrefix && p != "" {
		in.Prefix = &p
	}
	removed := 0
	for {
		out, err := s.client.ListMultipartUploads(ctx, in)
		if err != nil {
			return removed, s.opError(ctx, "clean uploads", prefix, err)
		}
		for _, u := range out.Uploads {
			key, ok := strings.CutPrefix(aws.ToString(u.Key), s.root)
			if !ok || !strings.HasPrefix(key, prefix) || u.UploadId == nil ||
				u.Initiated == nil || !u.Initiated.Before(before) {
				continue
			}
			aborted, err := s.abortUpload(ctx, aws.ToString(u.Key), *u.UploadId)
			if err != nil {
				return removed, s.opError(ctx, "clean uploads", key, err)
			}
			if aborted {
				removed++
			}
		}
		if !aws.ToBool(out.IsTruncated) {
			return removed, nil
		}
		next, nextID := aws.ToString(out.NextKeyMarker), aws.ToString(out.NextUploadIdMarker)
		if next == "" || next == aws.ToString(in.KeyMarker) && nextID == aws.ToString(in.UploadIdMarker) {
			return removed, fmt.Errorf("s3: clean uploads %s: the service's listing does not advance (key marker %q)", prefix, next)
		}
		in.KeyMarker, in.UploadIdMarker = &next, &nextID
	}
}

// Get opens the byte range [offset, offset+length) of the object at key
// with a ranged GetObject.
func (s *Storage) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	k, err := s.objectKey(key)
	if err != nil {
		return nil, fmt.Errorf("s3: get: %w", err)
	}
	if offset < 0 {
		return nil, fmt.Errorf("s3: get %s: offset %d: %w", key, offset, storage.ErrInvalidRange)
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
			return nil, fmt.Errorf("s3: get %s: offset %d of %d bytes: %w", key, offset, oi.Size, storage.ErrInvalidRange)
		}
		return io.NopCloser(strings.NewReader("")), nil
	}
	in := &awss3.GetObjectInput{Bucket: &s.bucket, Key: &k}
	ranged := offset > 0 || length > 0
	if ranged {
		r := "bytes=" + strconv.FormatInt(offset, 10) + "-"
		if length > 0 && length <= math.MaxInt64-offset {
			r += strconv.FormatInt(offset+length-1, 10)
		}
		in.Range = &r
	}
	out, err := s.client.GetObject(ctx, in)
	if err != nil {
		if httpStatus(err) != http.StatusRequestedRangeNotSatisfiable {
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
		return nil, fmt.Errorf("s3: get %s: offset %d of %d bytes: %w", key, offset, oi.Size, storage.ErrInvalidRange)
	}
	var body io.Reader = out.Body
	if ranged {
		start, ok := httprange.ContentRangeStart(aws.ToString(out.ContentRange))
		switch {
		case ok && start == offset:
		case !ok && offset == 0:
			// The whole object came back: cut it to the range.
			if length > 0 {
				body = io.LimitReader(out.Body, length)
			}
		default:
			out.Body.Close()
			return nil, fmt.Errorf("s3: get %s: asked for bytes from %d, the server sent Content-Range %q",
				key, offset, aws.ToString(out.ContentRange))
		}
	}
	return &httprange.Reader{R: body, C: out.Body, Err: func(err error) error { return s.opError(ctx, "read", key, err) }}, nil
}

// GetWithInfo opens the whole object at key with one GetObject, whose
// reply describes the bytes it carries.
func (s *Storage) GetWithInfo(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	k, err := s.objectKey(key)
	if err != nil {
		return nil, storage.ObjectInfo{}, fmt.Errorf("s3: get: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, storage.ObjectInfo{}, s.opError(ctx, "get", key, err)
	}
	out, err := s.client.GetObject(ctx, &awss3.GetObjectInput{Bucket: &s.bucket, Key: &k})
	if err != nil {
		return nil, storage.ObjectInfo{}, s.opError(ctx, "get", key, err)
	}
	oi := storage.ObjectInfo{Key: key, Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified), Version: etagVersion(out.ETag)}
	if out.ContentLength == nil || oi.Size < 0 {
		out.Body.Close()
		return nil, storage.ObjectInfo{}, fmt.Errorf("s3: get %s: the reply gives no length", key)
	}
	return &httprange.Reader{R: out.Body, C: out.Body, Err: func(err error) error { return s.opError(ctx, "read", key, err) }}, oi, nil
}

// Stat describes the object at key (HeadObject).
func (s *Storage) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	k, err := s.objectKey(key)
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("s3: stat: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, s.opError(ctx, "stat", key, err)
	}
	out, err := s.client.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: &s.bucket, Key: &k})
	if err != nil {
		return storage.ObjectInfo{}, s.opError(ctx, "stat", key, err)
	}
	return storage.ObjectInfo{Key: key, Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified), Version: etagVersion(out.ETag)}, nil
}

// List calls fn for every object whose key starts with prefix, listing
// the bucket by prefix (ListObjectsV2, page by page). Objects under the
// root directory whose names are not valid keys (such as "dir/" markers
// made by consoles) are skipped.
func (s *Storage) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if !listable(prefix) {
		return nil // no valid key starts with prefix
	}
	if err := ctx.Err(); err != nil {
		return s.opError(ctx, "list", prefix, err)
	}
	in := &awss3.ListObjectsV2Input{Bucket: &s.bucket}
	// MinIO refuses a prefix whose last component is "." or ".." (though
	// keys such as "..x" are fine): list the parent and filter here.
	listPrefix := prefix
	if base := prefix[strings.LastIndexByte(prefix, '/')+1:]; base == "." || base == ".." {
		listPrefix = prefix[:len(prefix)-len(base)]
	}
	if p := s.root + listPrefix; p != "" {
		in.Prefix = &p
	}
	pages := awss3.NewListObjectsV2Paginator(s.client, in)
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return s.opError(ctx, "list", prefix, err)
		}
		for _, obj := range page.Contents {
			key, ok := strings.CutPrefix(aws.ToString(obj.Key), s.root)
			if !ok || !strings.HasPrefix(key, prefix) || storage.ValidateKey(key) != nil {
				continue
			}
			if err := fn(storage.ObjectInfo{Key: key, Size: aws.ToInt64(obj.Size), ModTime: aws.ToTime(obj.LastModified), Version: etagVersion(obj.ETag)}); err != nil {
				return err
			}
			if err := ctx.Err(); err != nil {
				return s.opError(ctx, "list", prefix, err)
			}
		}
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
		return fmt.Errorf("s3: delete: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return s.opError(ctx, "delete", key, err)
	}
	_, err = s.client.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: &s.bucket, Key: &k})
	if err != nil && !isNotFound(err) {
		return s.opError(ctx, "delete", key, err)
	}
	return nil
}

// Close releases idle connections.
func (s *Storage) Close() error {
	s.transports.closeIdle()
	return nil
}

// transports records the HTTP transports the SDK builds, to close their
// idle connections.
type transports struct {
	mu  sync.Mutex
	trs []*http.Transport
}

func (t *transports) add(tr *http.Transport) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.trs = append(t.trs, tr)
}

func (t *transports) closeIdle() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, tr := range t.trs {
		tr.CloseIdleConnections()
	}
}

// opError returns the error of operation op on key: classified (see
// classify), naming the backend, the operation, the key and the bucket,
// and with any credential scrubbed from its text.
func (s *Storage) opError(ctx context.Context, op, key string, err error) error {
	return s.scrub(fmt.Errorf("s3: %s %s in bucket %s: %w", op, key, s.bucket, classify(ctx, err)))
}

// scrub guards against credentials in error texts: the SDK's messages do
// not hold them, but a server's might.
func (s *Storage) scrub(err error) error {
	return storage.ScrubSecrets(err, s.cfg.AccessKey, s.cfg.SecretKey)
}

// classify maps an SDK error to the storage package's errors: 404 to
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
	code := ""
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		code = apiErr.ErrorCode()
	}
	status := httpStatus(err)
	switch {
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
	case apiErr != nil || status != 0:
		return err // any other answer of the service is permanent
	case isNetworkError(err):
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

// httpStatus returns the HTTP status of an error response, or 0.
func httpStatus(err error) int {
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// bucketRegion returns the region a redirect response names, if any.
func bucketRegion(err error) string {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) && re.Response != nil && re.Response.Response != nil {
		return re.Response.Header.Get("X-Amz-Bucket-Region")
	}
	return ""
}

// isNotFound reports whether err is a 404 answer.
func isNotFound(err error) bool {
	var nk *types.NoSuchKey
	var nf *types.NotFound
	var nb *types.NoSuchBucket
	return errors.As(err, &nk) || errors.As(err, &nf) || errors.As(err, &nb) || httpStatus(err) == http.StatusNotFound
}
