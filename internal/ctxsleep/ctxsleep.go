// Package ctxsleep waits a while unless a context ends first: the one
// timer-and-select that pollers, retries and backoffs share.
package ctxsleep

import (
	"context"
	"time"
)

// Sleep waits d, or until ctx is done, and reports whether d passed
// (false: ctx is done; the caller returns the error it means). A d of
// zero or less does not wait.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
