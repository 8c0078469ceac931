// Command render renders the backupd Helm chart into plain manifests for
// operators without Helm (`make manifests` writes deploy/kubernetes/),
// through the Helm Go library, as `helm template` would.
//
//	go run ./cmd/render -o kubernetes/backupd.yaml [-f values.yaml]...
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/backupd/backupd/deploy/internal/chart"
)

type valueFiles []string

func (v *valueFiles) String() string     { return strings.Join(*v, ",") }
func (v *valueFiles) Set(s string) error { *v = append(*v, s); return nil }

func main() {
	var files valueFiles
	dir := flag.String("chart", "helm/backupd", "chart `DIR`")
	out := flag.String("o", "", "write to `FILE` (default: standard output)")
	name := flag.String("release", "backupd", "release `NAME`")
	ns := flag.String("namespace", "backupd", "release `NAMESPACE`")
	flag.Var(&files, "f", "values `FILE` (repeatable; later ones win)")
	flag.Parse()
	b, err := chart.PlainManifest(*dir, chart.Release{Name: *name, Namespace: *ns}, files)
	if err == nil {
		if *out == "" {
			_, err = os.Stdout.Write(b)
		} else {
			err = os.WriteFile(*out, b, 0o644)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}
