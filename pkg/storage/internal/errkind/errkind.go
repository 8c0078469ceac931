// Package errkind makes errors that match a storage sentinel
// (storage.ErrNoBucket, storage.ErrPermission, ...) under errors.Is
// without the sentinel's own text appended to their message: for errors
// that already say it in words of their own.
package errkind

import "fmt"

// Errorf formats an error (with %w wrapping as fmt.Errorf does) that is
// also each of kinds.
func Errorf(kinds []error, format string, args ...any) error {
	return &kindError{err: fmt.Errorf(format, args...), kinds: kinds}
}

type kindError struct {
	err   error
	kinds []error
}

func (e *kindError) Error() string { return e.err.Error() }

// Unwrap returns the formatted error and the kinds.
func (e *kindError) Unwrap() []error { return append([]error{e.err}, e.kinds...) }
