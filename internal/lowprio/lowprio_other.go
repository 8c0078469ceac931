//go:build !linux

package lowprio

// lower does nothing where per-thread priorities are not supported.
func lower() (restore func() bool) { return func() bool { return true } }
