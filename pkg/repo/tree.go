package repo

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/backupd/backupd/pkg/chunk"
)

// NodeType is the kind of a directory entry.
type NodeType uint8

// Node types.
const (
	TypeFile    NodeType = 1
	TypeDir     NodeType = 2
	TypeSymlink NodeType = 3
	TypeFIFO    NodeType = 4
)

func (t NodeType) String() string {
	switch t {
	case TypeFile:
		return "file"
	case TypeDir:
		return "dir"
	case TypeSymlink:
		return "symlink"
	case TypeFIFO:
		return "fifo"
	}
	return fmt.Sprintf("type(%d)", t)
}

// Node is one entry of a directory.
type Node struct {
	// Name is the entry's name: arbitrary bytes but "", ".", "..", '/' and NUL.
	Name string
	Type NodeType
	// Mode holds the permission bits and setuid/setgid/sticky (07777).
	Mode uint32
	// MTime is the modification time in Unix nanoseconds.
	MTime int64
	// Size is a file's length in bytes.
	Size uint64
	// Content lists a file's data blobs in order.
	Content []chunk.ID
	// Subtree is a directory's tree id.
	Subtree chunk.ID
	// Target is a symlink's target, never interpreted.
	Target string
	// Inode and CTime (Unix nanoseconds) of a file, for change detection.
	Inode uint64
	CTime int64
	// UID and GID are the numeric owner and group.
	UID, GID uint32
	// Xattrs are the extended attributes, sorted by name.
	Xattrs []Xattr
	// Device and Nlink of a file: files of one snapshot that share device
	// and inode, with Nlink > 1, are hard links of each other.
	Device, Nlink uint64
}

// Xattr is one extended attribute.
type Xattr struct {
	Name  string
	Value []byte
}

// maxXattrValue is Linux's limit on one attribute value (XATTR_SIZE_MAX).
const maxXattrValue = 64 << 10

// Tree is one directory's listing, sorted by name.
type Tree struct {
	Nodes []Node
}

const treeMagic = "BKPDTR01"

const (
	tagName = 1 + iota
	tagType
	tagMode
	tagMTime
	tagSize
	tagContent
	tagSubtree
	tagTarget
	tagInode
	tagCTime
	tagUID
	tagGID
	tagXattrs
	tagDevice
	tagNlink
)

// ValidName reports whether name may be a directory entry: it must not be
// empty, "." or "..", nor contain '/' or NUL.
func ValidName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("%w: forbidden entry name %q", ErrCorrupt, name)
	}
	return nil
}

// fileOnly reports whether fields only files may have were seen.
func fileOnly(seen map[int]bool) bool {
	return seen[tagInode] || seen[tagCTime] || seen[tagDevice] || seen[tagNlink]
}

// EncodeTree returns the canonical encoding of t. Nodes must already be
// sorted by name; EncodeTree panics otherwise (a programming error).
func EncodeTree(t *Tree) []byte {
	b := make([]byte, 0, 64+len(t.Nodes)*96)
	b = append(b, treeMagic...)
	b = binary.AppendUvarint(b, uint64(len(t.Nodes)))
	for i := range t.Nodes {
		n := &t.Nodes[i]
		if i > 0 && t.Nodes[i-1].Name >= n.Name {
			panic("repo: EncodeTree: nodes not sorted or duplicate name " + n.Name)
		}
		b = binary.AppendUvarint(b, tagName)
		b = binary.AppendUvarint(b, uint64(len(n.Name)))
		b = append(b, n.Name...)
		b = binary.AppendUvarint(b, tagType)
		b = binary.AppendUvarint(b, uint64(n.Type))
		if n.Mode != 0 {
			b = binary.AppendUvarint(b, tagMode)
			b = binary.AppendUvarint(b, uint64(n.Mode))
		}
		if n.MTime != 0 {
			b = binary.AppendUvarint(b, tagMTime)
			b = binary.AppendVarint(b, n.MTime)
		}
		switch n.Type {
		case TypeFile:
			if n.Size != 0 {
				b = binary.AppendUvarint(b, tagSize)
				b = binary.AppendUvarint(b, n.Size)
			}
			if len(n.Content) > 0 {
				b = binary.AppendUvarint(b, tagContent)
				b = binary.AppendUvarint(b, uint64(len(n.Content)))
				for _, id := range n.Content {
					b = append(b, id[:]...)
				}
			}
			if n.Inode != 0 {
				b = binary.AppendUvarint(b, tagInode)
				b = binary.AppendUvarint(b, n.Inode)
			}
			if n.CTime != 0 {
				b = binary.AppendUvarint(b, tagCTime)
				b = binary.AppendVarint(b, n.CTime)
			}
		case TypeDir:
			b = binary.AppendUvarint(b, tagSubtree)
			b = append(b, n.Subtree[:]...)
		case TypeSymlink:
			b = binary.AppendUvarint(b, tagTarget)
			b = binary.AppendUvarint(b, uint64(len(n.Target)))
			b = append(b, n.Target...)
		}
		if n.UID != 0 {
			b = binary.AppendUvarint(b, tagUID)
			b = binary.AppendUvarint(b, uint64(n.UID))
		}
		if n.GID != 0 {
			b = binary.AppendUvarint(b, tagGID)
			b = binary.AppendUvarint(b, uint64(n.GID))
		}
		if len(n.Xattrs) > 0 {
			b = binary.AppendUvarint(b, tagXattrs)
			b = binary.AppendUvarint(b, uint64(len(n.Xattrs)))
			for _, x := range n.Xattrs {
				b = binary.AppendUvarint(b, uint64(len(x.Name)))
				b = append(b, x.Name...)
				b = binary.AppendUvarint(b, uint64(len(x.Value)))
				b = append(b, x.Value...)
			}
		}
		if n.Device != 0 {
			b = binary.AppendUvarint(b, tagDevice)
			b = binary.AppendUvarint(b, n.Device)
		}
		if n.Nlink != 0 {
			b = binary.AppendUvarint(b, tagNlink)
			b = binary.AppendUvarint(b, n.Nlink)
		}
		b = append(b, 0)
	}
	return b
}

// DecodeTree parses and validates a tree blob. It refuses anything that is
// not exactly the canonical form: unknown tags, fields out of order,
// forbidden, duplicate or unsorted names, missing required fields.
func DecodeTree(b []byte) (*Tree, error) {
	if !bytes.HasPrefix(b, []byte(treeMagic)) {
		return nil, fmt.Errorf("%w: tree magic missing", ErrCorrupt)
	}
	r := b[len(treeMagic):]
	uv := func() (uint64, error) {
		v, k := binary.Uvarint(r)
		if k <= 0 {
			return 0, fmt.Errorf("%w: tree truncated", ErrCorrupt)
		}
		r = r[k:]
		return v, nil
	}
	bytesField := func() (string, error) {
		l, err := uv()
		if err != nil {
			return "", err
		}
		if l > uint64(len(r)) {
			return "", fmt.Errorf("%w: tree truncated", ErrCorrupt)
		}
		s := string(r[:l])
		r = r[l:]
		return s, nil
	}
	count, err := uv()
	if err != nil {
		return nil, err
	}
	if count > uint64(len(r))/3 {
		return nil, fmt.Errorf("%w: tree node count %d too large", ErrCorrupt, count)
	}
	t := &Tree{Nodes: make([]Node, count)}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		last := 0
		seen := map[int]bool{}
		for {
			tag, err := uv()
			if err != nil {
				return nil, err
			}
			if tag == 0 {
				break
			}
			if int(tag) <= last || tag > tagNlink {
				return nil, fmt.Errorf("%w: tree field %d out of order or unknown", ErrCorrupt, tag)
			}
			last = int(tag)
			seen[last] = true
			switch tag {
			case tagName:
				n.Name, err = bytesField()
			case tagType:
				var v uint64
				v, err = uv()
				n.Type = NodeType(v)
			case tagMode:
				var v uint64
				v, err = uv()
				if v&^07777 != 0 {
					err = fmt.Errorf("%w: mode %o", ErrCorrupt, v)
				}
				n.Mode = uint32(v)
			case tagMTime:
				v, k := binary.Varint(r)
				if k <= 0 {
					return nil, fmt.Errorf("%w: tree truncated", ErrCorrupt)
				}
				r, n.MTime = r[k:], v
			case tagSize:
				n.Size, err = uv()
			case tagContent:
				var c uint64
				c, err = uv()
				if err == nil && c > uint64(len(r))/chunk.IDSize {
					err = fmt.Errorf("%w: tree truncated", ErrCorrupt)
				}
				if err == nil {
					n.Content = make([]chunk.ID, c)
					for j := range n.Content {
						copy(n.Content[j][:], r)
						r = r[chunk.IDSize:]
					}
				}
			case tagSubtree:
				if len(r) < chunk.IDSize {
					return nil, fmt.Errorf("%w: tree truncated", ErrCorrupt)
				}
				copy(n.Subtree[:], r)
				r = r[chunk.IDSize:]
			case tagTarget:
				n.Target, err = bytesField()
			case tagInode:
				n.Inode, err = uv()
			case tagCTime:
				v, k := binary.Varint(r)
				if k <= 0 {
					return nil, fmt.Errorf("%w: tree truncated", ErrCorrupt)
				}
				r, n.CTime = r[k:], v
			case tagUID, tagGID:
				var v uint64
				v, err = uv()
				if err == nil && v > 1<<32-1 {
					err = fmt.Errorf("%w: id %d out of range", ErrCorrupt, v)
				}
				if tag == tagUID {
					n.UID = uint32(v)
				} else {
					n.GID = uint32(v)
				}
			case tagXattrs:
				var c uint64
				c, err = uv()
				if err == nil && (c == 0 || c > uint64(len(r))/2) {
					err = fmt.Errorf("%w: xattr count %d", ErrCorrupt, c)
				}
				for j := uint64(0); err == nil && j < c; j++ {
					var x Xattr
					var v string
					if x.Name, err = bytesField(); err != nil {
						break
					}
					if v, err = bytesField(); err != nil {
						break
					}
					x.Value = []byte(v)
					switch {
					case x.Name == "" || strings.ContainsRune(x.Name, 0):
						err = fmt.Errorf("%w: xattr name %q", ErrCorrupt, x.Name)
					case len(x.Value) > maxXattrValue:
						err = fmt.Errorf("%w: xattr %q value of %d bytes", ErrCorrupt, x.Name, len(x.Value))
					case len(n.Xattrs) > 0 && n.Xattrs[len(n.Xattrs)-1].Name >= x.Name:
						err = fmt.Errorf("%w: xattrs unsorted or duplicate at %q", ErrCorrupt, x.Name)
					}
					n.Xattrs = append(n.Xattrs, x)
				}
			case tagDevice:
				n.Device, err = uv()
			case tagNlink:
				n.Nlink, err = uv()
			}
			if err != nil {
				return nil, err
			}
		}
		if err := ValidName(n.Name); err != nil {
			return nil, err
		}
		if i > 0 && t.Nodes[i-1].Name >= n.Name {
			return nil, fmt.Errorf("%w: tree entries unsorted or duplicate at %q", ErrCorrupt, n.Name)
		}
		ok := seen[tagName] && seen[tagType]
		switch n.Type {
		case TypeFile:
			ok = ok && !seen[tagSubtree] && !seen[tagTarget] && (n.Size == 0) == (len(n.Content) == 0)
		case TypeDir:
			ok = ok && seen[tagSubtree] && !seen[tagSize] && !seen[tagContent] && !seen[tagTarget] && !fileOnly(seen)
		case TypeSymlink:
			ok = ok && seen[tagTarget] && !seen[tagSize] && !seen[tagContent] && !seen[tagSubtree] && !fileOnly(seen)
		case TypeFIFO:
			ok = ok && !seen[tagTarget] && !seen[tagSize] && !seen[tagContent] && !seen[tagSubtree] && !fileOnly(seen)
		default:
			ok = false
		}
		if !ok {
			return nil, fmt.Errorf("%w: tree entry %q of type %v has invalid fields", ErrCorrupt, n.Name, n.Type)
		}
	}
	if len(r) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes after tree", ErrCorrupt, len(r))
	}
	return t, nil
}
