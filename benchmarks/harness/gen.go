package main

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

const genSeed = 0x6261636b757064 // "backupd"

// parseSize parses "2GiB", "500MiB", "1G" (binary), "1GB" (decimal) or a
// plain number of bytes.
func parseSize(s string) (int64, error) {
	m := regexp.MustCompile(`^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$`).FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("bad size %q", s)
	}
	n, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, err
	}
	units := map[string]float64{
		"": 1, "b": 1,
		"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
		"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
		"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
		"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
	}
	u, ok := units[strings.ToLower(m[2])]
	if !ok {
		return 0, fmt.Errorf("bad size unit in %q", s)
	}
	return int64(n * u), nil
}

// generateLarge writes a deterministic tree under dir: big.bin of size
// bytes plus 2000 small text-like files (1 B to 64 KiB) in 40 directories.
//
// big.bin is made of 64 KiB pieces, each chosen at random to be one of:
// incompressible random bytes, random hex-like bytes (4 bits of entropy per
// byte, about 2:1 for an entropy coder) or random words from a small
// vocabulary (compresses well). No piece repeats, so the content has no
// duplicate chunks for deduplication to find. Pieces are generated in
// parallel from per-block seeds, so the output does not depend on the
// number of workers.
func generateLarge(dir string, size int64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := writeBlocks(filepath.Join(dir, "big.bin"), size, fillBlock); err != nil {
		return err
	}

	rng := rand.New(rand.NewPCG(genSeed, 1<<62))
	buf := make([]byte, 64<<10)
	for i := 0; i < 2000; i++ {
		sub := filepath.Join(dir, "small", fmt.Sprintf("d%02d", i%40))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return err
		}
		n := 1 + rng.IntN(len(buf))
		if i%4 != 0 { // most small files are really small
			n = 1 + rng.IntN(4096)
		}
		fillWords(buf[:n], rng)
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%04d.txt", i)), buf[:n], 0o644); err != nil {
			return err
		}
	}
	return nil
}

var vocabulary = func() []string {
	rng := rand.New(rand.NewPCG(genSeed, 0))
	words := make([]string, 256)
	for i := range words {
		w := make([]byte, 2+rng.IntN(9))
		for j := range w {
			w[j] = byte('a' + rng.IntN(26))
		}
		words[i] = string(w)
	}
	return words
}()

// fillBlock fills buf (the block with index i) with semi-compressible data.
func fillBlock(buf []byte, i uint64) {
	rng := rand.New(rand.NewPCG(genSeed, i))
	const piece = 64 << 10
	for len(buf) > 0 {
		p := buf[:min(piece, len(buf))]
		buf = buf[len(p):]
		switch rng.IntN(3) {
		case 0: // random
			j := 0
			for ; j+8 <= len(p); j += 8 {
				binary.LittleEndian.PutUint64(p[j:], rng.Uint64())
			}
			for ; j < len(p); j++ {
				p[j] = byte(rng.Uint64())
			}
		case 1: // hex-like: one random nibble per byte
			const hex = "0123456789abcdef"
			var v uint64
			for j := range p {
				if j%16 == 0 {
					v = rng.Uint64()
				}
				p[j] = hex[v&15]
				v >>= 4
			}
		default:
			fillWords(p, rng)
		}
	}
}

// fillWords fills buf with random words from vocabulary, space-separated.
func fillWords(buf []byte, rng *rand.Rand) {
	j := 0
	var v uint64
	for k := 0; j < len(buf); k++ {
		if k%8 == 0 {
			v = rng.Uint64()
		}
		w := vocabulary[byte(v)]
		v >>= 8
		j += copy(buf[j:], w)
		if j < len(buf) {
			buf[j] = ' '
			if k%12 == 11 {
				buf[j] = '\n'
			}
			j++
		}
	}
}
