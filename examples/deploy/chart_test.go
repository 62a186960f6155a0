package deploy_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"maps"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/kilnhq/kiln/spec/kilntest"
	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite manifests/kiln.yaml from the chart")

const (
	chartDir      = "helm/kiln"
	manifestsFile = "manifests/kiln.yaml"
	release       = "kiln"
	namespace     = "kiln"
	kilnUID       = 65532
)

// requiredValues are the two values without a default; every value set
// starts from them.
const requiredValues = `
etcd:
  endpoints: [https://etcd-0.etcd.kiln.svc:2379, https://etcd-1.etcd.kiln.svc:2379, https://etcd-2.etcd.kiln.svc:2379]
source:
  git:
    url: https://git.example.net/infra/fleet.git
    path: bare-metal
`

// manifestValues render manifests/kiln.yaml: the defaults and one rack.
const manifestValues = `
racks:
  - name: r1
    interfaces: [eno2]
`

// chartCase is a value set and what its rendering must hold.
type chartCase struct {
	values string // YAML over requiredValues
	region int32  // region server replicas; 0: no region servers
	apiTLS bool
	racks  map[string]rackWant
	pvcs   map[string]corev1.PersistentVolumeAccessMode // claims the chart makes
}

type rackWant struct {
	kind       string // DaemonSet or Deployment
	replicas   int32  // Deployment only
	interfaces string
	etcdSecret string
	cache      string // emptyDir, hostPath or pvc
	claim      string // pvc only
	https      bool
	nodeLabel  bool // selects nodes by kiln/rack=NAME
}

var chartCases = map[string]chartCase{
	"defaults": {region: 3},
	"plain manifests": {values: manifestValues, region: 3, racks: map[string]rackWant{
		"r1": {kind: "DaemonSet", interfaces: "eno2", etcdSecret: "kiln-etcd-rack-r1", cache: "emptyDir", nodeLabel: true},
	}},
	"two racks, PVC cache, TLS API": {values: `
region:
  api:
    tlsSecretName: kiln-api-tls
racks:
  - name: r1
    interfaces: [eno2]
    cache: {type: pvc, accessModes: [ReadWriteMany], storageClassName: nfs, size: 200Gi}
  - name: r2
    kind: Deployment
    replicas: 3
    interfaces: [eno2, eno3]
    etcdSecretName: r2-etcd
    tls: {secretName: kiln-rack-r2-tls, agentURL: "https://r2.boot.example.net:8443"}
    cache: {type: pvc, existingClaim: r2-images}
    envFrom: [{secretRef: {name: bmc-passwords}}]
`, region: 3, apiTLS: true,
		racks: map[string]rackWant{
			"r1": {kind: "DaemonSet", interfaces: "eno2", etcdSecret: "kiln-etcd-rack-r1", cache: "pvc", claim: "kiln-rack-r1-cache", nodeLabel: true},
			"r2": {kind: "Deployment", replicas: 3, interfaces: "eno2,eno3", etcdSecret: "r2-etcd", cache: "pvc", claim: "r2-images", https: true, nodeLabel: true},
		},
		pvcs: map[string]corev1.PersistentVolumeAccessMode{"kiln-rack-r1-cache": corev1.ReadWriteMany},
	},
	"region only, one replica": {values: `
region:
  replicas: 1
`, region: 1},
	"racks only, hostPath cache": {values: `
region:
  enabled: false
rack:
  cache: {type: hostPath, hostPath: /srv/kiln-cache}
racks:
  - name: edge-7
    nodeLabel: ""
    nodeSelector: {example.net/provisioner: "true"}
`, racks: map[string]rackWant{
		"edge-7": {kind: "DaemonSet", etcdSecret: "kiln-etcd-rack-edge-7", cache: "hostPath"},
	}},
}

func TestChart(t *testing.T) {
	chrt := loadChart(t)
	flags := kilnFlags(t)
	for name, tc := range chartCases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			manifests, err := render(chrt, requiredValues+"\n---\n"+tc.values)
			if err != nil {
				t.Fatal(err)
			}
			objs := decodeAll(t, manifests)
			checkObjects(t, objs)
			checkRegion(t, objs, tc, chrt.Metadata.AppVersion, flags["server"])
			checkRacks(t, objs, tc, flags["rack"])
		})
	}
}

// TestChartRejects: values the chart refuses, with a message naming the
// value. The templates check what the schema checks too, for helm
// --skip-schema-validation.
func TestChartRejects(t *testing.T) {
	chrt := loadChart(t)
	for name, tc := range map[string]struct {
		values, want string
		noSchema     bool
	}{
		"no etcd endpoints":     {values: "source: {git: {url: https://git.example.net/fleet.git}}", want: "etcd.endpoints"},
		"no git URL":            {values: "etcd: {endpoints: [https://etcd:2379]}", want: "source.git.url"},
		"misspelt value":        {values: requiredValues + "region: {replica: 1}", want: "'replica'"},
		"misspelt rack key":     {values: requiredValues + "racks: [{name: r1, interface: [eno2]}]", want: "'interface'"},
		"rack name":             {values: requiredValues + "racks: [{name: R1}]", want: "'/racks/0/name'"},
		"rack kind":             {values: requiredValues + "racks: [{name: r1, kind: StatefulSet}]", want: "'/racks/0/kind'"},
		"cache type":            {values: requiredValues + "racks: [{name: r1, cache: {type: nfs}}]", want: "'/racks/0/cache/type'"},
		"rack name, no schema":  {values: requiredValues + "racks: [{name: R1}]", want: `racks[0].name "R1"`, noSchema: true},
		"rack kind, no schema":  {values: requiredValues + "racks: [{name: r1, kind: StatefulSet}]", want: `kind "StatefulSet"`, noSchema: true},
		"cache type, no schema": {values: requiredValues + "racks: [{name: r1, cache: {type: nfs}}]", want: `cache.type "nfs"`, noSchema: true},
		"rack twice":            {values: requiredValues + "racks: [{name: r1}, {name: r1}]", want: "rack r1 is listed twice"},
		"https without URL": {values: requiredValues + "racks: [{name: r1, tls: {secretName: t}}]",
			want: "tls.secretName needs tls.agentURL or bootURL"},
		"https without http": {values: requiredValues + "racks: [{name: r1, httpPort: 0, tls: {secretName: t}, bootURL: http://10.0.0.1:8080}]",
			want: "tls.secretName needs the HTTP boot server"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := renderWith(chrt, tc.values, tc.noSchema)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("render: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestManifests keeps manifests/kiln.yaml, the plain manifests for users
// without Helm, equal to the chart's rendering of manifestValues.
func TestManifests(t *testing.T) {
	manifests, err := render(loadChart(t), requiredValues+"\n---\n"+manifestValues)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	b.WriteString(manifestsHeader)
	for _, l := range strings.Split(requiredValues+manifestValues, "\n") {
		if l != "" {
			fmt.Fprintf(&b, "#   %s\n", l)
		}
	}
	for _, m := range manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Name, strings.TrimSpace(m.Content))
	}
	kilntest.Golden(t, manifestsFile, b.Bytes(), *update, "go test ./examples/deploy -run TestManifests -update (the chart changed)")
}

const manifestsHeader = `# Kiln on Kubernetes without Helm: the chart in ../helm/kiln rendered by
#   go test ./examples/deploy -run TestManifests -update
# Edit the chart, not this file. Before kubectl apply -f kiln.yaml:
#   - replace the etcd endpoints and the git repository below with yours;
#   - kubectl create namespace kiln;
#   - create the etcd client Secrets kiln-etcd-region (CN kiln-region) and
#     kiln-etcd-rack-r1 (CN kiln-rack-r1), each with ca.pem, cert.pem, key.pem;
#   - label the nodes on rack r1's provisioning network:
#     kubectl label node NODE kiln/rack=r1.
# See ../helm/kiln/README.md. Rendered with release "kiln", namespace "kiln"
# and these values over the chart's defaults:
`

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	chrt, err := loader.LoadDir(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	if err := chrt.Validate(); err != nil {
		t.Fatalf("chart: %v", err)
	}
	return chrt
}

// render renders the chart as helm install would, in strict mode (a
// template naming a value that does not exist fails), and returns the
// manifests in install order, without NOTES.txt.
func render(chrt *chart.Chart, values string) ([]releaseutil.Manifest, error) {
	return renderWith(chrt, values, false)
}

func renderWith(chrt *chart.Chart, values string, skipSchema bool) ([]releaseutil.Manifest, error) {
	vals, err := loader.LoadValues(strings.NewReader(values))
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	opts := common.ReleaseOptions{Name: release, Namespace: namespace, Revision: 1, IsInstall: true}
	top, err := chartutil.ToRenderValuesWithSchemaValidation(chrt, vals, opts, nil, skipSchema)
	if err != nil {
		return nil, err
	}
	files, err := engine.Engine{Strict: true}.RenderWithContext(context.Background(), chrt, top)
	if err != nil {
		return nil, err
	}
	for name := range files {
		if path.Base(name) == "NOTES.txt" {
			delete(files, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, nil, releaseutil.InstallOrder)
	if err != nil {
		return nil, err
	}
	if len(hooks) > 0 {
		return nil, fmt.Errorf("%d hooks: the chart has none", len(hooks))
	}
	return manifests, nil
}

// object is one decoded manifest.
type object struct {
	source, kind string
	meta         *metav1.ObjectMeta
	obj          any // a pointer to a k8s.io/api type
}

func (o object) String() string { return o.kind + " " + o.meta.Name + " (" + o.source + ")" }

// kinds are the types a manifest may decode into, by apiVersion and kind.
var kinds = map[string]func() (any, *metav1.ObjectMeta){
	"v1 ServiceAccount": func() (any, *metav1.ObjectMeta) { o := new(corev1.ServiceAccount); return o, &o.ObjectMeta },
	"v1 Service":        func() (any, *metav1.ObjectMeta) { o := new(corev1.Service); return o, &o.ObjectMeta },
	"v1 ConfigMap":      func() (any, *metav1.ObjectMeta) { o := new(corev1.ConfigMap); return o, &o.ObjectMeta },
	"v1 Secret":         func() (any, *metav1.ObjectMeta) { o := new(corev1.Secret); return o, &o.ObjectMeta },
	"v1 PersistentVolumeClaim": func() (any, *metav1.ObjectMeta) {
		o := new(corev1.PersistentVolumeClaim)
		return o, &o.ObjectMeta
	},
	"apps/v1 Deployment":  func() (any, *metav1.ObjectMeta) { o := new(appsv1.Deployment); return o, &o.ObjectMeta },
	"apps/v1 DaemonSet":   func() (any, *metav1.ObjectMeta) { o := new(appsv1.DaemonSet); return o, &o.ObjectMeta },
	"apps/v1 StatefulSet": func() (any, *metav1.ObjectMeta) { o := new(appsv1.StatefulSet); return o, &o.ObjectMeta },
	"policy/v1 PodDisruptionBudget": func() (any, *metav1.ObjectMeta) {
		o := new(policyv1.PodDisruptionBudget)
		return o, &o.ObjectMeta
	},
}

// decodeAll decodes every manifest strictly, as the API server's strict
// field validation does: duplicate keys, unknown fields and fields in the
// wrong case are errors.
func decodeAll(t *testing.T, manifests []releaseutil.Manifest) []object {
	t.Helper()
	if len(manifests) == 0 {
		t.Fatal("the chart rendered nothing")
	}
	var objs []object
	for _, m := range manifests {
		o, err := decode(m)
		if err != nil {
			t.Errorf("%s: %v", m.Name, err)
			continue
		}
		objs = append(objs, o)
	}
	if t.Failed() {
		t.FailNow()
	}
	return objs
}

func decode(m releaseutil.Manifest) (object, error) {
	js, err := yaml.YAMLToJSONStrict([]byte(m.Content))
	if err != nil {
		return object{}, err
	}
	var tm metav1.TypeMeta
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(js, &tm); err != nil {
		return object{}, err
	}
	newObj, ok := kinds[tm.APIVersion+" "+tm.Kind]
	if !ok {
		return object{}, fmt.Errorf("apiVersion %q kind %q: not a type this test knows (add it to kinds)", tm.APIVersion, tm.Kind)
	}
	obj, meta := newObj()
	strict, err := sigsjson.UnmarshalStrict(js, obj)
	if err != nil {
		return object{}, err
	}
	if len(strict) > 0 {
		return object{}, fmt.Errorf("strict decoding into %T: %v", obj, strict)
	}
	return object{source: m.Name, kind: tm.Kind, meta: meta, obj: obj}, nil
}

// checkObjects checks what every object must hold: a valid, unique name
// in the release's namespace, valid labels, selectors that select their
// own pods.
func checkObjects(t *testing.T, objs []object) {
	t.Helper()
	seen := map[string]bool{}
	for _, o := range objs {
		if errs := validation.IsDNS1123Subdomain(o.meta.Name); len(errs) > 0 {
			t.Errorf("%s: name: %v", o, errs)
		}
		if o.meta.Namespace != namespace {
			t.Errorf("%s: namespace %q, want %q", o, o.meta.Namespace, namespace)
		}
		if seen[o.kind+"/"+o.meta.Name] {
			t.Errorf("%s: twice", o)
		}
		seen[o.kind+"/"+o.meta.Name] = true
		checkLabels(t, o.String(), o.meta.Labels)
		if o.meta.Labels["app.kubernetes.io/instance"] != release {
			t.Errorf("%s: labels %v lack app.kubernetes.io/instance=%s", o, o.meta.Labels, release)
		}
		switch x := o.obj.(type) {
		case *corev1.Service:
			if errs := validation.IsDNS1035Label(o.meta.Name); len(errs) > 0 {
				t.Errorf("%s: a Service name must be a DNS-1035 label: %v", o, errs)
			}
			if len(x.Spec.Selector) == 0 || len(podsSelectedBy(objs, &metav1.LabelSelector{MatchLabels: x.Spec.Selector})) == 0 {
				t.Errorf("%s: selector %v matches no workload", o, x.Spec.Selector)
			}
		case *corev1.ServiceAccount:
			if x.AutomountServiceAccountToken == nil || *x.AutomountServiceAccountToken {
				t.Errorf("%s: automountServiceAccountToken is not false: Kiln needs no API token", o)
			}
		case *policyv1.PodDisruptionBudget:
			if n := len(podsSelectedBy(objs, x.Spec.Selector)); n != 1 {
				t.Errorf("%s: its selector matches %d workloads, want 1", o, n)
			}
		}
	}
	for _, w := range workloads(objs) {
		sel, err := metav1.LabelSelectorAsSelector(w.selector)
		if err != nil || sel.Empty() {
			t.Errorf("%s: selector %v: %v", w, w.selector, err)
			continue
		}
		if !sel.Matches(labels.Set(w.pod.Labels)) {
			t.Errorf("%s: selector %v does not match its pod labels %v", w, w.selector, w.pod.Labels)
		}
		checkLabels(t, w.String()+" pod", w.pod.Labels)
		// Selectors are immutable and must not overlap.
		if n := len(podsSelectedBy(objs, w.selector)); n != 1 {
			t.Errorf("%s: its selector matches %d workloads, want 1", w, n)
		}
		sa := w.pod.Spec.ServiceAccountName
		if !seen["ServiceAccount/"+sa] {
			t.Errorf("%s: service account %q is not in the chart", w, sa)
		}
		if w.pod.Spec.AutomountServiceAccountToken == nil || *w.pod.Spec.AutomountServiceAccountToken {
			t.Errorf("%s: automountServiceAccountToken is not false", w)
		}
		checkPod(t, w)
	}
}

func checkLabels(t *testing.T, what string, l map[string]string) {
	t.Helper()
	for k, v := range l {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			t.Errorf("%s: label key %q: %v", what, k, errs)
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			t.Errorf("%s: label %s=%q: %v", what, k, v, errs)
		}
	}
}

// workload is a Deployment, DaemonSet or StatefulSet.
type workload struct {
	object
	replicas *int32 // nil for a DaemonSet
	selector *metav1.LabelSelector
	pod      *corev1.PodTemplateSpec
}

func workloads(objs []object) []workload {
	var ws []workload
	for _, o := range objs {
		switch x := o.obj.(type) {
		case *appsv1.Deployment:
			ws = append(ws, workload{o, x.Spec.Replicas, x.Spec.Selector, &x.Spec.Template})
		case *appsv1.DaemonSet:
			ws = append(ws, workload{o, nil, x.Spec.Selector, &x.Spec.Template})
		case *appsv1.StatefulSet:
			ws = append(ws, workload{o, x.Spec.Replicas, x.Spec.Selector, &x.Spec.Template})
		}
	}
	return ws
}

func podsSelectedBy(objs []object, s *metav1.LabelSelector) []workload {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		return nil
	}
	var ws []workload
	for _, w := range workloads(objs) {
		if sel.Matches(labels.Set(w.pod.Labels)) {
			ws = append(ws, w)
		}
	}
	return ws
}

func byComponent(objs []object, component string) []workload {
	var ws []workload
	for _, w := range workloads(objs) {
		if w.pod.Labels["app.kubernetes.io/component"] == component {
			ws = append(ws, w)
		}
	}
	return ws
}

// checkPod checks what every Kiln pod must hold: one container running
// the image's user without privileges on a read-only root with a
// writable /tmp, liveness on /healthz and readiness on /readyz at the
// --listen port, and every file a flag names mounted.
func checkPod(t *testing.T, w workload) {
	t.Helper()
	spec := &w.pod.Spec
	if len(spec.Containers) != 1 || len(spec.InitContainers) > 0 || len(spec.EphemeralContainers) > 0 {
		t.Fatalf("%s: %d containers and %d init containers, want one container", w, len(spec.Containers), len(spec.InitContainers))
	}
	c := &spec.Containers[0]
	psc, sc := spec.SecurityContext, c.SecurityContext
	if psc == nil || sc == nil {
		t.Fatalf("%s: no pod or container security context", w)
	}
	if spec.HostPID || spec.HostIPC {
		t.Errorf("%s: hostPID or hostIPC", w)
	}
	if nonRoot := firstBool(sc.RunAsNonRoot, psc.RunAsNonRoot); nonRoot == nil || !*nonRoot {
		t.Errorf("%s: runAsNonRoot is not true", w)
	}
	if uid := firstInt(sc.RunAsUser, psc.RunAsUser); uid == nil || *uid != kilnUID {
		t.Errorf("%s: runAsUser %v, want %d (the image's user)", w, deref(uid), kilnUID)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s: privileged", w)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation is not false", w)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: readOnlyRootFilesystem is not true", w)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("%s: capabilities %+v do not drop exactly ALL", w, sc.Capabilities)
	}
	if mountOf(spec, c, "/tmp/x") == nil {
		t.Errorf("%s: /tmp is not a volume (the root file system is read-only)", w)
	}
	if c.Image == "" || len(c.Command) > 0 {
		t.Errorf("%s: image %q, command %q: want the image's entrypoint", w, c.Image, c.Command)
	}

	// Probes on the --listen port.
	_, port, err := net.SplitHostPort(argValue(c, "--listen"))
	if err != nil {
		t.Fatalf("%s: --listen: %v", w, err)
	}
	for _, p := range []struct {
		what, path string
		probe      *corev1.Probe
	}{{"liveness", "/healthz", c.LivenessProbe}, {"readiness", "/readyz", c.ReadinessProbe}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s: no HTTP %s probe", w, p.what)
			continue
		}
		g := p.probe.HTTPGet
		if g.Path != p.path || strconv.Itoa(int(containerPort(c, g.Port))) != port {
			t.Errorf("%s: %s probe on %s port %s (container port %d), want %s on --listen's port %s",
				w, p.what, g.Path, g.Port.String(), containerPort(c, g.Port), p.path, port)
		}
		if g.Scheme != "" && g.Scheme != corev1.URISchemeHTTP {
			t.Errorf("%s: %s probe scheme %s", w, p.what, g.Scheme)
		}
	}

	// Every file or folder a flag names is in a volume.
	for _, a := range c.Args {
		name, v, ok := strings.Cut(a, "=")
		if !ok || !strings.HasPrefix(v, "/") || name == "--ipxe-dir" {
			continue // --ipxe-dir is the image's
		}
		if mountOf(spec, c, v) == nil {
			t.Errorf("%s: %s=%s is not in a mounted volume", w, name, v)
		}
	}
}

// checkRegion checks the region servers.
func checkRegion(t *testing.T, objs []object, tc chartCase, appVersion string, known map[string]bool) {
	t.Helper()
	ws := byComponent(objs, "region")
	if tc.region == 0 {
		if len(ws) > 0 {
			t.Errorf("region servers rendered: %v", ws)
		}
		return
	}
	if len(ws) != 1 || ws[0].kind != "Deployment" {
		t.Fatalf("region workloads: %v, want one Deployment", ws)
	}
	w := ws[0]
	spec := &w.pod.Spec
	c := &spec.Containers[0]
	if w.replicas == nil || *w.replicas != tc.region {
		t.Errorf("%s: replicas %v, want %d", w, deref(w.replicas), tc.region)
	}
	if want := "ghcr.io/kilnhq/kiln:" + appVersion; c.Image != want {
		t.Errorf("%s: image %q, want %q", w, c.Image, want)
	}
	if spec.HostNetwork {
		t.Errorf("%s: on the host's network", w)
	}
	if caps := c.SecurityContext.Capabilities; caps == nil || len(caps.Add) > 0 {
		t.Errorf("%s: capabilities %+v: the region server needs none", w, caps)
	}
	checkArgs(t, w, "server", known)
	if got := argValue(c, "--embedded-etcd"); got != "false" {
		t.Errorf("%s: --embedded-etcd=%q, want false: the etcd is external", w, got)
	}
	checkEtcd(t, w, "kiln-etcd-region")
	if got, want := argValue(c, "--git"), "https://git.example.net/infra/fleet.git"; got != want {
		t.Errorf("%s: --git=%q, want %q", w, got, want)
	}
	if v := mountOf(spec, c, argValue(c, "--data-dir")+"/git"); v == nil || v.EmptyDir == nil {
		t.Errorf("%s: --data-dir is not an emptyDir", w)
	}

	// The API: TLS on every address, or plain HTTP on loopback only.
	host, apiPort, err := net.SplitHostPort(argValue(c, "--api"))
	if err != nil {
		t.Fatalf("%s: --api: %v", w, err)
	}
	svc := service(t, objs, w)
	var svcAPI *corev1.ServicePort
	for i, p := range svc.Spec.Ports {
		if strconv.Itoa(int(containerPort(c, p.TargetPort))) == apiPort {
			svcAPI = &svc.Spec.Ports[i]
		}
	}
	if tc.apiTLS {
		if host != "0.0.0.0" || argValue(c, "--api-cert") == "" || argValue(c, "--api-key") == "" {
			t.Errorf("%s: API args %q, want TLS on 0.0.0.0", w, c.Args)
		}
		if v := mountOf(spec, c, argValue(c, "--api-cert")); v == nil || v.Secret == nil || v.Secret.SecretName != "kiln-api-tls" {
			t.Errorf("%s: --api-cert is not from Secret kiln-api-tls", w)
		}
		if svcAPI == nil {
			t.Errorf("Service %s does not expose the API port %s", svc.Name, apiPort)
		}
	} else {
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() || argValue(c, "--api-cert") != "" {
			t.Errorf("%s: --api=%s without TLS, want a loopback address", w, argValue(c, "--api"))
		}
		if svcAPI != nil {
			t.Errorf("Service %s exposes the loopback-only API port %s", svc.Name, apiPort)
		}
	}
	var pdb bool
	for _, o := range objs {
		_, pdb = o.obj.(*policyv1.PodDisruptionBudget)
		if pdb {
			break
		}
	}
	if pdb != (tc.region > 1) {
		t.Errorf("PodDisruptionBudget rendered: %v, with %d replicas", pdb, tc.region)
	}
}

// service is the one Service selecting w's pods, which exposes its
// metrics port.
func service(t *testing.T, objs []object, w workload) *corev1.Service {
	t.Helper()
	var found []*corev1.Service
	for _, o := range objs {
		if s, ok := o.obj.(*corev1.Service); ok && labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(w.pod.Labels)) {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d Services select %s, want 1", len(found), w)
	}
	s := found[0]
	c := &w.pod.Spec.Containers[0]
	for _, p := range s.Spec.Ports {
		if containerPort(c, p.TargetPort) == 0 {
			t.Errorf("Service %s: port %s targets %s, not a port of %s", s.Name, p.Name, p.TargetPort.String(), w)
		}
	}
	return s
}

// checkRacks checks the rack agents.
func checkRacks(t *testing.T, objs []object, tc chartCase, known map[string]bool) {
	t.Helper()
	ws := byComponent(objs, "rack")
	if len(ws) != len(tc.racks) {
		t.Errorf("%d rack workloads %v, want %d", len(ws), ws, len(tc.racks))
	}
	claims := map[string]*corev1.PersistentVolumeClaim{}
	for _, o := range objs {
		if pvc, ok := o.obj.(*corev1.PersistentVolumeClaim); ok {
			claims[pvc.Name] = pvc
		}
	}
	if len(claims) != len(tc.pvcs) {
		t.Errorf("claims %v, want %v", slices.Sorted(maps.Keys(claims)), tc.pvcs)
	}
	for name, mode := range tc.pvcs {
		if pvc := claims[name]; pvc == nil || !slices.Equal(pvc.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{mode}) {
			t.Errorf("claim %s: %+v, want access mode %s", name, pvc, mode)
		}
	}
	for _, w := range ws {
		spec := &w.pod.Spec
		c := &spec.Containers[0]
		name := w.pod.Labels["kiln/rack"]
		want, ok := tc.racks[name]
		if !ok {
			t.Errorf("%s: rack %q was not asked for", w, name)
			continue
		}
		if w.meta.Name != "kiln-rack-"+name || w.kind != want.kind {
			t.Errorf("%s: want %s kiln-rack-%s", w, want.kind, name)
		}
		if want.kind == "Deployment" && (w.replicas == nil || *w.replicas != want.replicas) {
			t.Errorf("%s: replicas %v, want %d", w, deref(w.replicas), want.replicas)
		}
		// The rack image: its kiln carries the two file capabilities.
		if !strings.HasPrefix(c.Image, "ghcr.io/kilnhq/kiln-rack:") {
			t.Errorf("%s: image %q, want the rack image ghcr.io/kilnhq/kiln-rack", w, c.Image)
		}
		if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
			t.Errorf("%s: hostNetwork %v, dnsPolicy %s: want the host's network with cluster DNS", w, spec.HostNetwork, spec.DNSPolicy)
		}
		caps := c.SecurityContext.Capabilities
		if add := slices.Sorted(slices.Values(caps.Add)); !slices.Equal(add, []corev1.Capability{"NET_BIND_SERVICE", "NET_RAW"}) {
			t.Errorf("%s: capabilities added %v, want exactly NET_BIND_SERVICE and NET_RAW", w, caps.Add)
		}
		if got := spec.NodeSelector["kiln/rack"]; want.nodeLabel != (got == name) || len(spec.NodeSelector) == 0 {
			t.Errorf("%s: nodeSelector %v", w, spec.NodeSelector)
		}
		checkArgs(t, w, "rack", known)
		if got := argValue(c, "--rack"); got != name {
			t.Errorf("%s: --rack=%q, want %q", w, got, name)
		}
		if got := argValue(c, "--interfaces"); got != want.interfaces {
			t.Errorf("%s: --interfaces=%q, want %q", w, got, want.interfaces)
		}
		checkEtcd(t, w, want.etcdSecret)

		// The image cache.
		dir := argValue(c, "--cache-dir")
		v := mountOf(spec, c, dir+"/x")
		switch {
		case dir == "" || v == nil:
			t.Errorf("%s: --cache-dir=%q is not a volume", w, dir)
		case want.cache == "emptyDir" && v.EmptyDir == nil,
			want.cache == "hostPath" && v.HostPath == nil,
			want.cache == "pvc" && (v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != want.claim):
			t.Errorf("%s: cache volume %+v, want %s %s", w, v.VolumeSource, want.cache, want.claim)
		}
		for _, m := range c.VolumeMounts {
			if m.MountPath == dir && m.ReadOnly {
				t.Errorf("%s: the cache is mounted read-only", w)
			}
		}

		// HTTPS for the machine agent, from the rack's TLS Secret.
		if https := argValue(c, "--https") != ""; https != want.https {
			t.Errorf("%s: --https %v, want %v", w, https, want.https)
		} else if https {
			if v := mountOf(spec, c, argValue(c, "--tls-cert")); v == nil || v.Secret == nil {
				t.Errorf("%s: --tls-cert is not from a Secret", w)
			}
			if argValue(c, "--agent-url") == "" && argValue(c, "--boot-url") == "" {
				t.Errorf("%s: --https without --agent-url or --boot-url: kiln rack refuses it", w)
			}
		}

		// Every port the agent serves is declared, so that the scheduler
		// keeps two agents off one node.
		for _, f := range []string{"--listen", "--http", "--https", "--tftp", "--dhcp-port", "--proxy-port"} {
			a := argValue(c, f)
			if a == "" {
				continue
			}
			if _, p, err := net.SplitHostPort(a); err == nil {
				a = p
			}
			if p, err := strconv.Atoi(a); err != nil || containerPort(c, intstr.FromInt32(int32(p))) == 0 {
				t.Errorf("%s: %s=%s is not a declared container port", w, f, argValue(c, f))
			}
		}
	}
}

// checkArgs checks that the container runs `kiln cmd` with flags that
// command knows, each once, as --name=value.
func checkArgs(t *testing.T, w workload, cmd string, known map[string]bool) {
	t.Helper()
	c := &w.pod.Spec.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != cmd {
		t.Fatalf("%s: args %q, want kiln %s", w, c.Args, cmd)
	}
	seen := map[string]bool{}
	for _, a := range c.Args[1:] {
		name, _, ok := strings.Cut(a, "=")
		if !ok || !strings.HasPrefix(name, "--") {
			t.Errorf("%s: argument %q, want --flag=value", w, a)
			continue
		}
		if !known[strings.TrimPrefix(name, "--")] {
			t.Errorf("%s: kiln %s has no flag %s", w, cmd, name)
		}
		if seen[name] {
			t.Errorf("%s: %s given twice", w, name)
		}
		seen[name] = true
	}
}

// checkEtcd checks the etcd client flags: the external endpoints, and the
// CA, certificate and key from the Secret secret.
func checkEtcd(t *testing.T, w workload, secret string) {
	t.Helper()
	spec := &w.pod.Spec
	c := &spec.Containers[0]
	want := "https://etcd-0.etcd.kiln.svc:2379,https://etcd-1.etcd.kiln.svc:2379,https://etcd-2.etcd.kiln.svc:2379"
	if got := argValue(c, "--etcd-endpoints"); got != want {
		t.Errorf("%s: --etcd-endpoints=%q, want %q", w, got, want)
	}
	for _, f := range []string{"--etcd-ca", "--etcd-cert", "--etcd-key"} {
		file := argValue(c, f)
		v := mountOf(spec, c, file)
		if file == "" || v == nil || v.Secret == nil || v.Secret.SecretName != secret {
			t.Errorf("%s: %s=%q is not from Secret %s", w, f, file, secret)
			continue
		}
		if !slices.ContainsFunc(v.Secret.Items, func(k corev1.KeyToPath) bool { return k.Path == filepath.Base(file) }) {
			t.Errorf("%s: %s=%s: Secret %s's items %v do not make that file", w, f, file, secret, v.Secret.Items)
		}
	}
}

// argValue is the value of --name=value in c's arguments.
func argValue(c *corev1.Container, name string) string {
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

// containerPort resolves p, a number or a port name, to one of c's
// ports; 0 if it is none of them.
func containerPort(c *corev1.Container, p intstr.IntOrString) int32 {
	for _, cp := range c.Ports {
		if p.Type == intstr.String && cp.Name == p.StrVal || p.Type == intstr.Int && cp.ContainerPort == p.IntVal {
			return cp.ContainerPort
		}
	}
	return 0
}

// mountOf is the volume holding file in c, or nil.
func mountOf(spec *corev1.PodSpec, c *corev1.Container, file string) *corev1.Volume {
	var best *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		dir := strings.TrimSuffix(m.MountPath, "/")
		if (file == dir || strings.HasPrefix(file, dir+"/")) && (best == nil || len(m.MountPath) > len(best.MountPath)) {
			best = &c.VolumeMounts[i]
		}
	}
	if best == nil {
		return nil
	}
	for i, v := range spec.Volumes {
		if v.Name == best.Name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

// kilnFlags are the flag names of kiln server and kiln rack, read from
// cmd/kiln: a misspelt flag in the chart fails here, not at the pod's
// start.
func kilnFlags(t *testing.T) map[string]map[string]bool {
	t.Helper()
	re := regexp.MustCompile(`fs\.(?:String|Bool|Int|Duration)(?:\(|Var\(&[^,]+,\s*)"([a-z][a-z0-9-]*)"`)
	read := func(files ...string) map[string]bool {
		names := map[string]bool{}
		for _, f := range files {
			b, err := os.ReadFile(filepath.Join("..", "..", "cmd", "kiln", f))
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range re.FindAllSubmatch(b, -1) {
				names[string(m[1])] = true
			}
		}
		if !names["etcd-endpoints"] || !names["listen"] {
			t.Fatalf("flags read from cmd/kiln/%v: %v: the pattern no longer finds them", files, slices.Sorted(maps.Keys(names)))
		}
		return names
	}
	return map[string]map[string]bool{
		"server": read("server.go", "run.go", "rack.go"),
		"rack":   read("rack.go", "run.go"),
	}
}

func firstBool(a, b *bool) *bool {
	if a != nil {
		return a
	}
	return b
}

func firstInt(a, b *int64) *int64 {
	if a != nil {
		return a
	}
	return b
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}
