// Package azure is a storage.Storage in an Azure Blob Storage container
// (github.com/Azure/azure-sdk-for-go/sdk/storage/azblob). The object at key
// K is the block blob PREFIX/K.
//
// Put sends an object of up to Config.BlockSize bytes in one Put Blob
// request, and a larger one as blocks of BlockSize, Concurrency at a time,
// committed by one Put Block List at the end: until then the blob keeps its
// previous content, so a failed or cancelled Put leaves no trace in the
// container. Azure has no call to abort an upload; the uncommitted blocks
// are invisible to Get, Stat and List and the service discards them (at the
// next commit of that blob, or after a week).
//
// PutIfAbsent is Put with If-None-Match: * on the request that commits
// the blob (Put Blob, or Put Block List for one of blocks): the service
// refuses it with 409 BlobAlreadyExists (or 412) if a committed blob has
// the name, which is storage.ErrExists. Its size is not limited.
//
// An object's Version is its ETag, without quotes (Get Blob Properties and
// Get Blob quote it, the listing does not): the service makes a new one
// on every commit, also of identical bytes. PutIfMatch is Put with
// If-Match: "ETag" on the request that commits the blob; 412
// ConditionNotMet is storage.ErrVersionMismatch (and storage.ErrNotFound
// if the blob is then found missing: Azurite answers 412 either way, a
// 404 says so itself). Its size is not limited, as PutIfAbsent's is not;
// should a concurrent upload of the key discard its staged blocks, that
// upload changed the ETag, which makes it a mismatch. It needs the rights
// Put needs.
//
// CleanUploads deletes the blobs that have only uncommitted blocks (a Put
// of blocks whose writer died before the commit): it lists the container
// with uncommitted blobs included, takes those of no length whose last
// modification is before the given time, confirms that each has no
// committed content (Get Blob Properties finds none) and deletes it on
// condition that it was not modified since the time listed, so that a
// blob committed meanwhile stays (that time has a resolution of a second,
// so only blobs at least a second older than the listing qualify; the
// service's clock decides). Uncommitted blocks of a blob that has a
// committed version (a failed overwrite) are not listed and cannot be
// removed without rewriting the blob; the service discards them at the
// blob's next commit, or after a week. Checked against Azurite; on
// Azure a listing of uncommitted blobs that reports a length, or a delete
// that does not find them, leaves them to the service's weekly expiry,
// never deleting more.
//
// Azure silently drops a trailing dot from every segment of a blob name
// ("a./b." is stored as "a/b"), so such a segment is stored with a '%'
// appended ("a.%/b.%"), as is a segment that already ends in '%'; List
// undoes this. The names of backupd's own objects never need it.
//
// The SDK's own retries are off (policy.RetryOptions.MaxRetries = -1): one
// try per request, so that the retry wrapper (pkg/storage/retry) is the one
// retry policy. Server errors (5xx, including ServerBusy and
// OperationTimedOut), 408, 429 and network failures are marked
// storage.Transient.
package azure

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"golang.org/x/sync/errgroup"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/internal/errkind"
	"github.com/backupd/backupd/pkg/storage/internal/etag"
)

// Azure's limits on blob names.
const (
	maxNameLength = 1024 // characters; we count bytes, which is stricter
	maxSegments   = 254  // slash-separated segments
)

// Storage is a storage.Storage in an Azure Blob container. It is safe for
// concurrent use.
type Storage struct {
	// uploadGrace: CleanUploads leaves uploads younger than this
	// (storage.UploadGrace; tests lower it).
	uploadGrace time.Duration
	c           *container.Client
	container   string
	prefix      string // encoded, with a trailing slash; "" for none
	blockSize   int64
	concurrency int
	// listPageSize, if not 0, bounds a List page below the service's 5000
	// (tests use it to make listings span pages).
	listPageSize int32
	// cleanMinAge is how much older than the listing (by the service's
	// clock) an uncommitted blob must be for CleanUploads to delete it;
	// see CleanUploads. Tests lower it instead of waiting.
	cleanMinAge time.Duration
	// beforeCleanDelete, if set, is called by CleanUploads between making
	// sure a blob has no committed content and deleting it (tests commit
	// the blob there).
	beforeCleanDelete func(name string)
}

var _ storage.Storage = (*Storage)(nil)

// New opens the container of cfg. With cfg.CreateContainer it creates the
// container, private, if it is missing, and refuses an existing one that
// allows public access; otherwise the container must exist. New lists at
// most one blob to check that the container exists and can be read.
func New(ctx context.Context, cfg Config) (*Storage, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	cr, err := cfg.resolveCredentials()
	if err != nil {
		return nil, fmt.Errorf("azure: open container %s: %w", cfg.Container, err)
	}
	c, err := newContainerClient(cr, cfg.Container)
	if err != nil {
		return nil, fmt.Errorf("azure: open container %s: %w", cfg.Container, err)
	}
	s := &Storage{
		uploadGrace: storage.UploadGrace,
		c:           c,
		container:   cfg.Container,
		blockSize:   cfg.BlockSize,
		concurrency: cfg.Concurrency,
		cleanMinAge: time.Second,
	}
	if cfg.Prefix != "" {
		s.prefix = encodeName(cfg.Prefix) + "/"
	}
	if cfg.CreateContainer {
		if err := s.createContainer(ctx); err != nil {
			return nil, fmt.Errorf("azure: create container %s: %w", cfg.Container, err)
		}
	}
	one := int32(1)
	pager := c.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{Prefix: &s.prefix, MaxResults: &one})
	if _, err := pager.NextPage(ctx); err != nil {
		return nil, openError(cfg.Container, cr, mapErr(err))
	}
	return s, nil
}

// openError explains why a container could not be opened, in one line
// that says what to do.
func openError(name string, cr credentials, err error) error {
	var se *ServiceError
	if !errors.As(err, &se) {
		return fmt.Errorf("azure: open container %s: %w", name, err)
	}
	switch {
	case se.Code == string(bloberror.ContainerNotFound):
		return &noContainerError{name}
	case se.StatusCode == http.StatusNotFound:
		return errkind.Errorf([]error{storage.ErrNotFound}, "azure: open container %s: endpoint %s answers HTTP 404 %s: it names no storage account (an emulator's endpoint ends in the account, as http://127.0.0.1:10000/devstoreaccount1)",
			name, cr.endpoint, se.Code)
	case se.StatusCode == http.StatusForbidden && (se.Code == "AuthenticationFailed" || se.Code == "AuthorizationFailure"):
		return errkind.Errorf([]error{storage.ErrPermission}, "azure: open container %s: the service refused the credentials of %s (HTTP 403 %s): check the account name and key (with the default Azure credential: its role on the container)",
			name, cr.source, se.Code)
	}
	return fmt.Errorf("azure: open container %s: %w", name, err)
}

// noContainerError is a container that does not exist; it is
// storage.ErrNoBucket and storage.ErrNotFound.
type noContainerError struct{ name string }

func (e *noContainerError) Error() string {
	return "azure: container " + e.name + " does not exist: create it, or set createcontainer: true in the azure section for the first backup to create it"
}

// Is makes the error storage.ErrNoBucket and storage.ErrNotFound.
func (e *noContainerError) Is(target error) bool {
	return target == storage.ErrNoBucket || target == storage.ErrNotFound
}

// newContainerClient builds the SDK client for one container.
func newContainerClient(cr credentials, name string) (*container.Client, error) {
	opts := &container.ClientOptions{}
	opts.Retry = policy.RetryOptions{MaxRetries: -1}
	opts.Telemetry.ApplicationID = "backupd"
	u := cr.endpoint + "/" + name
	switch {
	case cr.accountKey != "":
		cred, err := container.NewSharedKeyCredential(cr.accountName, cr.accountKey)
		if err != nil {
			return nil, fmt.Errorf("%s: invalid shared key", cr.source)
		}
		return container.NewClientWithSharedKeyCredential(u, cred, opts)
	case cr.sas != "":
		return container.NewClientWithNoCredential(u+"?"+cr.sas, opts)
	default:
		cred, err := azidentity.NewDefaultAzureCredential(nil)
		if err != nil {
			return nil, fmt.Errorf("default Azure credential: %s", condense(err.Error()))
		}
		return container.NewClient(u, tokenCredential{cred}, opts)
	}
}

// tokenCredential is the default Azure credential with errors of one
// line: when nothing in the environment configures it, that no
// credential was found and where New looked (not the SDK's report of
// every credential it tried); otherwise the SDK's report, condensed.
type tokenCredential struct{ cred azcore.TokenCredential }

// GetToken gets a token from the default Azure credential.
func (t tokenCredential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	tok, err := t.cred.GetToken(ctx, opts)
	switch {
	case err == nil, ctx.Err() != nil:
		return tok, err
	case !defaultCredentialConfigured():
		return tok, errNoCredentials
	}
	return tok, fmt.Errorf("the default Azure credential got no token: %s", condense(err.Error()))
}

// condense puts the SDK's multi-line error reports on one line, without
// their rulers.
func condense(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.Trim(l, "-") == "" || strings.HasPrefix(l, "To troubleshoot") {
			continue
		}
		parts = append(parts, l)
	}
	return strings.Join(parts, "; ")
}

// createContainer creates the container without public access, or checks
// that the existing one has none.
func (s *Storage) createContainer(ctx context.Context) error {
	_, err := s.c.Create(ctx, nil) // no Access: private
	if err == nil {
		return nil
	}
	if !bloberror.HasCode(err, bloberror.ContainerAlreadyExists) {
		return mapErr(err)
	}
	props, err := s.c.GetProperties(ctx, nil)
	if err != nil {
		return mapErr(err)
	}
	if props.BlobPublicAccess != nil && *props.BlobPublicAccess != "" {
		return fmt.Errorf("the existing container allows public access (%s); refusing to store backups in it", *props.BlobPublicAccess)
	}
	return nil
}

// Close releases nothing: the HTTP connections are shared by the SDK.
func (s *Storage) Close() error { return nil }

// blobName maps a key to its blob name, refusing keys that are invalid or
// that Azure cannot name.
func (s *Storage) blobName(key string) (string, error) {
	if err := storage.ValidateKey(key); err != nil {
		return "", err
	}
	name := s.prefix + encodeName(key)
	if len(name) > maxNameLength {
		return "", fmt.Errorf("%w: %q: blob name longer than %d bytes with the prefix", storage.ErrInvalidKey, key, maxNameLength)
	}
	if strings.Count(name, "/")+1 > maxSegments {
		return "", fmt.Errorf("%w: %q: more than %d path segments with the prefix", storage.ErrInvalidKey, key, maxSegments)
	}
	return name, nil
}

// encodeName encodes every segment of a valid key so that none ends in a
// dot: a segment ending in '.' or '%' gets a '%' appended.
func encodeName(key string) string {
	if !strings.Contains(key, ".") && !strings.Contains(key, "%") {
		return key // the common case
	}
	segs := strings.Split(key, "/")
	for i, seg := range segs {
		segs[i] = encodeSegment(seg)
	}
	return strings.Join(segs, "/")
}

func encodeSegment(seg string) string {
	if strings.HasSuffix(seg, ".") || strings.HasSuffix(seg, "%") {
		return seg + "%"
	}
	return seg
}

// encodePrefix encodes a listing prefix: its complete segments like a
// key's, its last, partial one as it is (an encoded segment starts with
// the segment).
func encodePrefix(prefix string) string {
	i := strings.LastIndexByte(prefix, '/')
	if i < 0 {
		return prefix
	}
	return encodeName(prefix[:i]) + prefix[i:]
}

// decodeName reverses encodeName. It reports false for a name that
// encodeName cannot produce (written by something else).
func decodeName(name string) (string, bool) {
	if !strings.Contains(name, ".") && !strings.Contains(name, "%") {
		return name, true
	}
	segs := strings.Split(name, "/")
	for i, seg := range segs {
		if t, ok := strings.CutSuffix(seg, "%"); ok && (strings.HasSuffix(t, ".") || strings.HasSuffix(t, "%")) {
			segs[i] = t
		} else if encodeSegment(seg) != seg {
			return "", false
		}
	}
	return strings.Join(segs, "/"), true
}

// Put stores size bytes of body under key.
func (s *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	name, err := s.blobName(key)
	if err != nil {
		return fmt.Errorf("azure: put: %w", err)
	}
	if size < 0 {
		return fmt.Errorf("azure: put %s: negative size %d", key, size)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("azure: put %s: %w", key, err)
	}
	if _, err := s.put(ctx, name, body, size, nil); err != nil {
		if errors.Is(err, errBlocksDiscarded) {
			err = storage.Transient(err)
		}
		return fmt.Errorf("azure: put %s: %w", key, err)
	}
	return nil
}

// PutIfAbsent stores size bytes of body under key if no object is there,
// committing the blob with If-None-Match: *. An object at key is
// storage.ErrExists.
func (s *Storage) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	name, err := s.blobName(key)
	if err != nil {
		return fmt.Errorf("azure: put-if-absent: %w", err)
	}
	if size < 0 {
		return fmt.Errorf("azure: put-if-absent %s: negative size %d", key, size)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("azure: put-if-absent %s: %w", key, err)
	}
	etagAny := azcore.ETagAny
	cond := &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: &etagAny}}
	_, err = s.put(ctx, name, body, size, cond)
	if size <= s.blockSize && ctx.Err() == nil && bloberror.HasCode(err, bloberror.BlobAlreadyExists) {
		// Azurite (unlike Azure) refuses a create-only Put Blob when the
		// name holds only uncommitted blocks, such as those an interrupted
		// upload leaves; its Put Block List judges by the committed blob
		// alone, as Azure does. When nothing is committed, commit the body
		// as one block instead.
		if _, perr := s.c.NewBlobClient(name).GetProperties(ctx, nil); errors.Is(mapErr(perr), storage.ErrNotFound) {
			_, err = s.putBlocks(ctx, s.c.NewBlockBlobClient(name), body, size, cond)
		}
	}
	switch {
	case errors.Is(err, errBlocksDiscarded):
		// Another upload of the key committed first; it took the key if
		// the blob is still there.
		if _, perr := s.c.NewBlobClient(name).GetProperties(ctx, nil); perr == nil {
			err = fmt.Errorf("%w: %w", storage.ErrExists, err)
		} else {
			err = storage.Transient(err)
		}
	case ctx.Err() == nil && (bloberror.HasCode(err, bloberror.BlobAlreadyExists, bloberror.ConditionNotMet) ||
		isStatus(err, http.StatusPreconditionFailed)):
		err = fmt.Errorf("%w: %w", storage.ErrExists, err)
	}
	if err != nil {
		return fmt.Errorf("azure: put-if-absent %s: %w", key, err)
	}
	return nil
}

// PutIfMatch stores size bytes of body under key if the blob has Version
// version (its ETag), committing it with If-Match, and returns the new
// Version.
func (s *Storage) PutIfMatch(ctx context.Context, key string, body io.ReadSeeker, size int64, version string) (string, error) {
	name, err := s.blobName(key)
	if err != nil {
		return "", fmt.Errorf("azure: put-if-match: %w", err)
	}
	if size < 0 {
		return "", fmt.Errorf("azure: put-if-match %s: negative size %d", key, size)
	}
	if !etag.Valid(version) {
		return "", fmt.Errorf("azure: put-if-match %s: %w: %q is no ETag", key, storage.ErrVersionMismatch, version)
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("azure: put-if-match %s: %w", key, err)
	}
	ifMatch := azcore.ETag(etag.Header(version))
	cond := &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfMatch: &ifMatch}}
	newTag, err := s.put(ctx, name, body, size, cond)
	if err == nil {
		return etagVersion(&newTag), nil
	}
	switch {
	case ctx.Err() != nil:
	case errors.Is(err, errBlocksDiscarded), bloberror.HasCode(err, bloberror.ConditionNotMet), isStatus(err, http.StatusPreconditionFailed):
		// Refused, or the blocks were discarded by another upload that
		// committed first: the blob is at another version, if any.
		props, perr := s.c.NewBlobClient(name).GetProperties(ctx, nil)
		switch {
		case isStatus(perr, http.StatusNotFound):
			err = fmt.Errorf("%w: %w: %w", storage.ErrVersionMismatch, storage.ErrNotFound, err)
		case perr == nil && etagVersion(props.ETag) == version && errors.Is(err, errBlocksDiscarded):
			err = storage.Transient(err) // still ours to replace: a retry decides
		default:
			err = fmt.Errorf("%w: %w", storage.ErrVersionMismatch, err)
		}
	case errors.Is(err, storage.ErrNotFound):
		err = fmt.Errorf("%w: %w", storage.ErrVersionMismatch, err)
	}
	return "", fmt.Errorf("azure: put-if-match %s: %w", key, err)
}

// etagVersion returns the Version of an ETag of the SDK ("" for none).
func etagVersion(tag *azcore.ETag) string {
	if tag == nil {
		return ""
	}
	return etag.Version(string(*tag))
}

// isStatus reports whether err is a service answer of that HTTP status.
func isStatus(err error, status int) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode == status
}

// errBlocksDiscarded is put's error when another upload of the same key
// committed while it staged blocks, which discards them: the caller
// decides what that means for its write.
var errBlocksDiscarded = errors.New("blocks discarded by a concurrent upload of the same key")

// put uploads the blob name, committing it under the conditions cond
// (nil for none), and returns the ETag of what it committed.
func (s *Storage) put(ctx context.Context, name string, body io.ReadSeeker, size int64, cond *blob.AccessConditions) (azcore.ETag, error) {
	bb := s.c.NewBlockBlobClient(name)
	if size <= s.blockSize {
		return s.putSingle(ctx, bb, body, size, cond)
	}
	return s.putBlocks(ctx, bb, body, size, cond)
}

// putSingle uploads the object in one Put Blob request.
func (s *Storage) putSingle(ctx context.Context, bb *blockblob.Client, body io.ReadSeeker, size int64, cond *blob.AccessConditions) (azcore.ETag, error) {
	b := newExactBody(body, size)
	resp, err := bb.Upload(ctx, b, &blockblob.UploadOptions{AccessConditions: cond})
	if berr := b.finish(); berr != nil && err != nil {
		return "", berr
	}
	if err != nil {
		return "", mapErr(err)
	}
	return deref(resp.ETag), nil
}

// putBlocks stages the object in blocks, Concurrency at a time, and
// commits them. A body of a type whose ReadAt is known to agree with its
// Read after Seek(0) (see readerAt) is read in place by the uploads; any
// other is read in order into at most Concurrency+1 buffers of BlockSize.
func (s *Storage) putBlocks(ctx context.Context, bb *blockblob.Client, body io.ReadSeeker, size int64, cond *blob.AccessConditions) (azcore.ETag, error) {
	n := (size + s.blockSize - 1) / s.blockSize
	if n > blockblob.MaxBlocks {
		return "", fmt.Errorf("%d bytes need %d blocks of blocksize %d; Azure allows %d", size, n, s.blockSize, blockblob.MaxBlocks)
	}
	var rnd [16]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", err
	}
	idPrefix := hex.EncodeToString(rnd[:])
	ids := make([]string, n)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.concurrency)
	ra := readerAt(body)
	var free chan []byte // buffers not in use, when body is not an io.ReaderAt
	allocated := 0
	if ra == nil {
		free = make(chan []byte, s.concurrency+1)
		if _, err := body.Seek(0, io.SeekStart); err != nil {
			return "", fmt.Errorf("body: %w", err)
		}
	}
	var bodyErr error
	for i := range n {
		off := i * s.blockSize
		length := min(s.blockSize, size-off)
		// The same length for every ID, as Azure requires.
		ids[i] = base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "%s-%06d", idPrefix, i))
		var part *exactBody
		var buf []byte
		if ra != nil {
			part = newExactBody(io.NewSectionReader(ra, off, length), length)
		} else {
			select {
			case buf = <-free:
			default:
				if allocated <= s.concurrency {
					buf = make([]byte, s.blockSize)
					allocated++
				} else {
					select {
					case buf = <-free:
					case <-gctx.Done():
					}
				}
			}
			if buf == nil {
				break // an upload failed
			}
			if _, err := io.ReadFull(body, buf[:length]); err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					err = errShortBody
				}
				bodyErr = fmt.Errorf("body: %w", err)
				break
			}
			part = newExactBody(bytes.NewReader(buf[:length]), length)
		}
		if gctx.Err() != nil {
			break
		}
		id := ids[i]
		g.Go(func() error {
			_, err := bb.StageBlock(gctx, id, part, nil)
			berr := part.finish()
			if buf != nil {
				free <- buf
			}
			if berr != nil && err != nil {
				return berr
			}
			return mapErr(err)
		})
	}
	if bodyErr != nil {
		cancel()
	}
	err := g.Wait()
	switch {
	case bodyErr != nil:
		return "", bodyErr
	case ctx.Err() != nil:
		return "", ctx.Err()
	case err != nil:
		return "", err
	}
	resp, err := bb.CommitBlockList(ctx, ids, &blockblob.CommitBlockListOptions{AccessConditions: cond})
	if bloberror.HasCode(err, bloberror.InvalidBlockList) {
		// Another Put of the same key committed meanwhile, which discards
		// the blocks we staged: a plain Put succeeds on a new try.
		return "", fmt.Errorf("%w: %w", errBlocksDiscarded, mapErr(err))
	}
	if err != nil {
		return "", mapErr(err)
	}
	return deref(resp.ETag), nil
}

// readerAt returns body as an io.ReaderAt if it is of a type whose ReadAt
// reads the same bytes as Read after Seek(0), else nil. Arbitrary types
// are not trusted to be consistent: an upload of the wrong bytes would only
// show at restore.
func readerAt(body io.ReadSeeker) io.ReaderAt {
	switch b := body.(type) {
	case *os.File:
		return b
	case *bytes.Reader:
		return b
	case *strings.Reader:
		return b
	case *io.SectionReader:
		return b
	}
	return nil
}

// errShortBody reports a body that ended before size bytes.
var errShortBody = errors.New("body is shorter than the size given")

// exactBody is the request body of one upload: exactly n bytes of r. It
// fails rather than come up short, remembers a failure of r so that Put
// reports it as the body's fault rather than the network's, and after
// finish never touches r again (the HTTP transport may still read a body
// after the request returned; the caller owns it by then).
type exactBody struct {
	mu     sync.Mutex
	r      io.ReadSeeker
	n      int64
	pos    int64
	synced bool  // r is at pos
	err    error // failure of r since the last Seek
	first  error // first failure of r, for finish
	done   bool
}

func newExactBody(r io.ReadSeeker, n int64) *exactBody { return &exactBody{r: r, n: n} }

func (b *exactBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.done:
		return 0, errors.New("azure: body read after the upload ended")
	case b.err != nil:
		return 0, b.err
	case b.pos >= b.n:
		return 0, io.EOF
	}
	if !b.synced {
		if _, err := b.r.Seek(b.pos, io.SeekStart); err != nil {
			b.fail(fmt.Errorf("body: %w", err))
			return 0, b.err
		}
		b.synced = true
	}
	if int64(len(p)) > b.n-b.pos {
		p = p[:b.n-b.pos]
	}
	k, err := b.r.Read(p)
	b.pos += int64(k)
	switch {
	case err == nil || (errors.Is(err, io.EOF) && b.pos == b.n):
		return k, nil
	case errors.Is(err, io.EOF):
		b.fail(fmt.Errorf("body: %w", errShortBody))
	default:
		b.fail(fmt.Errorf("body: %w", err))
	}
	return k, b.err
}

// Seek moves within the n bytes; r is moved lazily, at the next Read.
func (b *exactBody) Seek(offset int64, whence int) (int64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var pos int64
	switch whence {
	case io.SeekStart:
		pos = offset
	case io.SeekCurrent:
		pos = b.pos + offset
	case io.SeekEnd:
		pos = b.n + offset
	default:
		return b.pos, errors.New("azure: body: bad whence")
	}
	if pos < 0 || pos > b.n {
		return b.pos, fmt.Errorf("azure: body: seek to %d outside 0..%d", pos, b.n)
	}
	if pos != b.pos || !b.synced {
		b.pos, b.synced = pos, false
	}
	b.err = nil // a retry reads again
	return pos, nil
}

func (b *exactBody) fail(err error) {
	b.err = err
	if b.first == nil {
		b.first = err
	}
}

// Close does nothing: the caller owns the body.
func (b *exactBody) Close() error { return nil }

// finish ends the body's use and returns the failure of the body, if any.
func (b *exactBody) finish() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done = true
	return b.first
}

// Get opens the byte range [offset, offset+length) of the object at key.
func (s *Storage) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	name, err := s.blobName(key)
	if err != nil {
		return nil, fmt.Errorf("azure: get: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("azure: get %s: %w", key, err)
	}
	if offset < 0 {
		return nil, fmt.Errorf("azure: get %s: offset %d: %w", key, offset, storage.ErrInvalidRange)
	}
	bc := s.c.NewBlobClient(name)
	if length == 0 {
		// HTTP cannot ask for zero bytes; check the object and the offset.
		if err := s.checkOffset(ctx, bc, key, offset); err != nil {
			return nil, err
		}
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	resp, err := bc.DownloadStream(ctx, &blob.DownloadStreamOptions{
		Range: blob.HTTPRange{Offset: offset, Count: max(length, 0)}, // Count 0: to the end
	})
	var re *azcore.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusRequestedRangeNotSatisfiable {
		// offset >= size: an empty read at the end, else invalid.
		if err := s.checkOffset(ctx, bc, key, offset); err != nil {
			return nil, err
		}
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	if err != nil {
		return nil, fmt.Errorf("azure: get %s: %w", key, mapErr(err))
	}
	return resp.Body, nil
}

// GetWithInfo opens the whole object at key with one Get Blob, whose reply
// describes the bytes it carries.
func (s *Storage) GetWithInfo(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	name, err := s.blobName(key)
	if err != nil {
		return nil, storage.ObjectInfo{}, fmt.Errorf("azure: get: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, storage.ObjectInfo{}, fmt.Errorf("azure: get %s: %w", key, err)
	}
	resp, err := s.c.NewBlobClient(name).DownloadStream(ctx, nil)
	if err != nil {
		return nil, storage.ObjectInfo{}, fmt.Errorf("azure: get %s: %w", key, mapErr(err))
	}
	oi := storage.ObjectInfo{Key: key, Size: deref(resp.ContentLength), ModTime: deref(resp.LastModified), Version: etagVersion(resp.ETag)}
	if resp.ContentLength == nil || oi.Size < 0 || oi.Version == "" {
		resp.Body.Close()
		return nil, storage.ObjectInfo{}, fmt.Errorf("azure: get %s: the reply gives no length or ETag", key)
	}
	return resp.Body, oi, nil
}

// checkOffset checks that the object exists and offset is not past its end.
func (s *Storage) checkOffset(ctx context.Context, bc *blob.Client, key string, offset int64) error {
	props, err := bc.GetProperties(ctx, nil)
	if err != nil {
		return fmt.Errorf("azure: get %s: %w", key, mapErr(err))
	}
	if size := deref(props.ContentLength); offset > size {
		return fmt.Errorf("azure: get %s: offset %d of %d bytes: %w", key, offset, size, storage.ErrInvalidRange)
	}
	return nil
}

// Stat describes the object at key.
func (s *Storage) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	name, err := s.blobName(key)
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("azure: stat: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("azure: stat %s: %w", key, err)
	}
	props, err := s.c.NewBlobClient(name).GetProperties(ctx, nil)
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("azure: stat %s: %w", key, mapErr(err))
	}
	return storage.ObjectInfo{Key: key, Size: deref(props.ContentLength), ModTime: deref(props.LastModified), Version: etagVersion(props.ETag)}, nil
}

// List calls fn for every object whose key starts with prefix, a page of
// up to 5000 blobs at a time.
func (s *Storage) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("azure: list %q: %w", prefix, err)
	}
	if prefix != "" && storage.ValidateKey(prefix) != nil && storage.ValidateKey(prefix+"x") != nil {
		return nil // no valid key starts with prefix
	}
	p := s.prefix + encodePrefix(prefix)
	opts := &container.ListBlobsFlatOptions{Prefix: &p}
	if s.listPageSize > 0 {
		opts.MaxResults = &s.listPageSize
	}
	pager := s.c.NewListBlobsFlatPager(opts)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("azure: list %q: %w", prefix, mapErr(err))
		}
		for _, item := range page.Segment.BlobItems {
			if item.Name == nil || !strings.HasPrefix(*item.Name, s.prefix) {
				continue
			}
			key, ok := decodeName(strings.TrimPrefix(*item.Name, s.prefix))
			if !ok || !strings.HasPrefix(key, prefix) || storage.ValidateKey(key) != nil {
				continue // not an object of ours
			}
			oi := storage.ObjectInfo{Key: key}
			if item.Properties != nil {
				oi.Size = deref(item.Properties.ContentLength)
				oi.ModTime = deref(item.Properties.LastModified)
				oi.Version = etagVersion(item.Properties.ETag)
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("azure: list %q: %w", prefix, err)
			}
			if err := fn(oi); err != nil {
				return err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("azure: list %q: %w", prefix, err)
	}
	return nil
}

// Delete removes the object at key; a missing object is not an error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	name, err := s.blobName(key)
	if err != nil {
		return fmt.Errorf("azure: delete: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("azure: delete %s: %w", key, err)
	}
	include := blob.DeleteSnapshotsOptionTypeInclude
	_, err = s.c.NewBlobClient(name).Delete(ctx, &blob.DeleteOptions{DeleteSnapshots: &include})
	if err = mapErr(err); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("azure: delete %s: %w", key, err)
	}
	return nil
}

// CleanUploads deletes the blobs under prefix that have only uncommitted
// blocks, last modified before before (see the package comment), and
// returns how many it deleted.
//
// The delete is conditional on the blob being unmodified since the time
// the listing gave; as that has a resolution of one second, a blob is
// taken only if the listing is at least a second younger (by the
// service's clock, from the response's Date), so that a commit after the
// listing always makes the condition fail.
func (s *Storage) CleanUploads(ctx context.Context, prefix string, before time.Time) (int, error) {
	if lim := time.Now().Add(-s.uploadGrace); before.After(lim) {
		before = lim // age is all there is to go by: leave what may be live
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("azure: clean uploads %q: %w", prefix, err)
	}
	if prefix != "" && storage.ValidateKey(prefix) != nil && storage.ValidateKey(prefix+"x") != nil {
		return 0, nil // no valid key starts with prefix
	}
	p := s.prefix + encodePrefix(prefix)
	opts := &container.ListBlobsFlatOptions{Prefix: &p, Include: container.ListBlobsInclude{UncommittedBlobs: true}}
	if s.listPageSize > 0 {
		opts.MaxResults = &s.listPageSize
	}
	removed := 0
	pager := s.c.NewListBlobsFlatPager(opts)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return removed, fmt.Errorf("azure: clean uploads %q: %w", prefix, mapErr(err))
		}
		if page.Date == nil || page.Segment == nil {
			continue // without the service's time, nothing is safe to delete
		}
		for _, item := range page.Segment.BlobItems {
			if err := ctx.Err(); err != nil {
				return removed, fmt.Errorf("azure: clean uploads %q: %w", prefix, err)
			}
			if item.Name == nil || !strings.HasPrefix(*item.Name, s.prefix) || item.Properties == nil ||
				item.Properties.LastModified == nil || deref(item.Properties.ContentLength) != 0 ||
				!item.Properties.LastModified.Before(before) ||
				page.Date.Before(item.Properties.LastModified.Add(s.cleanMinAge)) {
				continue
			}
			key, ok := decodeName(strings.TrimPrefix(*item.Name, s.prefix))
			if !ok || !strings.HasPrefix(key, prefix) || storage.ValidateKey(key) != nil {
				continue // not an object of ours
			}
			ok, err := s.deleteUncommitted(ctx, *item.Name, *item.Properties.LastModified)
			if err != nil {
				return removed, fmt.Errorf("azure: clean uploads %q: %s: %w", prefix, key, err)
			}
			if ok {
				removed++
			}
		}
	}
	return removed, nil
}

// deleteUncommitted deletes the blob name if it has no committed content
// and was not modified after lastModified, reporting whether it did.
func (s *Storage) deleteUncommitted(ctx context.Context, name string, lastModified time.Time) (bool, error) {
	bc := s.c.NewBlobClient(name)
	_, err := bc.GetProperties(ctx, nil)
	if err == nil {
		return false, nil // a committed (empty) object
	}
	if !isStatus(err, http.StatusNotFound) {
		return false, mapErr(err)
	}
	if s.beforeCleanDelete != nil {
		s.beforeCleanDelete(name)
	}
	_, err = bc.Delete(ctx, &blob.DeleteOptions{AccessConditions: &blob.AccessConditions{
		ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfUnmodifiedSince: &lastModified},
	}})
	switch {
	case err == nil:
		return true, nil
	case isStatus(err, http.StatusNotFound), isStatus(err, http.StatusPreconditionFailed):
		return false, nil // gone, or committed meanwhile
	}
	return false, mapErr(err)
}

// ServiceError is an error response of the blob service, reduced to what
// is safe to show: the status, Azure's error code and the request ID. Its
// Unwrap gives the SDK's *azcore.ResponseError.
type ServiceError struct {
	StatusCode int
	Code       string
	RequestID  string
	err        *azcore.ResponseError
}

func (e *ServiceError) Error() string {
	msg := fmt.Sprintf("HTTP %d", e.StatusCode)
	if e.Code != "" {
		msg += " " + e.Code
	}
	if e.RequestID != "" {
		msg += " (request " + e.RequestID + ")"
	}
	return msg
}

func (e *ServiceError) Unwrap() error { return e.err }

// mapErr turns an SDK error into one for Storage's callers: 404 wraps
// storage.ErrNotFound, 401 and 403 storage.ErrPermission, 408, 429 and 5xx
// and network failures are storage.Transient. Context errors pass through.
// The result never holds a credential: service errors are reduced to a
// ServiceError, and URLs lose their query (which may hold a SAS token).
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			return redactURLError(ue)
		}
		return err
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		se := &ServiceError{StatusCode: re.StatusCode, Code: re.ErrorCode, err: re}
		if re.RawResponse != nil {
			se.RequestID = re.RawResponse.Header.Get("x-ms-request-id")
		}
		switch {
		case re.StatusCode == http.StatusNotFound:
			return fmt.Errorf("%w: %w", se, storage.ErrNotFound)
		case re.StatusCode == http.StatusForbidden, re.StatusCode == http.StatusUnauthorized:
			return fmt.Errorf("%w: %w", se, storage.ErrPermission)
		case re.StatusCode >= 500, re.StatusCode == http.StatusRequestTimeout, re.StatusCode == http.StatusTooManyRequests,
			re.ErrorCode == string(bloberror.ContainerBeingDeleted):
			return storage.Transient(se)
		}
		return se
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = redactURLError(ue)
	}
	var verifyErr *tls.CertificateVerificationError
	var authErr x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalidErr x509.CertificateInvalidError
	var netErr net.Error
	switch {
	case errors.As(err, &verifyErr), errors.As(err, &authErr), errors.As(err, &hostErr), errors.As(err, &invalidErr):
		return err // a TLS set-up problem: retrying will not help
	case errors.As(err, &netErr), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return storage.Transient(err)
	}
	return err
}

// redactURLError returns a copy of e whose URL has no query or userinfo.
func redactURLError(e *url.Error) *url.Error {
	c := *e
	if u, err := url.Parse(e.URL); err == nil {
		u.RawQuery, u.User, u.Fragment = "", nil, ""
		c.URL = u.String()
	} else {
		c.URL = "(unparsable URL)"
	}
	return &c
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
