package storage

import "context"

// contentSHA256Key is the context key of WithContentSHA256.
type contentSHA256Key struct{}

// WithContentSHA256 returns a copy of ctx carrying sum, the SHA-256 of
// the body of the Put, PutIfAbsent or PutIfMatch it is passed to: the
// caller's word, given where the digest is known anyway (a pack's or an
// index object's id is the SHA-256 of its bytes). Derive it for one call;
// it says nothing of any other body.
//
// A backend whose protocol sends a digest of the payload may send this
// one instead of reading the body once more to compute it: s3 sends it as
// the signed x-amz-content-sha256 of a single-request upload over plain
// HTTP, where the SDK would otherwise hash every byte before sending it.
// The service still checks the bytes it receives against it, so a wrong
// sum fails the write (as a permanent error) and never stores other
// bytes; a backend that does not use it ignores it. Wrappers pass ctx on
// unchanged, so they must not change a body's bytes.
func WithContentSHA256(ctx context.Context, sum [32]byte) context.Context {
	return context.WithValue(ctx, contentSHA256Key{}, sum)
}

// ContentSHA256 returns the digest WithContentSHA256 put in ctx, if any.
func ContentSHA256(ctx context.Context) ([32]byte, bool) {
	sum, ok := ctx.Value(contentSHA256Key{}).([32]byte)
	return sum, ok
}
