package panics

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sync/errgroup"
)

func TestSafe(t *testing.T) {
	var g errgroup.Group
	g.Go(Safe(func() error {
		var s []int
		return errors.New(strings.Repeat("x", s[1])) // out of range: panics
	}))
	err := g.Wait()
	var pe *Error
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "out of range") || !strings.Contains(string(pe.Stack), "panics_test.go") {
		t.Fatalf("Wait = %v", err)
	}
	if err := Safe(func() error { return nil })(); err != nil {
		t.Fatal(err)
	}
}
