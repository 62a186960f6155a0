package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kilnhq/kiln/agents/machine/initramfs"
)

func runImage(ctx context.Context, args []string, out, errOut io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(errOut, "Usage: kiln image build-ephemeral [flags]\n\nCommands:\n  build-ephemeral  build the ephemeral image (kernel, initramfs with the machine agent) and its Image document")
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	switch args[0] {
	case "build-ephemeral":
		return runBuildEphemeral(ctx, args[1:], out, errOut)
	}
	fmt.Fprintf(errOut, "kiln image: unknown command %q (build-ephemeral)\n", args[0])
	return exitUsage
}

// ephemeralFlags are the flags of kiln image build-ephemeral.
type ephemeralFlags struct {
	agent, kernel, modules, deb, release *string
	drivers, extra, outDir, name, arch   *string
	cmdline, ca, urlBase                 *string
}

func newEphemeralFlags(errOut io.Writer) (*flag.FlagSet, *ephemeralFlags) {
	fs := newFlags("image build-ephemeral", "--kernel-deb linux-image-*.deb | --kernel VMLINUZ --modules ROOT  --out DIR [flags]", errOut)
	return fs, &ephemeralFlags{
		agent:   fs.String("agent", "", "the static machine agent binary (CGO_ENABLED=0 go build ./cmd/kiln-agent); default: kiln-agent beside this kiln binary"),
		kernel:  fs.String("kernel", "", "the kernel (vmlinuz); with --modules"),
		modules: fs.String("modules", "", "the folder holding lib/modules/<release> (e.g. / or where a kernel package was unpacked); with --kernel"),
		deb:     fs.String("kernel-deb", "", "a kernel package (linux-image-*.deb), unpacked with dpkg -x; instead of --kernel and --modules"),
		release: fs.String("release", "", "kernel release under lib/modules; default: the only one there"),
		drivers: fs.String("drivers", "", "comma-separated modules to carry instead of the default list; each must exist in the kernel (as a module or built in)"),
		extra:   fs.String("extra-drivers", "", "comma-separated modules to carry besides the default list; each must exist in the kernel"),
		outDir:  fs.String("out", "", "output folder (vmlinuz, initramfs.cpio.gz, SHA256SUMS, image.yaml)"),
		name:    fs.String("name", "kiln-ephemeral", "the Image's name"),
		arch:    fs.String("arch", "amd64", "amd64 or arm64"),
		cmdline: fs.String("cmdline", initramfs.DefaultCmdline, "the Image's kernel command line"),
		ca:      fs.String("ca", "", "the rack's CA (PEM, e.g. kiln certs init's ca.pem), put at /"+initramfs.CAFile+": the agent then talks to the rack over https verified against it only"),
		urlBase: fs.String("url-base", "", "URL the output folder will be served from (http://host/path/); default: file://<absolute --out>"),
	}
}

// usageProblem is what is wrong with the flags' combination, or "".
func (f *ephemeralFlags) usageProblem() string {
	switch {
	case *f.outDir == "":
		return "--out is required"
	case *f.deb != "" && (*f.kernel != "" || *f.modules != ""):
		return "give --kernel-deb, or --kernel and --modules, not both"
	case *f.deb == "" && (*f.kernel == "" || *f.modules == ""):
		return "give --kernel-deb, or --kernel and --modules"
	case *f.drivers != "" && *f.extra != "":
		return "--drivers replaces the default list, --extra-drivers adds to it: give one"
	}
	return ""
}

// options are the build options of the flags, the agent binary found
// beside kiln unless given, and SOURCE_DATE_EPOCH; the kernel and modules
// are resolved apart (resolveKernel).
func (f *ephemeralFlags) options() (initramfs.Options, error) {
	o := initramfs.Options{Agent: *f.agent, Kernel: *f.kernel, Out: *f.outDir, Name: *f.name, Arch: *f.arch, Cmdline: *f.cmdline, URLBase: *f.urlBase, CA: *f.ca}
	if o.Agent == "" {
		self, err := os.Executable()
		if err != nil {
			return o, fmt.Errorf("find kiln-agent: %v; give --agent", err)
		}
		o.Agent = filepath.Join(filepath.Dir(self), "kiln-agent")
		if _, err := os.Stat(o.Agent); err != nil {
			return o, fmt.Errorf("no --agent and no kiln-agent beside %s: build it with CGO_ENABLED=0 go build -o %s ./cmd/kiln-agent", self, o.Agent)
		}
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		e, err := strconv.ParseInt(s, 10, 64)
		if err != nil || e < 0 || e > 1<<32-1 {
			return o, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", s)
		}
		o.Epoch = e
	}
	switch {
	case *f.drivers != "":
		o.Required = splitList(*f.drivers)
	default:
		o.Drivers = initramfs.DefaultDrivers
		o.Required = splitList(*f.extra)
	}
	return o, nil
}

// resolveKernel sets o's kernel and modules folder: from the kernel
// package, unpacked into a temporary folder that cleanup removes, or
// from --modules.
func (f *ephemeralFlags) resolveKernel(ctx context.Context, o *initramfs.Options) (cleanup func(), err error) {
	cleanup = func() {}
	if *f.deb == "" {
		o.Modules, err = initramfs.FindModules(*f.modules, *f.release)
		return cleanup, err
	}
	tmp, err := os.MkdirTemp("", "kiln-kernel-")
	if err != nil {
		return cleanup, err
	}
	cleanup = func() { os.RemoveAll(tmp) }
	o.Kernel, o.Modules, err = initramfs.UnpackDeb(ctx, *f.deb, tmp, *f.release)
	return cleanup, err
}

func runBuildEphemeral(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs, f := newEphemeralFlags(errOut)
	if _, code, ok := parse(fs, args); !ok {
		return code
	}
	fail := func(err error) int {
		fmt.Fprintf(errOut, "kiln image build-ephemeral: %v\n", err)
		return exitFail
	}
	if msg := f.usageProblem(); msg != "" {
		fmt.Fprintln(errOut, "kiln image build-ephemeral:", msg)
		fs.Usage()
		return exitUsage
	}
	o, err := f.options()
	if err != nil {
		return fail(err)
	}
	cleanup, err := f.resolveKernel(ctx, &o)
	defer cleanup()
	if err != nil {
		return fail(err)
	}
	res, err := initramfs.Build(o)
	if err != nil {
		return fail(err)
	}
	printSummary(out, o, res)
	return exitOK
}

func printSummary(w io.Writer, o initramfs.Options, res *initramfs.Result) {
	fmt.Fprintf(w, "kernel %s, %d modules (%s uncompressed):\n", res.Release, len(res.Modules), humanBytes(res.ModBytes))
	for _, l := range wrap(res.Modules, 76) {
		fmt.Fprintln(w, "  "+l)
	}
	if len(res.Builtin) > 0 {
		fmt.Fprintf(w, "built into the kernel: %s\n", strings.Join(res.Builtin, " "))
	}
	if len(res.Missing) > 0 {
		fmt.Fprintf(w, "warning: not in this kernel, left out: %s\n", strings.Join(res.Missing, " "))
	}
	for _, f := range res.Files {
		fmt.Fprintf(w, "%-18s %9s  sha256:%s\n", f.Name, humanBytes(f.Size), f.SHA256)
	}
	fmt.Fprintf(w, "wrote %s: add %s to the inventory (kiln validate checks it)\n", o.Out, filepath.Join(o.Out, initramfs.ImageFile))
}

func wrap(words []string, width int) []string {
	var lines []string
	var cur strings.Builder
	for _, w := range words {
		if cur.Len() > 0 && cur.Len()+1+len(w) > width {
			lines = append(lines, cur.String())
			cur.Reset()
		}
		if cur.Len() > 0 {
			cur.WriteByte(' ')
		}
		cur.WriteString(w)
	}
	if cur.Len() > 0 {
		lines = append(lines, cur.String())
	}
	return lines
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
