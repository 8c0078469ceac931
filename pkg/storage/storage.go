// Package storage defines the one small interface through which backupd
// reads and writes objects, whatever holds them: a local directory, memory,
// S3, MinIO, Google Cloud Storage or Azure Blob.
//
// A Storage is dumb on purpose: it knows keys and bytes, never owners,
// workspaces, snapshots or archive formats. Everything above it (pkg/repo,
// pkg/sync) relies only on the guarantees written down here, and every
// backend proves them by running the shared conformance suite in
// pkg/storage/storagetest.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// Sentinel errors. Backends wrap them with context (the key, the backend),
// so callers test with errors.Is.
var (
	// ErrNotFound means the object does not exist.
	ErrNotFound = errors.New("object not found")
	// ErrInvalidKey means a key breaks the rules of ValidateKey.
	ErrInvalidKey = errors.New("invalid object key")
	// ErrInvalidRange means a Get asked for an offset beyond the object's end
	// or a negative offset.
	ErrInvalidRange = errors.New("invalid byte range")
	// ErrPermission means the backend refused the call for lack of rights
	// (HTTP 403 and the like). It is permanent: retrying will not help.
	ErrPermission = errors.New("permission denied")
	// ErrNoBucket means the bucket (or container) the Storage works in
	// does not exist: it was not created or was deleted. It is permanent.
	ErrNoBucket = errors.New("bucket does not exist")
	// ErrExists means a PutIfAbsent found an object at its key and stored
	// nothing. It is permanent: retrying will not help.
	ErrExists = errors.New("object already exists")
	// ErrVersionMismatch means a PutIfMatch found the object at another
	// version than the one it was given, or no object at all (then the
	// error wraps ErrNotFound too), and stored nothing. It is permanent:
	// retrying will not help; the caller reads the object again.
	ErrVersionMismatch = errors.New("object version does not match")
)

// UploadGrace is how old an upload must be before a backend that cannot
// tell a live upload from a dead one (object stores: by age alone) takes
// it for dead in CleanUploads: far longer than a pack's upload takes even
// under a tight bandwidth limit, and than clock skew with the service.
const UploadGrace = time.Hour

// ErrTransient marks failures worth retrying: server errors (5xx),
// throttling, connection resets, timeouts. Backends wrap such errors with
// Transient; test with IsTransient.
var ErrTransient = errors.New("transient storage error")

// Transient marks err as transient (nil stays nil).
func Transient(err error) error {
	if err == nil {
		return nil
	}
	return transientError{err}
}

// IsTransient reports whether err was marked transient.
func IsTransient(err error) bool { return errors.Is(err, ErrTransient) }

type transientError struct{ err error }

func (e transientError) Error() string        { return e.err.Error() }
func (e transientError) Unwrap() error        { return e.err }
func (e transientError) Is(target error) bool { return target == ErrTransient }

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	// Key is the object's full key, relative to the Storage.
	Key string
	// Size is the object's length in bytes.
	Size int64
	// ModTime is when the object was last written, as the backend reports
	// it; it may be zero where a backend does not know.
	ModTime time.Time
	// Version identifies the object's content, for PutIfMatch. It is
	// opaque, meaningful only to the Storage that gave it, never empty
	// for an object, and the same from Stat, List and GetWithInfo. It
	// changes whenever the content changes: within one key's life (also
	// across deletes and re-creations) a Version is never that of two
	// different contents. Replacing an object with identical bytes may
	// keep it: where it is derived from the content (S3 and MinIO: the
	// ETag, the MD5 of what a single request stored) the same bytes give
	// the same Version; everywhere else every replacement makes a new one.
	// Each backend documents what it is.
	Version string
}

// Storage stores immutable-by-convention objects under string keys.
//
// Guarantees every implementation gives (and storagetest checks):
//
//   - Put is atomic and idempotent. After Put returns nil, Get returns
//     exactly the bytes written; a reader never sees a partially written
//     object. When Put fails or its context is cancelled, the key holds
//     either its previous complete content, nothing, or (if the failure came
//     after the backend committed the write) the new complete content; never
//     a mix. Putting the same bytes under the same key twice is harmless, so
//     a retried upload is safe. Putting different bytes replaces the object.
//   - Put's body starts at position 0 and holds at least size bytes; Put
//     reads exactly size bytes from it and may Seek it back to 0 and read it
//     again (a retry). The caller keeps ownership of the body; Put does not
//     close it.
//   - After Put returns nil the object is durable as far as the backend
//     can promise (fsync for local disks, a completed upload for object
//     stores), and visible to Get, Stat and List. Delete is durable in the
//     same sense once it returns.
//   - Get(key, offset, length) returns the bytes [offset, offset+length) of
//     the object; length < 0 means "to the end". A range that runs past the
//     end is cut short at the end. offset < 0 or offset > size fails with
//     ErrInvalidRange. The caller closes the reader, and must finish
//     reading before cancelling ctx: the reader may fail once ctx is done.
//   - List calls fn once for every object whose key starts with prefix, in
//     no guaranteed order; an error returned by fn stops the listing and is
//     returned. fn may call the same Storage. Objects put or deleted during
//     a listing may or may not show.
//   - Delete of a missing key returns nil.
//   - A missing object is ErrNotFound (wrapped) from Get and Stat.
//   - Every method honours ctx: when it is cancelled the call returns
//     promptly with an error that wraps ctx.Err() or describes it.
//   - PutIfAbsent is a create-only Put: atomically, of any number of
//     concurrent PutIfAbsent calls for one key exactly one succeeds; the
//     others fail with an error wrapping ErrExists and store nothing, and
//     the object keeps the winner's bytes. A PutIfAbsent over an object
//     already there fails likewise, whoever put it. It has Put's rules for
//     the body, atomicity and durability, and is never carried out as a
//     plain Put: a backend that cannot make a write conditional refuses it.
//     It is meant for small objects (a repository's config, lock and state
//     objects); a backend may refuse one larger than it can send in a
//     single request, with an error that is neither ErrExists nor
//     transient, and then stores nothing (each backend documents its
//     limit). After an ambiguous failure (the reply was lost: a timeout, a
//     reset connection) the write may have happened, so a retry may see
//     ErrExists for its own write; a caller that needs to know who won
//     reads the object back and compares.
//   - PutIfMatch is a compare-and-swap: it replaces the object with Put's
//     rules for the body, atomicity and durability only if the object's
//     Version is still the version given, and returns the new Version.
//     Atomically with respect to every other write of the key (Put,
//     PutIfAbsent, PutIfMatch, Delete): of any number of concurrent
//     PutIfMatch calls with one version exactly one succeeds (on a backend
//     whose Versions come from the content, a winner that stores the very
//     bytes already there changes nothing, so a second one may succeed
//     too: write bytes that never repeat, such as a counter, where that
//     matters); the others fail with an error wrapping ErrVersionMismatch
//     and store nothing. A missing object fails likewise, the error then
//     wrapping ErrNotFound too (where the service does not say which, the
//     backend asks it after the refusal). A version the storage cannot
//     have given (empty, or malformed for the backend) matches nothing:
//     the call fails with ErrVersionMismatch without sending anything. It
//     is never carried out as a plain Put, and has PutIfAbsent's limits:
//     for small objects, a backend may refuse sizes above its
//     single-request limit (an error neither ErrVersionMismatch nor
//     transient; nothing stored). After an ambiguous failure (a lost
//     reply) the write may have happened, so a retry may see
//     ErrVersionMismatch for its own write: a caller that must know reads
//     the object back (ReadVersioned) and compares its bytes.
//   - GetWithInfo opens a whole object and describes the bytes its reader
//     returns: their size and Version are those of the content read,
//     whatever concurrent writers do, from the one request that reads
//     them. It has Get's rules for the reader and ctx.
//   - CleanUploads removes what dead uploads under prefix left behind
//     (temporary files, incomplete multipart uploads) that were started
//     (or, where that is all a backend knows, last written) before before,
//     and returns how many it removed. It never touches a
//     complete object, nor an upload that is still running: a backend that
//     can tell a live upload from a dead one (the local backend: by a lock
//     that dies with its process) checks; one that cannot (object stores)
//     goes by age alone and never removes an upload begun less than
//     UploadGrace ago, so that before may be the caller's own start time
//     whatever the backend. What a backend cannot list, it leaves to the
//     service's own expiry and documents so.
//   - All methods are safe for concurrent use; none may be called after
//     Close. A wrapper owns the Storage it wraps and closes it too
//     (retry, limit, faults, metered, bandwidth); only a view of part of
//     a Storage (prefix) leaves it open for its other users.
//   - Errors never contain credentials.
//
// Keys are checked with ValidateKey; a backend may refuse further keys it
// cannot represent (the local backend: components over 255 bytes, and names
// starting with ".tmp-", which it uses for uploads in progress).
type Storage interface {
	// Put stores size bytes read from body under key.
	Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error
	// Get opens the byte range [offset, offset+length) of the object at key;
	// length < 0 reads to the end.
	Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)
	// Stat describes the object at key.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List calls fn for every object whose key starts with prefix.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// Delete removes the object at key; a missing object is not an error.
	Delete(ctx context.Context, key string) error
	// PutIfAbsent stores size bytes read from body under key only if no
	// object is there: atomically, exactly one of any number of concurrent
	// PutIfAbsent calls for a key succeeds; the others fail with an error
	// wrapping ErrExists, and the object keeps the winner's bytes. Same
	// body rules, atomicity and durability as Put. A backend may refuse
	// sizes above its single-request limit, but never degrades to a Put.
	// After an ambiguous failure, a retry may see ErrExists for its own
	// write: a caller that needs to know reads the object back.
	PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error
	// PutIfMatch stores size bytes read from body under key only if the
	// object there has Version version, and returns the Version of what
	// it stored: atomically, exactly one of concurrent PutIfMatch calls
	// with one version succeeds; the others fail with an error wrapping
	// ErrVersionMismatch (and ErrNotFound if there is no object). Same
	// body rules, atomicity and durability as Put, and PutIfAbsent's size
	// limits; never degrades to a Put. After an ambiguous failure, a
	// retry may see ErrVersionMismatch for its own write: a caller that
	// needs to know reads the object back.
	//
	// The new Version is returned because asking for it afterwards is a
	// trap: a Stat after the write may describe a later writer's object
	// (a fence), and taking that for one's own would let the next
	// PutIfMatch overwrite it. It may be "" only from a service that does
	// not report it (then the next PutIfMatch fails safely).
	PutIfMatch(ctx context.Context, key string, body io.ReadSeeker, size int64, version string) (string, error)
	// GetWithInfo opens the whole object at key and returns, with the
	// reader, the ObjectInfo of the bytes it reads (from the same request),
	// so that a reader knows the Version of what it read.
	GetWithInfo(ctx context.Context, key string) (io.ReadCloser, ObjectInfo, error)
	// CleanUploads removes what uploads under prefix that are no longer in
	// progress left behind (temporary files, incomplete multipart uploads),
	// considering only those started before before; it never disturbs an
	// upload that is still running (a backend that goes by age alone
	// leaves uploads younger than UploadGrace, whatever before says). It
	// returns how many it removed.
	CleanUploads(ctx context.Context, prefix string, before time.Time) (int, error)
	// Close releases the backend's resources.
	Close() error
}

// ValidateKey reports whether key is usable with every backend: non-empty,
// valid UTF-8, at most 1024 bytes, slash-separated components that are neither empty,
// "." nor "..", no leading or trailing slash, no backslash and no control
// characters. The error wraps ErrInvalidKey.
func ValidateKey(key string) error {
	if key == "" || len(key) > 1024 {
		return fmt.Errorf("%w: %q: length must be 1 to 1024 bytes", ErrInvalidKey, key)
	}
	if !utf8.ValidString(key) {
		return fmt.Errorf("%w: %q: not valid UTF-8", ErrInvalidKey, key)
	}
	for _, r := range key {
		if r < 0x20 || r == 0x7f || r == '\\' {
			return fmt.Errorf("%w: %q: control character or backslash", ErrInvalidKey, key)
		}
	}
	for _, part := range strings.Split(key, "/") {
		if part == "" || part == "." || part == ".." {
			return fmt.Errorf("%w: %q: empty, \".\" or \"..\" component", ErrInvalidKey, key)
		}
	}
	return nil
}

// ReadAll reads a whole object into memory. It is meant for small objects
// (configs, indexes, snapshots, ranges of packs).
func ReadAll(ctx context.Context, s Storage, key string, offset, length int64) ([]byte, error) {
	rc, err := s.Get(ctx, key, offset, length)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var buf []byte
	if length > 0 {
		// Trust a caller's length only so far: a damaged index must not be
		// able to make us allocate gigabytes before reading a byte.
		buf = make([]byte, 0, min(length, 64<<20))
	}
	w := bytesWriter{buf: buf}
	if _, err := io.Copy(&w, rc); err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	return w.buf, nil
}

// ReadVersioned reads the whole object at key, of at most maxSize bytes,
// and returns it with its ObjectInfo, whose Version is that of the bytes
// returned: the one round trip of GetWithInfo. It is how a caller reads a
// small state object that it may then replace with PutIfMatch.
//
// Why not Stat, then Get: that is safe only in that order (a Version
// older than the bytes makes the next PutIfMatch fail; Get, then Stat,
// would pair old bytes with a newer Version, and a PutIfMatch built on
// them would silently undo the write in between), it costs two round
// trips, and under contention it fails writes that need not fail.
// GetWithInfo takes the bytes and their Version from one reply.
//
// An object larger than maxSize is refused unread; one whose reader ends
// before the size its info gives fails with io.ErrUnexpectedEOF.
func ReadVersioned(ctx context.Context, s Storage, key string, maxSize int64) ([]byte, ObjectInfo, error) {
	rc, oi, err := s.GetWithInfo(ctx, key)
	if err != nil {
		return nil, ObjectInfo{}, err
	}
	defer rc.Close()
	if oi.Size < 0 || oi.Size > maxSize {
		return nil, ObjectInfo{}, fmt.Errorf("read %s: %d bytes, more than the %d allowed", key, oi.Size, maxSize)
	}
	buf := make([]byte, oi.Size+1) // one more, to see a longer reader
	n, err := io.ReadFull(rc, buf)
	ended := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
	switch {
	case err == nil:
		return nil, ObjectInfo{}, fmt.Errorf("read %s: the object is longer than the %d bytes its info gives", key, oi.Size)
	case ended && int64(n) == oi.Size:
	case ended:
		return nil, ObjectInfo{}, fmt.Errorf("read %s: %d of %d bytes: %w", key, n, oi.Size, io.ErrUnexpectedEOF)
	default:
		return nil, ObjectInfo{}, fmt.Errorf("read %s: %w", key, err)
	}
	return buf[:n], oi, nil
}

type bytesWriter struct{ buf []byte }

func (w *bytesWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	return len(p), nil
}

// ScrubSecrets returns err with every occurrence of each secret in its
// text replaced by "REDACTED"; errors.Is and errors.As still see the
// original. Secrets shorter than 4 bytes are ignored (they would match by
// chance). Backends use it on every error, as a guard: an SDK's own
// messages hold no credentials, but a server's might.
func ScrubSecrets(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	var keep []string
	for _, s := range secrets {
		if len(s) >= 4 {
			keep = append(keep, s)
		}
	}
	if len(keep) == 0 {
		return err
	}
	return &scrubbedError{err: err, secrets: keep}
}

type scrubbedError struct {
	err     error
	secrets []string
}

func (e *scrubbedError) Error() string {
	msg := e.err.Error()
	for _, s := range e.secrets {
		msg = strings.ReplaceAll(msg, s, "REDACTED")
	}
	return msg
}

func (e *scrubbedError) Unwrap() error { return e.err }
