// Package location opens storage from a location: a URL such as
// file:///srv/backups, s3://bucket/prefix, minio://host:port/bucket,
// gs://bucket or azblob://container, plus the backend parameters of a
// Config (docs/STORAGE.md). It is the one place that knows which URL
// schemes exist and which backend serves each, and it puts the retry and
// connection-limit wrappers around every storage it opens.
package location

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/backupd/backupd/pkg/storage"
)

// EnvVar is the environment variable that names the location to use when
// none is given on the command line.
const EnvVar = "BACKUPD_REPO"

// Schemes returns the URL schemes that Open supports.
func Schemes() []string {
	return []string{"file", "s3", "minio", "gs", "azblob"}
}

// Open opens the storage root at rawURL with default parameters and
// credentials from the environment (see OpenRoot for a full Config).
// file:///abs/path (or a plain absolute path) opens a local directory,
// creating it if it is missing.
func Open(ctx context.Context, rawURL string) (storage.Storage, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("location: open %s: %w", Redact(rawURL), err)
	}
	return OpenRoot(ctx, Config{URL: rawURL}, true)
}

// LocalDir returns the directory a local location (an absolute path or a
// file:// URL) names; ok is false for every other location and for a
// malformed one.
func LocalDir(rawURL string) (dir string, ok bool) {
	dir, err := localPath(rawURL)
	return dir, err == nil
}

// localPath returns the directory that a file location names, or an error
// for anything else. Errors never quote rawURL, which may hold secrets.
func localPath(rawURL string) (string, error) {
	if rawURL == "" {
		return "", errors.New("empty location")
	}
	if filepath.IsAbs(rawURL) {
		return filepath.Clean(rawURL), nil
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // the url.Error itself quotes the whole URL
		}
		return "", fmt.Errorf("not a valid URL: %w", err)
	}
	switch u.Scheme {
	case "":
		return "", errors.New("relative path refused: give an absolute path or a file:///abs/path URL")
	case "file":
	default:
		return "", fmt.Errorf("unsupported scheme %q (supported: %s:// URLs and absolute paths)",
			u.Scheme, strings.Join(Schemes(), "://, "))
	}
	switch {
	case u.Opaque != "":
		return "", errors.New("relative file URL refused: use file:///abs/path")
	case u.User != nil:
		return "", errors.New("file URL must not contain a user")
	case u.Host != "" && u.Host != "localhost":
		return "", fmt.Errorf("file URL names host %q: only local paths are supported", u.Host)
	case u.RawQuery != "" || u.ForceQuery:
		return "", errors.New("file URL takes no query parameters")
	case u.Fragment != "":
		return "", errors.New("file URL takes no fragment (escape '#' in a path as %23)")
	}
	p := u.Path
	if runtime.GOOS == "windows" && len(p) >= 3 && p[0] == '/' && p[2] == ':' {
		p = p[1:] // file:///C:/dir
	}
	p = filepath.FromSlash(p)
	if !filepath.IsAbs(p) {
		return "", errors.New("file URL needs an absolute path, as in file:///abs/path")
	}
	return filepath.Clean(p), nil
}

// Default returns the location used when none is configured:
// file://$XDG_DATA_HOME/backupd/repository, where XDG_DATA_HOME defaults
// to ~/.local/share when it is unset or not absolute.
func Default() (string, error) {
	dataHome := os.Getenv("XDG_DATA_HOME")
	if !filepath.IsAbs(dataHome) { // unset, or relative, which XDG says to ignore
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("location: default: %w", err)
		}
		dataHome = filepath.Join(home, ".local", "share")
	}
	return fileURL(filepath.Join(dataHome, "backupd", "repository")), nil
}

// FromEnv returns the location named by the environment variable
// BACKUPD_REPO, or "" if it is unset.
func FromEnv() string {
	return os.Getenv(EnvVar)
}

// fileURL returns the file URL of an absolute path, escaped as needed.
func fileURL(path string) string {
	p := filepath.ToSlash(path)
	if !strings.HasPrefix(p, "/") {
		p = "/" + p // C:/dir
	}
	return (&url.URL{Scheme: "file", Path: p}).String()
}

// Redact returns rawURL fit for display: without user information
// (user names, passwords, access keys), and without query parameters
// whose names look secret (key, secret, password, token, sig, signature,
// credential and the like). A location that does not parse as a URL is
// cut down the same way by hand, erring on the side of removing too much.
func Redact(rawURL string) string {
	if filepath.IsAbs(rawURL) {
		return rawURL
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return redactUnparsed(rawURL)
	}
	u.User = nil
	if i := strings.LastIndexByte(u.Opaque, '@'); i >= 0 {
		u.Opaque = u.Opaque[i+1:] // scheme:user:pass@host
	}
	if u.RawQuery != "" {
		var kept []string
		for _, param := range strings.Split(u.RawQuery, "&") {
			name, _, _ := strings.Cut(param, "=")
			if n, err := url.QueryUnescape(name); err == nil {
				name = n
			}
			if !secretName(name) {
				kept = append(kept, param)
			}
		}
		u.RawQuery = strings.Join(kept, "&")
	}
	return u.String()
}

// redactUnparsed redacts a location that url.Parse refused: it drops
// everything after '?' or '#', and everything between "://" and the last
// '@'.
func redactUnparsed(s string) string {
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		s = s[:i]
	}
	if i := strings.Index(s, "://"); i >= 0 {
		if at := strings.LastIndexByte(s[i+3:], '@'); at >= 0 {
			s = s[:i+3] + s[i+3+at+1:]
		}
	} else if at := strings.LastIndexByte(s, '@'); at >= 0 {
		s = s[at+1:]
	}
	return s
}

// secretName reports whether a query parameter name looks like it holds a
// secret.
func secretName(name string) bool {
	name = strings.ToLower(name)
	for _, w := range []string{"key", "secret", "password", "passwd", "pwd", "token", "sig", "credential", "auth"} {
		if strings.Contains(name, w) {
			return true
		}
	}
	return false
}
