// Package exclude decides which paths of a workspace a backup leaves out,
// from patterns in gitignore syntax (https://git-scm.com/docs/gitignore):
//
//   - a blank line, or one starting with #, is no pattern; \# and \! escape;
//     trailing spaces are dropped unless escaped with \;
//   - ! negates: a path it matches is included again (but nothing below an
//     excluded directory is ever looked at, as in git);
//   - a trailing / matches directories only;
//   - a pattern with a / at its start or in its middle is anchored at the
//     workspace root; one without matches a name at any depth;
//   - * and ? match within one path component, [a-z] and [!a-z] are
//     classes; ** matches across components: "**/x" anywhere, "x/**"
//     everything inside x, "a/**/b" zero or more directories between;
//   - the last pattern that matches a path decides.
//
// Patterns are relative to the workspace root, which is the only place an
// exclude file (ExcludeFile) is read from: a nested one is not special.
package exclude

import (
	"fmt"
	"path"
	"regexp"
	"strings"
)

// ExcludeFile is the name of the optional exclude file at a workspace's
// root, one gitignore-syntax pattern per line. It is backed up itself.
const ExcludeFile = ".backupdignore"

// Matcher holds compiled patterns; a nil *Matcher excludes nothing. It is
// safe for concurrent use.
type Matcher struct {
	rules []rule
}

type rule struct {
	negate  bool
	dirOnly bool
	// One of: a glob on the base name (not anchored), a glob on the whole
	// relative path (anchored), or a regexp (patterns with **).
	base, full string
	re         *regexp.Regexp
}

// New compiles patterns; source names where they came from in errors
// ("--exclude", ".backupdignore"). Lines that hold no pattern are skipped.
func New(source string, patterns []string) (*Matcher, error) {
	m := &Matcher{}
	if err := m.Add(source, patterns); err != nil {
		return nil, err
	}
	return m, nil
}

// Add compiles more patterns, which come after (and so win over) those
// already added.
func (m *Matcher) Add(source string, patterns []string) error {
	for i, p := range patterns {
		r, ok, err := compile(p)
		if err != nil {
			if len(patterns) > 1 {
				return fmt.Errorf("%s line %d: pattern %q: %w", source, i+1, p, err)
			}
			return fmt.Errorf("%s: pattern %q: %w", source, p, err)
		}
		if ok {
			m.rules = append(m.rules, r)
		}
	}
	return nil
}

// Empty reports whether m excludes nothing.
func (m *Matcher) Empty() bool { return m == nil || len(m.rules) == 0 }

// Excluded reports whether the entry at rel (slash-separated, relative to
// the workspace root, no leading slash) is left out.
func (m *Matcher) Excluded(rel string, isDir bool) bool {
	if m == nil {
		return false
	}
	base := rel[strings.LastIndexByte(rel, '/')+1:]
	for i := len(m.rules) - 1; i >= 0; i-- {
		r := &m.rules[i]
		if r.dirOnly && !isDir {
			continue
		}
		var hit bool
		switch {
		case r.re != nil:
			hit = r.re.MatchString(rel)
		case r.base != "":
			hit, _ = path.Match(r.base, base)
		default:
			hit, _ = path.Match(r.full, rel)
		}
		if hit {
			return !r.negate
		}
	}
	return false
}

// compile turns one gitignore line into a rule; ok is false for a line
// with no pattern.
func compile(line string) (r rule, ok bool, err error) {
	if strings.ContainsRune(line, 0) {
		return r, false, fmt.Errorf("NUL in pattern")
	}
	line = strings.TrimSuffix(line, "\r")
	line = trimTrailingSpaces(line)
	if line == "" || line[0] == '#' {
		return r, false, nil
	}
	if line[0] == '!' {
		r.negate = true
		line = line[1:]
	} else if strings.HasPrefix(line, `\!`) || strings.HasPrefix(line, `\#`) {
		line = line[1:]
	}
	if strings.HasSuffix(line, "/") {
		r.dirOnly = true
		line = strings.TrimRight(line, "/")
	}
	if line == "" {
		return r, false, fmt.Errorf("empty pattern")
	}
	anchored := strings.Contains(line, "/")
	line = strings.TrimPrefix(line, "/")
	glob := strings.ReplaceAll(line, "[!", "[^")
	switch {
	case strings.Contains(line, "**"):
		if !anchored {
			glob = "**/" + glob
		}
		src, err := toRegexp(glob)
		if err != nil {
			return r, false, err
		}
		r.re, err = regexp.Compile(src)
		if err != nil {
			return r, false, err
		}
	case anchored:
		r.full = glob
	default:
		r.base = glob
	}
	if _, err := path.Match(glob, ""); err != nil {
		return r, false, fmt.Errorf("malformed pattern")
	}
	return r, true, nil
}

// trimTrailingSpaces drops trailing spaces that are not escaped.
func trimTrailingSpaces(s string) string {
	for strings.HasSuffix(s, " ") && !strings.HasSuffix(s, `\ `) {
		s = s[:len(s)-1]
	}
	return s
}

// toRegexp translates a glob with ** into an anchored regular expression.
func toRegexp(glob string) (string, error) {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(glob); i++ {
		c := glob[i]
		switch {
		case strings.HasPrefix(glob[i:], "**/"):
			b.WriteString("(?:.*/)?")
			i += 2
		case strings.HasPrefix(glob[i:], "**") && i+2 == len(glob):
			b.WriteString(".*")
			i++
		case c == '*':
			b.WriteString("[^/]*")
		case c == '?':
			b.WriteString("[^/]")
		case c == '\\':
			if i+1 == len(glob) {
				return "", fmt.Errorf("trailing backslash")
			}
			i++
			b.WriteString(regexp.QuoteMeta(glob[i : i+1]))
		case c == '[':
			end := strings.IndexByte(glob[i+1:], ']')
			if end < 0 {
				return "", fmt.Errorf("unclosed [")
			}
			if end == 0 || (end == 1 && glob[i+1] == '^') { // "[]...]" or "[^]...]"
				if next := strings.IndexByte(glob[i+end+2:], ']'); next >= 0 {
					end += next + 1
				}
			}
			class := glob[i+1 : i+1+end]
			b.WriteString("[")
			if strings.HasPrefix(class, "^") {
				b.WriteString("^")
				class = class[1:]
			}
			b.WriteString(strings.ReplaceAll(strings.ReplaceAll(class, `\`, `\\`), "[", `\[`))
			b.WriteString("]")
			i += end + 1
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	return b.String(), nil
}
