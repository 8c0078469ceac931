package main

import "runtime/debug"

// version is the release this binary was built as, set at build time with
// -ldflags "-X main.version=VERSION" (deploy/image/build-binaries.sh,
// `make build`, `make image`); empty in a plain `go build`.
var version string

// versionString is what --version prints: version when set, else the
// module version of the build info (`go install ...@v1.2.3`), else
// "devel"; followed by the VCS revision when the build info has one.
func versionString() string {
	v := version
	bi, ok := debug.ReadBuildInfo()
	if v == "" {
		v = "devel"
		if ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	if ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				v += " (" + s.Value + ")"
			}
		}
	}
	return v
}
