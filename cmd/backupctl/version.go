package main

import "github.com/backupd/backupd/internal/buildinfo"

// version is the release this binary was built as, set at build time with
// -ldflags "-X main.version=VERSION"; empty in a plain go build.
var version string

// versionString is what --version prints (buildinfo.String).
func versionString() string { return buildinfo.String(version) }
