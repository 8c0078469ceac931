package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/backupd/backupd/deploy/internal/chart"
	"github.com/backupd/backupd/pkg/daemon"
)

const chartDir = "helm/backupd"

// release is what the tests render the chart as.
var release = chart.Release{Name: "backupd", Namespace: "backupd"}

// exampleValues are the example values files the chart ships.
var exampleValues = []string{"values-minio.yaml", "values-aws.yaml", "values-gcp.yaml", "values-azure.yaml"}

// valueCase is a set of values the chart is rendered with.
type valueCase struct {
	name      string
	files     []string
	overrides map[string]any
}

// valueCases: the defaults, each example, and a few combinations the
// examples do not cover.
func valueCases() []valueCase {
	cases := []valueCase{{name: "default"}}
	for _, f := range exampleValues {
		cases = append(cases, valueCase{name: f, files: []string{filepath.Join(chartDir, f)}})
	}
	return append(cases,
		valueCase{name: "tls with an issuer of one's own, one-way TLS, dashboard, no network policy", overrides: map[string]any{
			"grpc": map[string]any{"mode": "tls", "tls": map[string]any{"mutual": false, "certManager": map[string]any{
				"issuerRef": map[string]any{"name": "corp-ca", "kind": "ClusterIssuer"}}}},
			"grafanaDashboard": map[string]any{"enabled": true},
			"networkPolicy":    map[string]any{"enabled": false},
		}},
		valueCase{name: "tls from an existing secret, GCS key file from a secret", overrides: map[string]any{
			"grpc":        map[string]any{"mode": "tls", "tls": map[string]any{"secretName": "my-tls", "certManager": map[string]any{"enabled": false}}},
			"credentials": map[string]any{"secretName": "gcs-key", "env": []any{}, "mountPath": "/etc/backupd/credentials"},
			"config": map[string]any{"storage": map[string]any{"url": "gs://workspaces/backups",
				"gcs": map[string]any{"credentialsfile": "/etc/backupd/credentials/gs-credentials.json"}}},
		}},
	)
}

// render renders the chart with c's values.
func render(t *testing.T, c valueCase) chart.Rendered {
	t.Helper()
	r, err := renderErr(c)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func renderErr(c valueCase) (chart.Rendered, error) {
	ch, err := chart.Load(chartDir)
	if err != nil {
		return nil, err
	}
	vals, err := chart.Values(c.files, c.overrides)
	if err != nil {
		return nil, err
	}
	return chart.Render(ch, release, vals)
}

// objects are the rendered objects, decoded strictly.
type objects struct {
	all             []any
	daemonSet       *appsv1.DaemonSet
	configMaps      map[string]*corev1.ConfigMap
	services        []*corev1.Service
	serviceAccounts []*corev1.ServiceAccount
	networkPolicies []*networkingv1.NetworkPolicy
	certificates    []*certificate
	issuers         []*issuer
	serviceMonitors []*serviceMonitor
}

// decode decodes every document into its Go type, strictly: a field the
// type does not have (a typo, a field at the wrong level) fails.
func decode(t *testing.T, r chart.Rendered) *objects {
	t.Helper()
	docs, err := r.Docs()
	if err != nil {
		t.Fatal(err)
	}
	o := &objects{configMaps: map[string]*corev1.ConfigMap{}}
	for _, d := range docs {
		var obj any
		switch d.APIVersion + " " + d.Kind {
		case "apps/v1 DaemonSet":
			if o.daemonSet != nil {
				t.Fatal("two DaemonSets")
			}
			o.daemonSet = &appsv1.DaemonSet{}
			obj = o.daemonSet
		case "v1 ConfigMap":
			cm := &corev1.ConfigMap{}
			o.configMaps[d.Name] = cm
			obj = cm
		case "v1 Service":
			s := &corev1.Service{}
			o.services = append(o.services, s)
			obj = s
		case "v1 ServiceAccount":
			s := &corev1.ServiceAccount{}
			o.serviceAccounts = append(o.serviceAccounts, s)
			obj = s
		case "networking.k8s.io/v1 NetworkPolicy":
			n := &networkingv1.NetworkPolicy{}
			o.networkPolicies = append(o.networkPolicies, n)
			obj = n
		case "cert-manager.io/v1 Certificate":
			c := &certificate{}
			o.certificates = append(o.certificates, c)
			obj = c
		case "cert-manager.io/v1 Issuer":
			i := &issuer{}
			o.issuers = append(o.issuers, i)
			obj = i
		case "monitoring.coreos.com/v1 ServiceMonitor":
			s := &serviceMonitor{}
			o.serviceMonitors = append(o.serviceMonitors, s)
			obj = s
		default:
			t.Fatalf("%s: %s %s: a kind the tests do not know; add its type", d.Source, d.APIVersion, d.Kind)
		}
		if err := yaml.UnmarshalStrict(d.YAML, obj); err != nil {
			t.Fatalf("%s: %s %s does not decode strictly: %v\n%s", d.Source, d.Kind, d.Name, err, d.YAML)
		}
		o.all = append(o.all, obj)
	}
	if o.daemonSet == nil {
		t.Fatal("no DaemonSet rendered")
	}
	return o
}

// meta returns an object's metadata.
func meta(obj any) *metav1.ObjectMeta {
	switch o := obj.(type) {
	case *appsv1.DaemonSet:
		return &o.ObjectMeta
	case *corev1.ConfigMap:
		return &o.ObjectMeta
	case *corev1.Service:
		return &o.ObjectMeta
	case *corev1.ServiceAccount:
		return &o.ObjectMeta
	case *networkingv1.NetworkPolicy:
		return &o.ObjectMeta
	case *certificate:
		return &o.ObjectMeta
	case *issuer:
		return &o.ObjectMeta
	case *serviceMonitor:
		return &o.ObjectMeta
	}
	panic(fmt.Sprintf("meta of %T", obj))
}

// The custom resources the chart renders have no type in k8s.io/api:
// these mirror the fields of cert-manager.io/v1 and monitoring.coreos.com/v1
// that the chart uses, so that a misspelt or misplaced field fails the
// strict decoding as it would fail the CRD's schema.
type certificate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		IsCA        bool     `json:"isCA,omitempty"`
		CommonName  string   `json:"commonName,omitempty"`
		SecretName  string   `json:"secretName"`
		Duration    string   `json:"duration,omitempty"`
		RenewBefore string   `json:"renewBefore,omitempty"`
		Usages      []string `json:"usages,omitempty"`
		DNSNames    []string `json:"dnsNames,omitempty"`
		PrivateKey  *struct {
			Algorithm      string `json:"algorithm,omitempty"`
			Size           int    `json:"size,omitempty"`
			RotationPolicy string `json:"rotationPolicy,omitempty"`
		} `json:"privateKey,omitempty"`
		IssuerRef issuerRef `json:"issuerRef"`
	} `json:"spec"`
}

type issuerRef struct {
	Name  string `json:"name"`
	Kind  string `json:"kind,omitempty"`
	Group string `json:"group,omitempty"`
}

type issuer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SelfSigned *struct{} `json:"selfSigned,omitempty"`
		CA         *struct {
			SecretName string `json:"secretName"`
		} `json:"ca,omitempty"`
	} `json:"spec"`
}

type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// daemonConfig loads the rendered ConfigMap's config file with backupd's
// own loader, which refuses unknown keys, then fills in defaults and
// validates it as the daemon does at start-up.
func daemonConfig(t *testing.T, o *objects) (daemon.Config, string) {
	t.Helper()
	cm := o.configMaps[release.Name]
	if cm == nil {
		t.Fatal("no ConfigMap of the config")
	}
	text, ok := cm.Data["backupd.yaml"]
	if !ok || len(cm.Data) != 1 {
		t.Fatalf("ConfigMap data keys: %v", cm.Data)
	}
	p := filepath.Join(t.TempDir(), "backupd.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	var cfg daemon.Config
	if err := cfg.LoadFile(p); err != nil {
		t.Fatalf("the daemon's loader refuses the rendered config: %v\n%s", err, text)
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("the rendered config does not validate: %v\n%s", err, text)
	}
	return cfg, text
}

// container is the DaemonSet's one container.
func container(t *testing.T, o *objects) *corev1.Container {
	t.Helper()
	cs := o.daemonSet.Spec.Template.Spec.Containers
	if len(cs) != 1 || len(o.daemonSet.Spec.Template.Spec.InitContainers) != 0 {
		t.Fatalf("want one container, have %d (and %d init containers)", len(cs), len(o.daemonSet.Spec.Template.Spec.InitContainers))
	}
	return &cs[0]
}

// portOf returns the TCP port of a host:port listen address.
func portOf(t *testing.T, listen string) string {
	t.Helper()
	i := strings.LastIndex(listen, ":")
	if i < 0 {
		t.Fatalf("listen %q has no port", listen)
	}
	return listen[i+1:]
}
