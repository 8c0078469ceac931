package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/backupd/backupd/pkg/exclude"
	"github.com/backupd/backupd/pkg/repo"
	bsync "github.com/backupd/backupd/pkg/sync"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// Request validation. Every check returns a fieldError naming the field
// (as in the proto), which the API reports as INVALID_ARGUMENT.

// checkID checks an owner, workspace or request id against the syntax of
// repo.ValidateName.
func checkID(field, v string, required bool) error {
	switch {
	case v == "" && !required:
		return nil
	case v == "":
		return invalidField(field, errors.New("required"))
	}
	if err := repo.ValidateName(field, v); err != nil {
		return invalidField(field, err)
	}
	return nil
}

func checkOwnerWorkspace(owner, workspace string, workspaceRequired bool) error {
	if err := checkID("owner", owner, true); err != nil {
		return err
	}
	return checkID("workspace", workspace, workspaceRequired)
}

// snapshotSyntax: a full id or a prefix of at least 4 hex digits.
var snapshotSyntax = regexp.MustCompile(`^[0-9a-f]{4,64}$`)

func checkSnapshotID(field, v string, latestOK, full bool) error {
	switch {
	case latestOK && (v == "" || v == "latest"):
		return nil
	case full && len(v) != 64:
		return invalidField(field, fmt.Errorf("%q: want the full id, 64 hex digits", v))
	case !snapshotSyntax.MatchString(v):
		return invalidField(field, fmt.Errorf("%q: want a snapshot id or a prefix of at least 4 lower-case hex digits", v))
	}
	return nil
}

const (
	maxTags      = 64
	maxTagKey    = 128
	maxTagValue  = 1024
	maxPatterns  = 1024
	maxIncludes  = 1024
	maxPageSize  = 1000
	defaultPage  = 100
	minInterval  = 100 * time.Millisecond
	defaultWatch = time.Second
)

func checkTags(tags map[string]string) error {
	if len(tags) > maxTags {
		return invalidField("tags", fmt.Errorf("%d tags, at most %d", len(tags), maxTags))
	}
	for k, v := range tags {
		if k == "" || len(k) > maxTagKey || strings.ContainsAny(k, "=\x00") {
			return invalidField("tags", fmt.Errorf("key %q: want 1 to %d bytes without = or NUL", k, maxTagKey))
		}
		if len(v) > maxTagValue {
			return invalidField("tags", fmt.Errorf("value of %q: longer than %d bytes", k, maxTagValue))
		}
	}
	return nil
}

func checkExcludes(patterns []string) error {
	if len(patterns) > maxPatterns {
		return invalidField("excludes", fmt.Errorf("%d patterns, at most %d", len(patterns), maxPatterns))
	}
	if _, err := exclude.New("excludes", patterns); err != nil {
		return invalidField("excludes", err)
	}
	return nil
}

func checkIncludes(paths []string) error {
	if len(paths) > maxIncludes {
		return invalidField("includes", fmt.Errorf("%d paths, at most %d", len(paths), maxIncludes))
	}
	for _, p := range paths {
		if p == "" {
			return invalidField("includes", errors.New("an empty path"))
		}
		if _, err := bsync.CleanInclude(p); err != nil {
			return invalidField("includes", err)
		}
	}
	return nil
}

func idMap(field string, ms []*pb.IdMapping) (bsync.IDMap, error) {
	var out bsync.IDMap
	for i, m := range ms {
		r := bsync.IDRange{Container: m.GetContainerId(), Host: m.GetHostId(), Count: m.GetCount()}
		if err := r.Validate(); err != nil {
			return nil, invalidField(field, fmt.Errorf("entry %d: %w", i, err))
		}
		out = append(out, r)
	}
	return out, nil
}

// workspacePath checks that p is a clean absolute path strictly inside
// one of roots (resolved, symlinks followed, at startup) and returns it.
// Symlinks in the part of p that exists are followed: a link out of the
// roots is refused.
func workspacePath(roots []string, p string) (string, error) {
	if p == "" {
		return "", invalidField("path", errors.New("required"))
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.ContainsRune(p, 0) {
		return "", invalidField("path", fmt.Errorf("%q: want a clean absolute path", p))
	}
	resolved, err := resolveExisting(p)
	if err != nil {
		return "", invalidField("path", err)
	}
	for _, r := range roots {
		if strings.HasPrefix(resolved, r+"/") {
			return resolved, nil
		}
	}
	return "", invalidField("path", fmt.Errorf("%q is not inside a workspace root (%s)", p, strings.Join(roots, ", ")))
}

// resolveExisting follows the symlinks of the longest existing prefix of
// p and appends the rest.
func resolveExisting(p string) (string, error) {
	rest := ""
	for cur := p; ; {
		r, err := filepath.EvalSymlinks(cur)
		if err == nil {
			return filepath.Join(r, rest), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return "", err
		}
		rest = filepath.Join(filepath.Base(cur), rest)
		cur = parent
	}
}

// resolveRoots resolves the configured workspace roots, which must exist.
func resolveRoots(roots []string) ([]string, error) {
	var out []string
	for _, r := range roots {
		fi, err := os.Stat(r)
		if err != nil {
			return nil, fmt.Errorf("workspace_roots: %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("workspace_roots: %s is not a directory", r)
		}
		abs, err := filepath.EvalSymlinks(r)
		if err != nil {
			return nil, fmt.Errorf("workspace_roots: %w", err)
		}
		out = append(out, abs)
	}
	return out, nil
}
