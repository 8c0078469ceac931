package docs

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/backupd/backupd/internal/configyaml"
	"github.com/backupd/backupd/pkg/storage/location"
)

// section is a part of STORAGE.md under one heading, with its text and
// the examples marked to run (```sh test).
type section struct {
	heading string
	text    string
	scripts []string
}

// readStorageDoc splits STORAGE.md at its ## and ### headings.
func readStorageDoc(t *testing.T) []*section {
	t.Helper()
	b, err := os.ReadFile("STORAGE.md")
	if err != nil {
		t.Fatal(err)
	}
	var out []*section
	cur := &section{}
	var block *strings.Builder
	inFence := false
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case block != nil && line == "```":
			cur.scripts = append(cur.scripts, block.String())
			block = nil
			inFence = false
		case block != nil:
			block.WriteString(line + "\n")
		case strings.HasPrefix(line, "```"):
			if !inFence && strings.TrimSpace(strings.TrimPrefix(line, "```")) == "sh test" {
				block = &strings.Builder{}
			}
			inFence = !inFence
		case !inFence && (strings.HasPrefix(line, "## ") || strings.HasPrefix(line, "### ")):
			out = append(out, cur)
			cur = &section{heading: strings.TrimLeft(line, "# ")}
		}
		cur.text += line + "\n"
	}
	if block != nil || inFence {
		t.Fatal("STORAGE.md: a code block is not closed")
	}
	return append(out, cur)
}

// findSection returns the section whose heading starts with prefix.
func findSection(t *testing.T, doc []*section, prefix string) *section {
	t.Helper()
	for _, s := range doc {
		if strings.HasPrefix(s.heading, prefix) {
			return s
		}
	}
	t.Fatalf("STORAGE.md has no section %q", prefix)
	return nil
}

// backendSections are the sections of the five backends, by URL scheme.
var backendSections = map[string]string{
	"file": "Local directory", "s3": "Amazon S3", "minio": "MinIO", "gs": "Google Cloud Storage", "azblob": "Azure Blob Storage",
}

// TestStorageExamples runs every ```sh test block of STORAGE.md, the
// blocks of one section in one shell, in order, in an empty directory,
// with backupctl and backupd of this tree on PATH and the test servers'
// addresses in the environment. Each backend's section has examples.
func TestStorageExamples(t *testing.T) {
	doc := readStorageDoc(t)
	for scheme, name := range backendSections {
		if s := findSection(t, doc, name); len(s.scripts) == 0 {
			t.Errorf("STORAGE.md: the %s section (%s://) has no example marked sh test", name, scheme)
		}
	}
	srv := startServers(t)
	for _, s := range doc {
		if len(s.scripts) == 0 {
			continue
		}
		t.Run(s.heading, func(t *testing.T) {
			t.Parallel()
			script := "set -eu -o pipefail\n" + strings.Join(s.scripts, "")
			r := runIn(t, t.TempDir(), srv.env(), 3*time.Minute, "bash", "-c", script)
			if r.code != 0 {
				t.Fatalf("the examples of %q exit %d\nscript:\n%s\nstdout:\n%s\nstderr:\n%s", s.heading, r.code, script, r.stdout, r.stderr)
			}
		})
	}
}

// TestStorageKeysDocumented checks that STORAGE.md has a table row for
// every key the storage section accepts (each leaf of location.Config,
// dotted: `s3.accesskey`), with a default column, and no row for a key
// that is not accepted.
func TestStorageKeysDocumented(t *testing.T) {
	b, err := os.ReadFile("STORAGE.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{} // key -> default column
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z0-9_.]+)` \\| ([^|]*) \\|").FindAllStringSubmatch(string(b), -1) {
		rows[m[1]] = strings.TrimSpace(m[2])
	}
	keys := configyaml.Keys(reflect.TypeOf(location.Config{}))
	accepted := map[string]bool{}
	for _, k := range keys {
		accepted[k] = true
	}
	for _, k := range keys {
		leaf := true
		for _, other := range keys {
			if strings.HasPrefix(other, k+".") {
				leaf = false
			}
		}
		def, ok := rows[k]
		switch {
		case leaf && !ok:
			t.Errorf("STORAGE.md does not document the storage key %s (want a table row | `%s` | default | meaning |)", k, k)
		case leaf && def == "":
			t.Errorf("STORAGE.md: key %s has no default", k)
		}
	}
	for k := range rows {
		if !accepted[k] {
			t.Errorf("STORAGE.md documents %s, which the storage section does not accept", k)
		}
	}
}

// TestURLParametersDocumented checks that each backend's section names
// every query parameter its URLs accept (as `?name=`), taking the list
// from the error an unknown parameter gets.
func TestURLParametersDocumented(t *testing.T) {
	doc := readStorageDoc(t)
	accepted := regexp.MustCompile(`\(accepted: ([^)]*)\)`)
	for scheme, url := range map[string]string{
		"s3": "s3://bucket1/p?zzz=1", "minio": "minio://127.0.0.1:9000/bucket1/p?zzz=1",
		"gs": "gs://bucket1/p?zzz=1", "azblob": "azblob://bucket1/p?zzz=1",
	} {
		err := location.Config{URL: url}.Validate()
		m := accepted.FindStringSubmatch(fmt.Sprint(err))
		if m == nil {
			t.Errorf("%s: %v names no accepted parameters", url, err)
			continue
		}
		s := findSection(t, doc, backendSections[scheme])
		for _, p := range strings.Split(m[1], ", ") {
			if !strings.Contains(s.text, "`?"+p+"=`") {
				t.Errorf("STORAGE.md, %s: the URL parameter %s is not documented (want `?%s=`)", s.heading, p, p)
			}
		}
	}
}
