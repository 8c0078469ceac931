package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"2GiB": 2 << 30, "2G": 2 << 30, "1GB": 1e9, "500MiB": 500 << 20, "1.5k": 1536, "4096": 4096,
	} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1x", "GiB", "-1"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
}

func TestGenerateDeterministicAndVerify(t *testing.T) {
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	const size = 9<<20 + 123 // not a multiple of the block size
	for _, d := range []string{a, b} {
		if err := generateLarge(d, size); err != nil {
			t.Fatal(err)
		}
	}
	ta, err := scanTree(a)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := scanTree(b)
	if err != nil {
		t.Fatal(err)
	}
	if ta.files != 2001 || ta.entries["big.bin"].size != size {
		t.Fatalf("got %d files, big.bin %d bytes", ta.files, ta.entries["big.bin"].size)
	}
	if err := compareTrees(ta, tb); err != nil {
		t.Fatalf("two generations differ: %v", err)
	}

	// Every kind of damage is caught.
	small := filepath.Join(b, "small", "d00", "f0000.txt")
	for name, damage := range map[string]func() error{
		"content": func() error {
			f, err := os.OpenFile(filepath.Join(b, "big.bin"), os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteAt([]byte{'!'}, 5<<20)
			return err
		},
		"missing":    func() error { return os.Remove(small) },
		"unexpected": func() error { return os.WriteFile(filepath.Join(b, "extra"), nil, 0o644) },
		"mode":       func() error { return os.Chmod(small, 0o600) },
	} {
		if err := generateLarge(b, size); err != nil {
			t.Fatal(err)
		}
		os.Remove(filepath.Join(b, "extra"))
		os.Chmod(small, 0o644)
		if err := damage(); err != nil {
			t.Fatal(err)
		}
		tb, err := scanTree(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := compareTrees(ta, tb); err == nil || !strings.Contains(err.Error(), "differs from source in 1 entries") {
			t.Errorf("%s: compareTrees = %v", name, err)
		}
	}
}
