package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kilnhq/kiln/agents/machine/image"
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

func runBuildEphemeral(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("image build-ephemeral", "--kernel-deb linux-image-*.deb | --kernel VMLINUZ --modules ROOT  --out DIR [flags]", errOut)
	agent := fs.String("agent", "", "the static machine agent binary (CGO_ENABLED=0 go build ./cmd/kiln-agent); default: kiln-agent beside this kiln binary")
	kernel := fs.String("kernel", "", "the kernel (vmlinuz); with --modules")
	modules := fs.String("modules", "", "the folder holding lib/modules/<release> (e.g. / or where a kernel package was unpacked); with --kernel")
	deb := fs.String("kernel-deb", "", "a kernel package (linux-image-*.deb), unpacked with dpkg -x; instead of --kernel and --modules")
	release := fs.String("release", "", "kernel release under lib/modules; default: the only one there")
	drivers := fs.String("drivers", "", "comma-separated modules to carry instead of the default list; each must exist in the kernel (as a module or built in)")
	extra := fs.String("extra-drivers", "", "comma-separated modules to carry besides the default list; each must exist in the kernel")
	outDir := fs.String("out", "", "output folder (vmlinuz, initramfs.cpio.gz, SHA256SUMS, image.yaml)")
	name := fs.String("name", "kiln-ephemeral", "the Image's name")
	arch := fs.String("arch", "amd64", "amd64 or arm64")
	cmdline := fs.String("cmdline", image.DefaultCmdline, "the Image's kernel command line")
	ca := fs.String("ca", "", "the rack's CA (PEM, e.g. kiln certs init's ca.pem), put at /"+image.CAFile+": the agent then talks to the rack over https verified against it only")
	urlBase := fs.String("url-base", "", "URL the output folder will be served from (http://host/path/); default: file://<absolute --out>")
	if _, code, ok := parse(fs, args); !ok {
		return code
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(errOut, "kiln image build-ephemeral: "+format+"\n", a...)
		return exitFail
	}
	usageErr := func(msg string) int {
		fmt.Fprintln(errOut, "kiln image build-ephemeral:", msg)
		fs.Usage()
		return exitUsage
	}
	switch {
	case *outDir == "":
		return usageErr("--out is required")
	case *deb != "" && (*kernel != "" || *modules != ""):
		return usageErr("give --kernel-deb, or --kernel and --modules, not both")
	case *deb == "" && (*kernel == "" || *modules == ""):
		return usageErr("give --kernel-deb, or --kernel and --modules")
	case *drivers != "" && *extra != "":
		return usageErr("--drivers replaces the default list, --extra-drivers adds to it: give one")
	}
	o := image.Options{Agent: *agent, Kernel: *kernel, Out: *outDir, Name: *name, Arch: *arch, Cmdline: *cmdline, URLBase: *urlBase, CA: *ca}
	if o.Agent == "" {
		self, err := os.Executable()
		if err != nil {
			return fail("find kiln-agent: %v; give --agent", err)
		}
		o.Agent = filepath.Join(filepath.Dir(self), "kiln-agent")
		if _, err := os.Stat(o.Agent); err != nil {
			return fail("no --agent and no kiln-agent beside %s: build it with CGO_ENABLED=0 go build -o %s ./cmd/kiln-agent", self, o.Agent)
		}
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		e, err := strconv.ParseInt(s, 10, 64)
		if err != nil || e < 0 || e > 1<<32-1 {
			return fail("SOURCE_DATE_EPOCH=%q: want seconds since 1970", s)
		}
		o.Epoch = e
	}
	switch {
	case *drivers != "":
		o.Required = splitList(*drivers)
	default:
		o.Drivers = image.DefaultDrivers
		o.Required = splitList(*extra)
	}
	if *deb != "" {
		tmp, err := os.MkdirTemp("", "kiln-kernel-")
		if err != nil {
			return fail("%v", err)
		}
		defer os.RemoveAll(tmp)
		o.Kernel, o.Modules, err = image.UnpackDeb(ctx, *deb, tmp, *release)
		if err != nil {
			return fail("%v", err)
		}
	} else {
		var err error
		if o.Modules, err = image.FindModules(*modules, *release); err != nil {
			return fail("%v", err)
		}
	}
	res, err := image.Build(o)
	if err != nil {
		return fail("%v", err)
	}
	printSummary(out, o, res)
	return exitOK
}

func printSummary(w io.Writer, o image.Options, res *image.Result) {
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
	fmt.Fprintf(w, "wrote %s: add %s to the inventory (kiln validate checks it)\n", o.Out, filepath.Join(o.Out, image.ImageFile))
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
