// Package panics turns a panic in a goroutine of a pipeline into an error
// of that pipeline. The daemon runs many owners' operations in one
// process: a bug that one crafted object reaches (a panic in a decoder,
// say) must fail that operation, not kill the process and every other
// owner's operations with it. A panic in a goroutine cannot be recovered
// by its parent, so every goroutine a pipeline starts recovers its own.
package panics

import (
	"fmt"
	"runtime/debug"
)

// Error is a recovered panic, with the stack of the goroutine it happened
// in.
type Error struct {
	Value any
	Stack []byte
}

func (e *Error) Error() string { return fmt.Sprintf("internal error: panic: %v", e.Value) }

// Recover, deferred, turns a panic into *Error in *err.
func Recover(err *error) {
	if p := recover(); p != nil {
		*err = &Error{Value: p, Stack: debug.Stack()}
	}
}

// Safe returns f, recovering a panic into an *Error: for errgroup.Go and
// the like.
func Safe(f func() error) func() error {
	return func() (err error) {
		defer Recover(&err)
		return f()
	}
}
