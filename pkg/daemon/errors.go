package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	bsync "github.com/backupd/backupd/pkg/sync"
)

// fieldError is a request field that failed validation.
type fieldError struct {
	field string
	err   error
}

func (e *fieldError) Error() string { return fmt.Sprintf("%s: %v", e.field, e.err) }
func (e *fieldError) Unwrap() error { return e.err }

func invalidField(field string, err error) error { return &fieldError{field, err} }

// notFoundError is a missing operation or snapshot named by a request.
type notFoundError struct{ msg string }

func (e *notFoundError) Error() string { return e.msg }

// grpcCode is the one place errors map to gRPC codes.
func grpcCode(err error) codes.Code {
	var (
		fe *fieldError
		nf *notFoundError
		qt *queueTimeoutError
		ce *conflictError
	)
	switch {
	case err == nil:
		return codes.OK
	case errors.As(err, &fe):
		return codes.InvalidArgument
	case errors.As(err, new(*cancelledError)), errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.As(err, &nf), errors.Is(err, repo.ErrSnapshotNotFound), errors.Is(err, repo.ErrNoRepository):
		return codes.NotFound
	case errors.Is(err, storage.ErrPermission):
		// The storage refused the daemon's credentials or an operation
		// (HTTP 401, 403): the backends name the bucket in the message.
		return codes.PermissionDenied
	case errors.Is(err, storage.ErrNoBucket):
		// The bucket went away under the daemon (a missing owner's
		// bucket is ErrNoRepository).
		return codes.NotFound
	case errors.As(err, &qt):
		return codes.ResourceExhausted
	case errors.As(err, &ce), errors.Is(err, bsync.ErrTargetNotEmpty):
		return codes.FailedPrecondition
	case errors.Is(err, repo.ErrPruneRunning), errors.Is(err, repo.ErrPruneFenced), errors.Is(err, repo.ErrSessionFenced):
		// Another node's prune holds the repository, or took it over, or
		// fenced this backup: a retry later may succeed.
		return codes.Aborted
	case errors.Is(err, repo.ErrNoConditionalWrites):
		return codes.FailedPrecondition
	case errors.Is(err, repo.ErrTooLarge):
		// A snapshot beyond the limits of a restore (an expansion or depth
		// bomb): no retry helps until it is deleted.
		return codes.FailedPrecondition
	case errors.Is(err, errDraining), storage.IsTransient(err):
		return codes.Unavailable
	case errors.Is(err, repo.ErrCorrupt):
		return codes.DataLoss
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return codes.ResourceExhausted
	case errors.Is(err, os.ErrPermission):
		return codes.PermissionDenied
	case errors.Is(err, os.ErrNotExist):
		return codes.NotFound
	}
	return codes.Internal
}

// maxMessage bounds an error message the daemon returns or logs: request
// values are quoted short where they are checked (quote), but an error
// from below (a pattern in a workspace's .backupdignore, a path deep in a
// workspace) may still carry a long value.
const maxMessage = 8 << 10

// truncate cuts s to at most maxMessage bytes, at a character boundary,
// saying how long it was.
func truncate(s string) string {
	if len(s) <= maxMessage {
		return s
	}
	cut := maxMessage
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + fmt.Sprintf("… (%d bytes)", len(s))
}

// toStatus turns an error into the status a handler returns; a field
// error carries a BadRequest detail naming the field.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	st := status.New(grpcCode(err), truncate(err.Error()))
	var fe *fieldError
	if errors.As(err, &fe) {
		if d, derr := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: fe.field, Description: truncate(fe.err.Error())},
		}}); derr == nil {
			st = d
		}
	}
	return st.Err()
}
