// Package chart renders the backupd Helm chart (deploy/helm/backupd)
// through the Helm Go library, as `helm template` would, without a
// cluster: for `make manifests` and for the tests that check what it
// renders.
package chart

import (
	"bytes"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"sigs.k8s.io/yaml"
)

// Release names the release a chart is rendered for.
type Release struct {
	Name, Namespace string
}

// Rendered is a rendered chart: each template's output by its path
// (backupd/templates/daemonset.yaml), NOTES.txt included.
type Rendered map[string]string

// Load reads the chart in dir.
func Load(dir string) (*chart.Chart, error) {
	c, err := loader.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", dir, err)
	}
	return c, nil
}

// Values reads values files and merges them, later ones over earlier
// ones (as helm -f a.yaml -f b.yaml), then overrides over all.
func Values(files []string, overrides map[string]any) (map[string]any, error) {
	vals := map[string]any{}
	for _, f := range files {
		v, err := chartutil.ReadValuesFile(f)
		if err != nil {
			return nil, fmt.Errorf("values %s: %w", f, err)
		}
		vals = chartutil.CoalesceTables(v.AsMap(), vals)
	}
	if overrides != nil {
		vals = chartutil.CoalesceTables(deepCopy(overrides), vals)
	}
	return vals, nil
}

// deepCopy copies nested maps, so that coalescing never changes the
// caller's.
func deepCopy(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok {
			v = deepCopy(sub)
		}
		out[k] = v
	}
	return out
}

// Render renders c with vals (merged over the chart's values.yaml and
// checked against its values.schema.json) for rel, as an install.
func Render(c *chart.Chart, rel Release, vals map[string]any) (Rendered, error) {
	opts := chartutil.ReleaseOptions{Name: rel.Name, Namespace: rel.Namespace, Revision: 1, IsInstall: true}
	top, err := chartutil.ToRenderValues(c, vals, opts, chartutil.DefaultCapabilities.Copy())
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	out, err := engine.Render(c, top)
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	return Rendered(out), nil
}

// Doc is one YAML document a template rendered.
type Doc struct {
	// Source is the template's path, as helm's "# Source:" line.
	Source string
	// YAML is the document, without its separator.
	YAML []byte
	// APIVersion, Kind and Name identify it.
	APIVersion, Kind, Name string
}

// installOrder is the order kubectl should create kinds in (Helm's
// releaseutil.InstallOrder, for the kinds the chart renders); kinds not
// listed come last.
var installOrder = []string{"NetworkPolicy", "ServiceAccount", "Secret", "ConfigMap", "Service", "DaemonSet", "Issuer", "Certificate", "ServiceMonitor"}

// Docs splits the rendered manifests (NOTES.txt and partials left out)
// into their documents, empty ones dropped, in install order of their
// kinds, then in the order of their template's path and within it.
func (r Rendered) Docs() ([]Doc, error) {
	var docs []Doc
	for _, src := range slices.Sorted(maps.Keys(r)) {
		if path.Ext(src) != ".yaml" && path.Ext(src) != ".yml" {
			continue // NOTES.txt
		}
		for _, part := range splitDocs(r[src]) {
			var meta struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
				Metadata   struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal(part, &meta); err != nil {
				return nil, fmt.Errorf("%s: %w\n%s", src, err, part)
			}
			if meta.APIVersion == "" || meta.Kind == "" || meta.Metadata.Name == "" {
				return nil, fmt.Errorf("%s: a document without apiVersion, kind or metadata.name:\n%s", src, part)
			}
			docs = append(docs, Doc{Source: src, YAML: part, APIVersion: meta.APIVersion, Kind: meta.Kind, Name: meta.Metadata.Name})
		}
	}
	rank := func(kind string) int {
		if i := slices.Index(installOrder, kind); i >= 0 {
			return i
		}
		return len(installOrder)
	}
	slices.SortStableFunc(docs, func(a, b Doc) int { return rank(a.Kind) - rank(b.Kind) })
	return docs, nil
}

// splitDocs splits a YAML stream at its "---" lines and drops documents
// of only comments and blank lines.
func splitDocs(s string) [][]byte {
	var out [][]byte
	var cur []string
	flush := func() {
		doc := strings.Join(cur, "\n")
		cur = nil
		for _, l := range strings.Split(doc, "\n") {
			if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
				out = append(out, []byte(strings.TrimSpace(doc)+"\n"))
				return
			}
		}
	}
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimRight(l, " ") == "---" {
			flush()
			continue
		}
		cur = append(cur, l)
	}
	flush()
	return out
}

// Manifest is the rendered chart as one YAML stream for kubectl apply:
// each document after a "# Source:" line naming its template, as `helm
// template` prints them.
func (r Rendered) Manifest() ([]byte, error) {
	docs, err := r.Docs()
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	for _, d := range docs {
		b.WriteString("---\n# Source: " + d.Source + "\n")
		b.Write(d.YAML)
	}
	return b.Bytes(), nil
}

// header opens every plain-manifest file, so nobody edits one by hand.
const header = `# Generated by ` + "`make manifests`" + ` from deploy/helm/backupd (%s), release %q
# in namespace %q. Do not edit: change the chart or its values and run make
# manifests again (a test fails when this file is stale).
#
#   kubectl create namespace %[3]s
#   kubectl label namespace %[3]s pod-security.kubernetes.io/enforce=privileged
#   kubectl -n %[3]s apply -f deploy/kubernetes/
`

// PlainManifest renders the chart in dir with the values files for rel
// into a plain-manifest file (deploy/kubernetes/): a header, then every
// object.
func PlainManifest(dir string, rel Release, files []string) ([]byte, error) {
	c, err := Load(dir)
	if err != nil {
		return nil, err
	}
	vals, err := Values(files, nil)
	if err != nil {
		return nil, err
	}
	r, err := Render(c, rel, vals)
	if err != nil {
		return nil, err
	}
	m, err := r.Manifest()
	if err != nil {
		return nil, err
	}
	what := "default values"
	if len(files) > 0 {
		what = "values " + strings.Join(files, ", ")
	}
	return append(fmt.Appendf(nil, header, what, rel.Name, rel.Namespace), m...), nil
}
