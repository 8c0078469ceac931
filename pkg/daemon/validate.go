package daemon

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/backupd/backupd/pkg/dirfd"
	"github.com/backupd/backupd/pkg/exclude"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/retention"
	bsync "github.com/backupd/backupd/pkg/sync"
	pb "github.com/backupd/backupd/proto/backupd/v1"
	"golang.org/x/sys/unix"
)

// Request validation. Every check returns a fieldError naming the field
// (as in the proto), which the API reports as INVALID_ARGUMENT. Every
// string field is bounded, and a message quotes at most maxQuoted bytes
// of a request value (quote): no error or log line carries an unbounded
// value from a request.

const (
	maxName        = 128  // owner, workspace and request ids (repo.ValidateName)
	maxPath        = 4095 // PATH_MAX (4096) counts the terminating NUL
	maxSnapshotID  = 64   // a full id: 64 hex digits
	maxOperationID = 64   // "op-" and 24 hex digits today
	maxPageToken   = 1024 // a token is about 330 bytes at most
	maxPattern     = 4096
	maxInclude     = 4096
	maxIDMappings  = 340          // the lines the kernel allows in uid_map and gid_map
	maxTags        = repo.MaxTags // what a snapshot object may hold
	maxTagKey      = repo.MaxTagKeyLen
	maxTagValue    = repo.MaxTagValueLen
	maxPatterns    = 1024
	maxIncludes    = 1024
	maxKeepTags    = repo.MaxTags // a rule per tag a snapshot may hold
	maxPageSize    = 1000
	defaultPage    = 100
	minInterval    = 100 * time.Millisecond
	defaultWatch   = time.Second

	// maxQuoted is the most a message quotes of a request value.
	maxQuoted = 100
)

// quote quotes v as %q does, but at most maxQuoted bytes of quoted text:
// a longer value is cut and followed by its length, as "abc"… (N bytes).
func quote(v string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(v); {
		r, size := utf8.DecodeRuneInString(v[i:])
		var piece string
		if r == utf8.RuneError && size == 1 {
			piece = fmt.Sprintf(`\x%02x`, v[i])
		} else {
			q := strconv.Quote(v[i : i+size])
			piece = q[1 : len(q)-1]
		}
		if b.Len()-1+len(piece) > maxQuoted {
			return b.String() + `"… (` + strconv.Itoa(len(v)) + " bytes)"
		}
		b.WriteString(piece)
		i += size
	}
	b.WriteByte('"')
	return b.String()
}

// unquoted is err's message with v, which it may quote in full (as %q
// does), quoted by quote instead.
func unquoted(err error, v string) string {
	return strings.ReplaceAll(err.Error(), strconv.Quote(v), quote(v))
}

// checkLen bounds a string field; entry is "" or "entry N: " for an
// element of a repeated field.
func checkLen(field, entry, v string, max int) error {
	if len(v) > max {
		return invalidField(field, fmt.Errorf("%s%s is longer than %d bytes", entry, quote(v), max))
	}
	return nil
}

// checkID checks an owner, workspace or request id against the syntax of
// repo.ValidateName.
func checkID(field, v string, required bool) error {
	switch {
	case v == "" && !required:
		return nil
	case v == "":
		return invalidField(field, errors.New("required"))
	}
	if err := checkLen(field, "", v, maxName); err != nil {
		return err
	}
	if repo.ValidateName(field, v) != nil {
		return invalidField(field, fmt.Errorf("%s: want 1 to %d characters of [A-Za-z0-9._-] starting with a letter or digit", quote(v), maxName))
	}
	return nil
}

func checkOwnerWorkspace(owner, workspace string, workspaceRequired bool) error {
	if err := checkID("owner", owner, true); err != nil {
		return err
	}
	return checkID("workspace", workspace, workspaceRequired)
}

// checkPath bounds a path field before workspacePath looks at it.
func checkPath(v string) error { return checkLen("path", "", v, maxPath) }

// snapshotSyntax: a full id or a prefix of at least 4 hex digits.
var snapshotSyntax = regexp.MustCompile(`^[0-9a-f]{4,64}$`)

func checkSnapshotID(field, v string, latestOK, full bool) error {
	if err := checkLen(field, "", v, maxSnapshotID); err != nil {
		return err
	}
	switch {
	case latestOK && (v == "" || v == "latest"):
		return nil
	case full && len(v) != 64:
		return invalidField(field, fmt.Errorf("%s: want the full id, 64 hex digits", quote(v)))
	case !snapshotSyntax.MatchString(v):
		return invalidField(field, fmt.Errorf("%s: want a snapshot id or a prefix of at least 4 lower-case hex digits", quote(v)))
	}
	return nil
}

func checkTags(tags map[string]string) error {
	if len(tags) > maxTags {
		return invalidField("tags", fmt.Errorf("%d tags, at most %d", len(tags), maxTags))
	}
	for k, v := range tags {
		if k == "" || len(k) > maxTagKey || strings.ContainsAny(k, "=\x00") {
			return invalidField("tags", fmt.Errorf("key %s: want 1 to %d bytes without = or NUL", quote(k), maxTagKey))
		}
		if len(v) > maxTagValue {
			return invalidField("tags", fmt.Errorf("value of %s: %s is longer than %d bytes", quote(k), quote(v), maxTagValue))
		}
	}
	return nil
}

func checkExcludes(patterns []string) error { return checkPatterns("excludes", patterns) }

// checkPatterns checks the gitignore-syntax patterns of field.
func checkPatterns(field string, patterns []string) error {
	if len(patterns) > maxPatterns {
		return invalidField(field, fmt.Errorf("%d patterns, at most %d", len(patterns), maxPatterns))
	}
	for i, p := range patterns {
		entry := fmt.Sprintf("entry %d", i)
		if err := checkLen(field, entry+": ", p, maxPattern); err != nil {
			return err
		}
		if _, err := exclude.New(entry, []string{p}); err != nil {
			return invalidField(field, errors.New(unquoted(err, p)))
		}
	}
	return nil
}

// checkReady checks the ready_before_complete fields of a restore.
func checkReady(req *pb.RestoreWorkspaceRequest) error {
	if !req.GetReadyBeforeComplete() {
		if len(req.GetPriority()) > 0 {
			return invalidField("priority", errors.New("needs ready_before_complete"))
		}
		if len(req.GetLate()) > 0 {
			return invalidField("late", errors.New("needs ready_before_complete"))
		}
		if req.GetReadyMaxFileSize() != 0 {
			return invalidField("ready_max_file_size", errors.New("needs ready_before_complete"))
		}
		return nil
	}
	if req.GetOverwrite() {
		return invalidField("ready_before_complete", errors.New("not with overwrite"))
	}
	if n := req.GetReadyMaxFileSize(); n < 0 {
		return invalidField("ready_max_file_size", fmt.Errorf("%d is negative", n))
	}
	if err := checkPatterns("priority", req.GetPriority()); err != nil {
		return err
	}
	return checkPatterns("late", req.GetLate())
}

func checkIncludes(paths []string) error {
	if len(paths) > maxIncludes {
		return invalidField("includes", fmt.Errorf("%d paths, at most %d", len(paths), maxIncludes))
	}
	for i, p := range paths {
		entry := fmt.Sprintf("entry %d: ", i)
		if p == "" {
			return invalidField("includes", errors.New(entry+"an empty path"))
		}
		if err := checkLen("includes", entry, p, maxInclude); err != nil {
			return err
		}
		if _, err := bsync.CleanInclude(p); err != nil {
			return invalidField("includes", errors.New(entry+unquoted(err, p)))
		}
	}
	return nil
}

// retentionPolicy returns the policy a request asks for, or def when it
// gives none.
func retentionPolicy(p *pb.RetentionPolicy, def retention.Policy) (retention.Policy, error) {
	if p == nil {
		return def, nil
	}
	var out retention.Policy
	if p.GetKeepLast() < 0 {
		return out, invalidField("retention.keep_last", fmt.Errorf("%d: want 0 (no such rule) or more", p.GetKeepLast()))
	}
	out.KeepLast = int(p.GetKeepLast())
	if d := p.GetKeepWithin(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return out, invalidField("retention.keep_within", fmt.Errorf("want a duration of 0 (no such rule) or more"))
		}
		out.KeepWithin = retention.Duration(d.AsDuration())
	}
	if len(p.GetKeepTags()) > maxKeepTags {
		return out, invalidField("retention.keep_tags", fmt.Errorf("%d rules, at most %d", len(p.GetKeepTags()), maxKeepTags))
	}
	for _, t := range p.GetKeepTags() {
		if err := checkLen("retention.keep_tags", "rule ", t, maxTagKey+1+maxTagValue); err != nil {
			return out, err
		}
		out.KeepTags = append(out.KeepTags, t)
	}
	if err := out.Validate(); err != nil {
		return out, invalidField("retention", err)
	}
	return out, nil
}

func idMap(field string, ms []*pb.IdMapping) (bsync.IDMap, error) {
	if len(ms) > maxIDMappings {
		return nil, invalidField(field, fmt.Errorf("%d entries, at most %d", len(ms), maxIDMappings))
	}
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

// workspaceRoot is a directory workspaces live in, open for the daemon's
// whole life: every request's path is opened below it.
type workspaceRoot struct {
	path     string // as configured
	resolved string // with the links in path resolved at startup
	dir      *dirfd.Dir
}

// openRoots opens the configured workspace roots, which must exist. They
// are the operator's: links in their own paths are followed, once.
func openRoots(roots []string) ([]workspaceRoot, error) {
	var out []workspaceRoot
	for _, r := range roots {
		resolved, err := filepath.EvalSymlinks(r)
		if err != nil {
			closeRoots(out)
			return nil, fmt.Errorf("workspace_roots: %w", err)
		}
		d, err := dirfd.Open(resolved)
		if err != nil {
			closeRoots(out)
			if errors.Is(err, unix.ENOTDIR) {
				return nil, fmt.Errorf("workspace_roots: %s is not a directory", r)
			}
			return nil, fmt.Errorf("workspace_roots: %w", err)
		}
		out = append(out, workspaceRoot{path: r, resolved: resolved, dir: d})
	}
	return out, nil
}

func closeRoots(roots []workspaceRoot) {
	for _, r := range roots {
		r.dir.Close()
	}
}

// workspaceDir checks that p is a clean absolute path strictly inside one
// of roots and opens it below that root without following any link (a
// workspace's owner controls everything below a root). The check and the
// operation's use are this one open: the operation works in the directory
// opened here, whatever is renamed or swapped later. With create, missing
// directories on the way are created (mode 0700), for a restore.
func workspaceDir(roots []workspaceRoot, p string, create bool) (*dirfd.Dir, error) {
	if p == "" {
		return nil, invalidField("path", errors.New("required"))
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.ContainsRune(p, 0) {
		return nil, invalidField("path", fmt.Errorf("%s: want a clean absolute path", quote(p)))
	}
	var names []string
	for _, r := range roots {
		names = append(names, r.path)
		for _, prefix := range []string{r.path, r.resolved} {
			rel, ok := strings.CutPrefix(p, prefix+"/")
			if !ok {
				continue
			}
			var d *dirfd.Dir
			var err error
			if create {
				d, err = r.dir.MkdirAll(rel, 0o700)
			} else {
				d, err = r.dir.OpenDir(rel)
			}
			switch {
			case err == nil:
				return d, nil
			case errors.Is(err, dirfd.ErrLink):
				return nil, invalidField("path", fmt.Errorf("%s runs through a symbolic link (links below a workspace root are never followed)", quote(p)))
			case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
				return nil, invalidField("path", fmt.Errorf("%s is not an existing directory", quote(p)))
			default:
				return nil, invalidField("path", fmt.Errorf("%s: %w", quote(p), errors.Unwrap(err)))
			}
		}
	}
	return nil, invalidField("path", fmt.Errorf("%s is not inside a workspace root (%s)", quote(p), strings.Join(names, ", ")))
}
