package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage/location"
)

// repoFlags are the flags every command shares.
type repoFlags struct {
	repo  string
	owner string
	json  bool
}

func (f *repoFlags) register(cmd *cobra.Command, ownerRequired bool) {
	cmd.Flags().StringVarP(&f.repo, "repo", "r", "", "storage root `URL` (default $BACKUPD_REPO, else a local repository under the user's data directory)")
	cmd.Flags().StringVar(&f.owner, "owner", "", "owner `ID` whose repository to use")
	if ownerRequired {
		_ = cmd.MarkFlagRequired("owner")
	}
}

func (f *repoFlags) registerJSON(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.json, "json", false, "print the result as JSON on stdout (and no progress bar)")
}

// location returns the storage root URL from the flags, the environment
// or the embedded default.
func (f *repoFlags) location() (string, error) {
	if f.repo != "" {
		return f.repo, nil
	}
	if u := location.FromEnv(); u != "" {
		return u, nil
	}
	return location.Default()
}

// openPlacement opens the storage root and the placement of owners in it.
func (f *repoFlags) openPlacement(ctx context.Context) (*placement.Placement, error) {
	u, err := f.location()
	if err != nil {
		return nil, err
	}
	st, err := location.Open(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("open repository %s: %w", location.Redact(u), err)
	}
	return placement.NewPrefixPerOwner(st), nil
}

// openOwner opens the owner's repository; with create a missing one is
// created (a first backup).
func (f *repoFlags) openOwner(ctx context.Context, create bool) (*repo.Repository, func(), error) {
	p, err := f.openPlacement(ctx)
	if err != nil {
		return nil, nil, err
	}
	st, err := p.Owner(ctx, f.owner, create)
	if err == nil {
		var r *repo.Repository
		if r, err = repo.Load(ctx, st, create); err == nil {
			return r, func() { p.Close() }, nil
		}
	}
	p.Close()
	return nil, nil, fmt.Errorf("owner %s: %w", f.owner, err)
}

// showProgress says whether to draw a progress bar: only for humans, that
// is when stdout and stderr are terminals and JSON was not asked for.
func (f *repoFlags) showProgress() bool {
	return !f.json && term.IsTerminal(int(os.Stdout.Fd())) && term.IsTerminal(int(os.Stderr.Fd()))
}
