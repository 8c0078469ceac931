// Package etag holds what the backends whose Versions are HTTP entity
// tags (s3, minio, azure) share: turning an ETag into a Version and back.
package etag

// Version returns the Version of an entity tag: the tag without its
// quotes, so that a service that quotes it in one reply and not in
// another (Azure's listing) gives one Version.
func Version(tag string) string {
	if len(tag) >= 2 && tag[0] == '"' && tag[len(tag)-1] == '"' {
		return tag[1 : len(tag)-1]
	}
	return tag
}

// Valid reports whether v can be the Version of an entity tag, and so be
// sent quoted in an If-Match header: not empty, not "*" (which would match
// any object, also quoted at some services), and only of the characters
// RFC 9110 allows in an opaque tag (visible ASCII but '"'; we refuse the
// obsolete non-ASCII ones too, and '\').
func Valid(v string) bool {
	if v == "" || v == "*" {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// Header returns the If-Match value for the Version v: v quoted.
func Header(v string) string { return `"` + v + `"` }
