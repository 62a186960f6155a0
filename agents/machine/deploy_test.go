package machine

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat16"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/kilnhq/kiln/spec/agentapi"
	"github.com/klauspost/compress/zstd"
)

const (
	imageSize = 8 << 20
	diskSize  = 40 << 20
)

// gptImage builds an 8 MiB GPT disk image (ESP and root partition) full
// of random bytes, as an OS image would be.
func gptImage(t *testing.T) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "os.img")
	d, err := diskfs.Create(p, imageSize, diskfs.SectorSizeDefault)
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	fill := make([]byte, imageSize)
	for i := range fill {
		fill[i] = byte(rnd.Uint32())
	}
	if err := os.WriteFile(p, fill, 0o644); err != nil {
		t.Fatal(err)
	}
	err = d.Partition(&gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, Partitions: []*gpt.Partition{
		{Index: 1, Start: 2048, End: 4095, Type: gpt.EFISystemPartition, Name: "EFI"},
		{Index: 2, Start: 4096, End: imageSize/512 - 34, Type: gpt.LinuxFilesystem, Name: "root"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != imageSize {
		t.Fatalf("image is %d bytes", len(b))
	}
	return b
}

func gz(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zst(t *testing.T, b []byte) []byte {
	w, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	return w.EncodeAll(b, nil)
}

// deployEnv is a rack with the image served as name and a file disk.
func deployEnv(t *testing.T, name string, served []byte, sha string) (*rackEnv, *Deployer, agentapi.Task, agentapi.Disk) {
	t.Helper()
	env := newRackEnv(t)
	env.rack.SetImage(name, served, sha)
	env.rack.SetPurpose(agentapi.PurposeDeploy)
	c := env.client(testToken)
	task, err := c.Task(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	d := &Deployer{Client: c, HTTP: env.boot.Client(), Log: env.log}
	disk := agentapi.Disk{Name: "vda", Path: tempDisk(t, diskSize), SizeBytes: diskSize}
	return env, d, task, disk
}

func TestDeploy(t *testing.T) {
	t.Parallel()
	img := gptImage(t)
	for _, tc := range []struct {
		name   string
		served []byte
	}{
		{"disk.raw", img},
		{"disk.raw.gz", gz(t, img)},
		{"disk.raw.zst", zst(t, img)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env, d, task, disk := deployEnv(t, tc.name, tc.served, "")
			if err := d.Deploy(context.Background(), task, disk); err != nil {
				t.Fatal(err)
			}
			checkDeployed(t, img, disk.Path)
			checkSeed(t, env, disk.Path)
			ps := env.rack.Progress()
			if len(ps) == 0 {
				t.Fatal("no progress reported")
			}
			last := ps[len(ps)-1]
			if last.Phase != "write" || last.BytesWritten != imageSize {
				t.Errorf("last progress = %+v, want write of %d bytes", last, imageSize)
			}
			if tc.name == "disk.raw" && last.TotalBytes != imageSize {
				t.Errorf("raw image progress total = %d, want %d", last.TotalBytes, imageSize)
			}
		})
	}
}

// checkDeployed checks that the disk holds the image byte for byte except
// LBA 1..33 (GPT header and entries), where only the header and one new
// entry changed, and that the GPT is valid for the whole disk.
func checkDeployed(t *testing.T, img []byte, path string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:512], img[:512]) {
		t.Error("protective MBR changed")
	}
	if !bytes.Equal(got[34*512:imageSize], img[34*512:]) {
		t.Error("image bytes after LBA 33 changed")
	}
	orig, err := readGPT(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	now, err := readGPT(bytes.NewReader(got))
	if err != nil {
		t.Fatalf("GPT after deploy: %v", err)
	}
	for i := 0; i < int(orig.numEntries()); i++ {
		if i == 2 {
			continue
		}
		if !bytes.Equal(orig.entry(i), now.entry(i)) {
			t.Errorf("partition entry %d changed", i)
		}
	}
	ps := now.partitions()
	if len(ps) != 3 || ps[2].name != "CIDATA" || ps[2].first != imageSize/512 || (ps[2].end-ps[2].first+1)*512 != DefaultSeedSize {
		t.Errorf("partitions after deploy: %+v", ps)
	}
	if _, err := exec.LookPath("sgdisk"); err == nil {
		out, err := exec.Command("sgdisk", "-v", path).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "No problems found") {
			t.Errorf("sgdisk -v: %v\n%s", err, out)
		}
	}
}

// checkSeed reads the seed partition: a FAT filesystem labelled CIDATA
// holding the files the metadata service serves.
func checkSeed(t *testing.T, env *rackEnv, path string) {
	t.Helper()
	off := int64(imageSize)
	fs := openSeed(t, path)
	if l := strings.TrimSpace(fs.Label()); l != "CIDATA" {
		t.Errorf("label = %q", l)
	}
	c := env.client(testToken)
	for _, name := range []string{"meta-data", "user-data", "network-config", "vendor-data"} {
		fh, err := fs.OpenFile("/"+name, os.O_RDONLY)
		if err != nil {
			t.Errorf("seed has no %s: %v", name, err)
			continue
		}
		got, _ := io.ReadAll(fh)
		want, err := c.Get(context.Background(), env.boot.URL+"/metadata/vm-2/"+name)
		if err != nil {
			t.Fatal(err)
		}
		if name == "vendor-data" {
			// Each fetch mints a new report-in token: compare without it.
			re := regexp.MustCompile(`token=[A-Za-z0-9_-]+`)
			got, want = re.ReplaceAll(got, []byte("token=T")), re.ReplaceAll(want, []byte("token=T"))
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if _, err := exec.LookPath("blkid"); err == nil {
		out, err := exec.Command("blkid", "-p", "-O", strconv.FormatInt(off, 10), "-o", "export", path).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "LABEL=CIDATA") || !strings.Contains(string(out), "TYPE=vfat") {
			t.Errorf("blkid: %v\n%s", err, out)
		}
	}
}

// openSeed opens the seed file system after an imageSize image.
func openSeed(t *testing.T, path string) *fat16.FileSystem {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fs, err := fat16.Read(file.New(f, true), DefaultSeedSize, imageSize, 512)
	if err != nil {
		t.Fatalf("read seed filesystem: %v", err)
	}
	return fs
}

// wiped reports whether the disk's first MiB is zeros.
func wiped(t *testing.T, path string) bool {
	t.Helper()
	b := make([]byte, 1<<20)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.ReadFull(f, b); err != nil {
		t.Fatal(err)
	}
	return isZero(b)
}

func TestDeployFailures(t *testing.T) {
	t.Parallel()
	img := gptImage(t)
	const wrongSHA = "0000000000000000000000000000000000000000000000000000000000000000"
	t.Run("wrong sha256", func(t *testing.T) {
		t.Parallel()
		_, d, task, disk := deployEnv(t, "disk.raw.zst", zst(t, img), wrongSHA)
		err := d.Deploy(context.Background(), task, disk)
		if !errors.Is(err, ErrHashMismatch) || !strings.Contains(err.Error(), "expected sha256 "+wrongSHA+", got ") {
			t.Fatalf("err = %v", err)
		}
		if !strings.Contains(err.Error(), "first MiB") || !wiped(t, disk.Path) {
			t.Errorf("first MiB not wiped after a mismatch: %v", err)
		}
	})
	t.Run("truncated download", func(t *testing.T) {
		t.Parallel()
		env, d, task, disk := deployEnv(t, "disk.raw", img, "")
		env.rack.Images.Cut("disk.raw", 3<<20, 10, 10, 10, 10, 10, 10)
		err := d.Deploy(context.Background(), task, disk)
		if err == nil || !strings.Contains(err.Error(), "connection lost after") || !wiped(t, disk.Path) {
			t.Fatalf("err = %v (want a lost connection and the first MiB wiped)", err)
		}
	})
	t.Run("short file served whole", func(t *testing.T) {
		t.Parallel()
		_, d, task, disk := deployEnv(t, "disk.raw.gz", gz(t, img)[:1<<20], "")
		task.Image.SHA256 = strings.Repeat("ab", 32)
		err := d.Deploy(context.Background(), task, disk)
		if err == nil || !strings.Contains(err.Error(), "unexpected EOF") || !wiped(t, disk.Path) {
			t.Fatalf("err = %v (want a truncated gzip stream and the first MiB wiped)", err)
		}
	})
	t.Run("resumed download", func(t *testing.T) {
		t.Parallel()
		env, d, task, disk := deployEnv(t, "disk.raw", img, "")
		env.rack.Images.Cut("disk.raw", 3<<20, 1<<20)
		if err := d.Deploy(context.Background(), task, disk); err != nil {
			t.Fatal(err)
		}
		checkDeployed(t, img, disk.Path)
		if n := env.rack.Images.Gets("disk.raw"); n != 3 {
			t.Errorf("%d GETs, want 3 (two resumes)", n)
		}
	})
	t.Run("disk too small", func(t *testing.T) {
		t.Parallel()
		_, d, task, disk := deployEnv(t, "disk.raw", img, "")
		if err := os.Truncate(disk.Path, imageSize+4<<20); err != nil {
			t.Fatal(err)
		}
		err := d.Deploy(context.Background(), task, disk)
		if err == nil || !strings.Contains(err.Error(), "do not fit on") {
			t.Fatalf("err = %v", err)
		}
		if !wiped(t, disk.Path) {
			t.Error("the disk was written to")
		}
	})
	t.Run("compressed image too large", func(t *testing.T) {
		t.Parallel()
		_, d, task, disk := deployEnv(t, "disk.raw.zst", zst(t, img), "")
		if err := os.Truncate(disk.Path, imageSize+DefaultSeedSize); err != nil {
			t.Fatal(err)
		}
		err := d.Deploy(context.Background(), task, disk)
		if err == nil || !strings.Contains(err.Error(), "does not fit on "+disk.Path+": more than the 6 MiB left before its 16 MiB NoCloud seed") || !wiped(t, disk.Path) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("image without GPT", func(t *testing.T) {
		t.Parallel()
		mbr := bytes.Clone(img)
		clear(mbr[512 : 34*512])
		_, d, task, disk := deployEnv(t, "disk.raw", mbr, "")
		err := d.Deploy(context.Background(), task, disk)
		if !errors.Is(err, ErrNoGPT) || !strings.HasPrefix(err.Error(), "NoCloud seed on "+disk.Path+": image has no GPT; cannot add the NoCloud seed partition; the first MiB") {
			t.Fatalf("err = %v", err)
		}
		if !wiped(t, disk.Path) {
			t.Error("first MiB not wiped")
		}
	})
	t.Run("metadata refused", func(t *testing.T) {
		t.Parallel()
		_, d, task, disk := deployEnv(t, "disk.raw", img, "")
		d.Client = NewClient(d.Client.base, "vm-2", "stale", d.Client.http, d.Client.retry, d.Log)
		err := d.Deploy(context.Background(), task, disk)
		if err == nil || !strings.Contains(err.Error(), "NoCloud meta-data") || !strings.Contains(err.Error(), "403") {
			t.Fatalf("err = %v", err)
		}
	})
}
