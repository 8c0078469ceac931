// Command mkimage builds backupd's container image without a container
// engine (`make image`): from the static binaries that
// deploy/image/build-binaries.sh wrote into -binaries, an OCI image layout
// (-oci DIR, for `crane push DIR REF`) and a tarball (-tar FILE, for
// `docker load -i FILE` or `crane push FILE REF`).
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/backupd/backupd/deploy/internal/image"
)

func main() {
	bins := flag.String("binaries", "", "`DIR` of the static binaries (backupd, backupctl)")
	version := flag.String("version", "", "the binaries' `VERSION`, for the labels and the tag")
	revision := flag.String("revision", "", "the source's VCS `REVISION`, for the labels")
	repo := flag.String("repository", "ghcr.io/backupd/backupd", "image `REPOSITORY` the tag names")
	ca := flag.String("ca-bundle", image.CABundle, "PEM `FILE` of trusted CAs to include")
	arch := flag.String("arch", runtime.GOARCH, "the binaries' `GOARCH`")
	oci := flag.String("oci", "", "write an OCI image layout into `DIR`")
	tarFile := flag.String("tar", "", "write a docker-loadable tarball to `FILE`")
	flag.Parse()
	if err := run(*bins, *version, *revision, *repo, *ca, *arch, *oci, *tarFile); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(bins, version, revision, repo, ca, arch, oci, tarFile string) error {
	if bins == "" || version == "" || (oci == "" && tarFile == "") {
		return fmt.Errorf("need -binaries, -version and -oci or -tar (see -help)")
	}
	// SOURCE_DATE_EPOCH (reproducible-builds.org): the time of the
	// source, so that the same source gives the same digest.
	created := time.Unix(0, 0)
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", s, err)
		}
		created = time.Unix(n, 0)
	}
	ref, err := name.NewTag(repo + ":" + version)
	if err != nil {
		return fmt.Errorf("tag: %w", err)
	}
	img, err := image.Build(image.Options{BinariesDir: bins, CABundle: ca, Version: version, Revision: revision, Created: created, Arch: arch})
	if err != nil {
		return err
	}
	if oci != "" {
		if err := image.WriteLayout(oci, img, ref); err != nil {
			return err
		}
	}
	if tarFile != "" {
		if err := image.WriteTarball(tarFile, img, ref); err != nil {
			return err
		}
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s@%s\n", ref, d)
	return nil
}
